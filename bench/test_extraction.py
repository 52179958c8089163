"""Patch extraction (``prepare.py extract``): one real 6-image sequence to 2,000 patches, and a 12-megapixel
saturated image through the detectors (linear in the image: the old scikit-image blob pruning never returned on
it). The sequence comes from ``../shared/data/sequences``; skipped when it is absent.

    pytest bench/test_extraction.py --benchmark-only
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SEQUENCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "sequences"


@pytest.mark.parametrize("name", ["oxford_boat", "oxford_graf"])
def test_extract_sequence(benchmark, name):
    if not (SEQUENCES / name).is_dir():
        pytest.skip(f"{SEQUENCES / name} is not present")
    from tripletkit_hpatches.extract import extract_sequence, load_sequence

    seq = load_sequence(SEQUENCES / name)
    benchmark.group = "extraction"
    benchmark.extra_info.update(suite="extraction", sequence=name, patches=2000)
    result = benchmark.pedantic(extract_sequence, args=(seq,), kwargs={"max_patches": 2000}, rounds=3, iterations=1)
    assert len(result.patches["ref"]) == 2000


def test_detect_saturated_12_megapixels(benchmark):
    from tripletkit_hpatches.extract import detect

    img = np.full((3000, 4000), 255.0, np.float32)
    benchmark.group = "extraction"
    benchmark.extra_info.update(suite="extraction", sequence="white 4000×3000 (detection only)")
    benchmark.pedantic(detect, args=(img,), rounds=1, iterations=1)
