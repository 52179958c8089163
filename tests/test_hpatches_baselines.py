"""Patch reading and the classical baselines, on the real HPatches pixels in ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tripletkit_hpatches.baselines import describe, raw_pixel_descriptors, sift_descriptors
from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.patches import PatchFileError, read_patch_column, resize_patches

ROOT = Path(__file__).resolve().parents[1]

SAMPLES = ROOT.parent / "shared" / "data" / "hpatches-patch-samples"
needs_samples = pytest.mark.skipif(not SAMPLES.exists(), reason="../shared/data is not present")


def _grid_patches() -> np.ndarray:
    """(4 physical patches, 16 types, 65, 65) from the benchmark's visualisation: a 35-px label row, then 4 rows of
    16 patches (ref e1..e5 h1..h5 t1..t5)."""
    from PIL import Image

    a = np.asarray(Image.open(SAMPLES / "benchmark_vis_4x16_patches.png").convert("L"))
    assert a.shape == (295, 1040)
    return np.stack([[a[35 + 65 * r : 100 + 65 * r, 65 * c : 65 * (c + 1)] for c in range(16)] for r in range(4)])


@needs_samples
def test_real_ref_png_loads_with_1123_patches():
    p = read_patch_column(SAMPLES / "v_graffiti_ref.png")
    assert p.shape == (1123, 65, 65) and p.dtype == np.uint8
    assert p.std() > 10  # real texture, not a blank image
    small = resize_patches(p[:10], 32)
    assert small.shape == (10, 32, 32)
    # area interpolation keeps the mean grey level
    assert abs(float(small.mean()) - float(p[:10].mean())) < 1.0


def test_reader_rejects_bad_files(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((130, 64), np.uint8)).save(tmp_path / "narrow.png")
    Image.fromarray(np.zeros((100, 65), np.uint8)).save(tmp_path / "short.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    for name, message in (
        ("narrow.png", "width 64, expected 65"),
        ("short.png", "height 100 is not a multiple of 65"),
        ("junk.png", "not a readable image"),
        ("absent.png", "missing"),
    ):
        with pytest.raises(PatchFileError, match=message) as info:
            read_patch_column(tmp_path / name)
        assert name in str(info.value)


@needs_samples
@pytest.mark.parametrize("method", [sift_descriptors, raw_pixel_descriptors], ids=["sift", "raw"])
def test_baselines_match_the_same_physical_patch(method):
    grid = _grid_patches()
    ref = method(grid[:, 0])
    easy = method(grid[:, 1])  # e1: the same 4 patches in the next image, easy jitter
    d = np.linalg.norm(ref[:, None] - easy[None], axis=2)
    assert (d.argmin(1) == np.arange(4)).all()
    assert ref.shape[1] == (128 if method is sift_descriptors else 1024)
    assert np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-4)


@needs_samples
def test_describe_builds_a_descriptor_set():
    grid = _grid_patches()
    patches = {"v_sample": {t: grid[:, k] for k, t in enumerate(IMAGE_TYPES)}}
    ds = describe(patches, sift_descriptors)
    assert ds.num_patches("v_sample") == 4 and ds.dim == 128
    # easy targets are nearer to ref than tough ones, on average
    ref = ds["v_sample"]["ref"]
    e = np.mean([np.linalg.norm(ref - ds["v_sample"][f"e{i}"], axis=1).mean() for i in range(1, 6)])
    t = np.mean([np.linalg.norm(ref - ds["v_sample"][f"t{i}"], axis=1).mean() for i in range(1, 6)])
    assert e < t
