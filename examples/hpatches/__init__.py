"""The HPatches descriptor-learning pipeline built on tripletkit (data, evaluation; training to come)."""
