"""HPatches data: layouts and readers, extraction from real sequences, the noise model, splits, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tripletkit_hpatches import extract as ex
from tripletkit_hpatches.data import (
    PatchDataset,
    detect_format,
    load_dataset,
    make_splits,
    write_hpatches_sequence,
    write_nhpatches_sequence,
)
from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.noise import noise_sequence
from tripletkit_hpatches.patches import PatchFileError, read_patch_column, resize_patches
from tripletkit_hpatches.prepare import main as prepare_main

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not present")


def _random_sequence(n=5, p=65, seed=0):
    rng = np.random.default_rng(seed)
    return {t: rng.integers(0, 256, (n, p, p), dtype=np.uint8) for t in IMAGE_TYPES}


def _ncc(a, b):
    a = a.reshape(len(a), -1).astype(float)
    b = b.reshape(len(b), -1).astype(float)
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-6)
    b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-6)
    return (a * b).mean(1)


def test_hpatches_layout_round_trip(tmp_path):
    seq = _random_sequence()
    write_hpatches_sequence(tmp_path, "v_test", seq)
    assert detect_format(tmp_path) == "hpatches"
    ds = load_dataset(tmp_path, size=65, progress=False)
    for k, t in enumerate(IMAGE_TYPES):
        assert np.array_equal(ds.clean["v_test"][k], seq[t])
    # the second load comes from the on-disk cache, identically
    again = load_dataset(tmp_path, size=65, progress=False)
    assert np.array_equal(again.clean["v_test"], ds.clean["v_test"])
    assert list((tmp_path / ".tripletkit-cache").glob("v_test-hpatches-65-*.npz"))
    small = load_dataset(tmp_path, size=32, progress=False)
    assert small.clean["v_test"].shape == (16, 5, 32, 32)


def test_nhpatches_layout_round_trip(tmp_path):
    clean = _random_sequence(p=32)
    noisy = _random_sequence(p=32, seed=1)
    write_nhpatches_sequence(tmp_path, "i_test", clean, noisy)
    assert detect_format(tmp_path) == "nhpatches"
    ds = load_dataset(tmp_path, progress=False)
    assert np.array_equal(ds.clean["i_test"][3], clean[IMAGE_TYPES[3]])
    assert np.array_equal(ds.noisy["i_test"][7], noisy[IMAGE_TYPES[7]])
    x, y, c = ds.training_arrays(["i_test"], noisy=True)
    assert x.shape == (80, 32, 32) and np.array_equal(np.bincount(y), np.full(5, 16))
    assert np.array_equal(x[y == 2][0], noisy["ref"][2]) and np.array_equal(c[y == 2][0], clean["ref"][2])


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "h2.png").unlink(), "h2.png: missing"),
        (lambda f: (f / "t4.png").write_bytes(b"garbage"), "t4.png: not a readable image"),
        (lambda f: _write(f / "e3.png", np.zeros((65 * 4, 65), np.uint8)), "e3.png: 4 patches, but"),
        (lambda f: _write(f / "e1.png", np.zeros((100, 65), np.uint8)), "e1.png: height 100 is not a multiple of 65"),
    ],
    ids=["missing", "unreadable", "mismatched-N", "wrong-height"],
)
def test_readers_reject_corrupt_input_naming_the_file(tmp_path, damage, message):
    write_hpatches_sequence(tmp_path, "v_test", _random_sequence())
    damage(tmp_path / "v_test")
    with pytest.raises(PatchFileError, match=message):
        load_dataset(tmp_path, size=65, progress=False, cache_dir=tmp_path / "cache")


def _write(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_jitter_calibration_holds():
    rng = np.random.default_rng(123)
    for level, target in ex.TARGET_OVERLAP.items():
        med = float(np.median(ex.region_overlap(ex.draw_jitter(1500, level, rng))))
        assert abs(med - target) < 0.02, (level, med)


@needs_shared
def test_extraction_on_a_real_sequence():
    seq = ex.load_sequence(SHARED / "sequences" / "oxford_graf")
    r = ex.extract_sequence(seq, max_patches=400, seed=0)
    ref = r.patches["ref"]
    assert ref.shape == (400, 65, 65) and ref.dtype == np.uint8
    sim = {lv: np.median(np.concatenate([_ncc(ref, r.patches[f"{lv}{k}"]) for k in range(1, 6)])) for lv in "eht"}
    rand = np.median(_ncc(ref, r.patches["e1"][np.random.default_rng(0).permutation(400)]))
    assert sim["e"] > sim["h"] > sim["t"] > rand + 0.15, (sim, rand)
    assert sim["e"] > 0.7 and rand < 0.35
    for lv, target in ex.TARGET_OVERLAP.items():
        assert abs(r.overlaps[lv] - target) < 0.03


@needs_shared
def test_noise_model_mae_is_about_ten_grey_levels_and_grows():
    patches = resize_patches(read_patch_column(SHARED / "hpatches-patch-samples" / "v_graffiti_ref.png"), 32)
    clean = {t: patches[:600] for t in IMAGE_TYPES}
    noisy = noise_sequence(clean, "v_graffiti", seed=0)
    mae = {t: np.abs(noisy[t].astype(float) - clean[t]).mean() for t in IMAGE_TYPES}
    overall = float(np.mean(list(mae.values())))
    assert 9.0 <= overall <= 11.0, overall
    level = {lv: np.mean([mae[f"{lv}{k}"] for k in range(1, 6)]) for lv in "eht"}
    assert mae["ref"] < level["e"] < level["h"] < level["t"]
    assert np.array_equal(noise_sequence(clean, "v_graffiti", seed=0)["h2"], noisy["h2"])
    assert not np.array_equal(noise_sequence(clean, "v_graffiti", seed=1)["h2"], noisy["h2"])


def test_splits_are_seeded_and_stratified():
    names = [f"i_{k}" for k in range(10)] + [f"v_{k}" for k in range(7)]
    a = make_splits(names, seed=3)["default"]
    assert a == make_splits(names, seed=3)["default"] and a != make_splits(names, seed=4)["default"]
    assert sorted(a["train"] + a["test"]) == sorted(names) and not set(a["train"]) & set(a["test"])
    assert sum(n.startswith("i_") for n in a["test"]) == 3 and sum(n.startswith("v_") for n in a["test"]) == 2


@needs_shared
def test_prepare_cli_extract_and_noise(tmp_path):
    out = tmp_path / "release"
    assert (
        prepare_main(
            ["extract", "--sequences", str(SHARED / "sequences" / "v_dogman"), "--out", str(out), "--max-patches", "60"]
        )
        == 0
    )
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["sequences"] == {"v_dogman": 60} and meta["synthetic"] is False
    assert read_patch_column(out / "v_dogman" / "t5.png").shape == (60, 65, 65)
    noisy = tmp_path / "noisy"
    assert prepare_main(["noise", "--data", str(out), "--out", str(noisy)]) == 0
    ds = load_dataset(noisy, progress=False)
    assert isinstance(ds, PatchDataset) and ds.noisy["v_dogman"].shape == (16, 60, 32, 32)
    assert "not the original" in json.loads((noisy / "dataset.json").read_text())["noise"]["model"]


def test_prepare_cli_reports_bad_sequences(tmp_path, capsys):
    (tmp_path / "seq").mkdir()
    (tmp_path / "seq" / "1.png").write_bytes(b"not an image")
    assert prepare_main(["extract", "--sequences", str(tmp_path / "seq"), "--out", str(tmp_path / "o")]) == 2
    assert "1.png: not a readable image" in capsys.readouterr().err


# ------------------------------------------------------------------ prepare.py bounds its work on bad images


def _sequence_folder(root, images, homography="1 0 5\n0 1 3\n0 0 1\n"):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images, 1):
        Image.fromarray(img).save(root / f"{k}.png")  # uint16 arrays are saved as 16-bit PNGs
        if k > 1:
            (root / f"H_1_{k}").write_text(homography)
    return root


def _textured(h=240, w=320, seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return np.clip(gaussian_filter(rng.normal(size=(h, w)), 3) * 900 + 128, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["white", "black", "half-white", "clipped"])
def test_saturated_or_flat_images_are_quick(tmp_path, kind):
    # before: scikit-image's blob pruning enumerated every pair of plateau maxima (minutes, then out of memory);
    # the time itself is measured in bench/test_extraction.py, not asserted here
    base = _textured(480, 640)
    img = {
        "white": np.full_like(base, 255),
        "black": np.zeros_like(base),
        "half-white": np.where(np.arange(640)[None, :] < 320, 255, base).astype(np.uint8),
        "clipped": np.clip(base.astype(int) * 4, 0, 255).astype(np.uint8),
    }[kind]
    found = ex.detect(img.astype(np.float32))
    assert len(found) <= 2 * 4000 + 4 * 1000
    if kind in ("white", "black"):
        folder = _sequence_folder(tmp_path / kind, [img] * 6)
        with pytest.raises(ex.SequenceFileError, match="no detections|no region lies inside"):
            ex.extract_sequence(ex.load_sequence(folder), max_patches=50)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    base = _textured().astype(np.uint16) * 257  # 16-bit, the full range
    folder = _sequence_folder(tmp_path / "s16", [base] * 6)
    seq = ex.load_sequence(folder)
    assert seq.images[0].max() <= 255.0 and abs(seq.images[0].mean() - _textured().mean()) < 1.0
    # the patch reader: 16-bit columns are scaled, not wrapped modulo 256
    from PIL import Image

    col = (np.arange(65 * 2 * 65, dtype=np.int64).reshape(130, 65) * 7) % 65536
    Image.fromarray(col.astype(np.uint16)).save(tmp_path / "col.png")
    patches = read_patch_column(tmp_path / "col.png")
    assert patches.shape == (2, 65, 65)
    np.testing.assert_array_equal(patches.reshape(130, 65), np.rint(col / 257.0).astype(np.uint8))


@pytest.mark.parametrize(
    "h",
    ["1 2 3\n2 4 6\n0 0 1\n", "1 0 0\n0 0 0\n0 0 1\n", "0 0 1\n0 0 1\n0 0 1\n"],
    ids=["rank-2", "collapsed-axis", "rank-1"],
)
def test_degenerate_homographies_are_rejected_by_name(tmp_path, h):
    folder = _sequence_folder(tmp_path / "deg", [_textured()] * 6, homography=h)
    with pytest.raises(ex.SequenceFileError, match="H_1_2: degenerate homography"):
        ex.load_sequence(folder)
