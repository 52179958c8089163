"""Test support shared by ``tests/`` and ``bench/``: brute-force references written from the papers.

* [`reference`][tripletkit.testing.reference]: float64 NumPy loops for every loss, miner, margin and distance.
* [`naive`][tripletkit.testing.naive]: dense torch versions (autograd through the N×N×N triplet tensor): the floor a
  fast implementation must beat, and an independent gradient check.
* [`hpatches_reference`][tripletkit.testing.hpatches_reference]: the HPatches benchmark's metric code, rewritten loop by loop.

Nothing here imports the code it checks.
"""
