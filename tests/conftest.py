import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

# "ci": quick and deterministic enough for 2 cores; "thorough": run locally before a release.
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny N-HPatches dataset (4 sequences × 10 patches of 32×32, split 2/2) for the pipeline's tests."""
    from tripletkit_hpatches.data import write_nhpatches_sequence
    from tripletkit_hpatches.descriptors import IMAGE_TYPES
    from tripletkit_hpatches.noise import noise_sequence

    root = tmp_path_factory.mktemp("tiny_nh")
    rng = np.random.default_rng(0)
    for s in ("i_a", "i_b", "v_c", "v_d"):
        base = np.kron(rng.integers(0, 256, (10, 8, 8)), np.ones((4, 4))).astype(float)
        clean = {
            t: np.clip(base + rng.normal(0, 4 + 3 * "rehtx".index(t[0]), base.shape), 0, 255).astype(np.uint8)
            for t in IMAGE_TYPES
        }
        write_nhpatches_sequence(root, s, clean, noise_sequence(clean, s))
    (root / "splits.json").write_text(json.dumps({"default": {"train": ["i_a", "v_c"], "test": ["i_b", "v_d"]}}))
    return root
