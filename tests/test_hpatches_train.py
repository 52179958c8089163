"""examples/hpatches/train.py end to end on tiny data: every output, exact resume, every preset runs a step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from hpatches.data import write_nhpatches_sequence  # noqa: E402
from hpatches.descriptors import IMAGE_TYPES  # noqa: E402
from hpatches.noise import noise_sequence  # noqa: E402
from hpatches.train import PRESETS, main  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_nh")
    rng = np.random.default_rng(0)
    for s in ("i_a", "i_b", "v_c", "v_d"):
        base = np.kron(rng.integers(0, 256, (10, 8, 8)), np.ones((4, 4))).astype(float)
        clean = {t: np.clip(base + rng.normal(0, 4 + 3 * "rehtx".index(t[0]), base.shape), 0, 255).astype(np.uint8) for t in IMAGE_TYPES}
        write_nhpatches_sequence(root, s, clean, noise_sequence(clean, s))
    (root / "splits.json").write_text(json.dumps({"default": {"train": ["i_a", "v_c"], "test": ["i_b", "v_d"]}}))
    return root


FAST = ["--denoise-steps", "3", "--denoise-batch", "16", "--steps", "6", "--stages-sk", "2x2,4x2", "--patience", "2",
        "--checkpoint-every", "3", "--monitor-every", "2", "--verification-pairs", "200", "--queries", "5", "--threads", "1", "--quiet"]


def test_end_to_end_outputs(tiny, tmp_path):
    out = tmp_path / "run"
    results = main(["--data", str(tiny), "--out", str(out)] + FAST)
    for name in ("config.json", "denoise_log.csv", "denoiser.pt", "denoised.npz", "log.csv", "checkpoint.pt", "descriptor.pt",
                 "results.md", "results.json", "results.png", "curves.png", "tsne.png"):
        assert (out / name).exists(), name
    assert set(results) == {"ours (L2-Net)", "SIFT", "raw pixels"}
    for r in results.values():
        assert all(0.0 <= r[t] <= 1.0 for t in ("verification", "matching", "retrieval")) and r["ties"] == "reference"
    assert len((out / "log.csv").read_text().splitlines()) == 7


def test_resume_gives_the_same_next_steps(tiny, tmp_path):
    args = ["--data", str(tiny), "--stages", "denoise,descriptor"] + FAST
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b"), "--steps", "3"])  # interrupted after 3 steps (the later flag wins)
    main(args + ["--out", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "descriptor.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "descriptor.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


def test_offline_miner_runs_and_resumes(tiny, tmp_path):
    args = ["--data", str(tiny), "--stages", "denoise,descriptor", "--miner", "offline", "--offline-every", "2"] + FAST
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b"), "--steps", "3"])
    main(args + ["--out", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "descriptor.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "descriptor.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    anchors, positives, negatives = ckpt["mined"]
    assert len(anchors) > 0 and len(anchors) == len(positives) == len(negatives)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_parses_and_runs_a_step(tiny, tmp_path, preset):
    out = tmp_path / preset
    main(["--data", str(tiny), "--out", str(out), "--experiment", preset, "--stages", "denoise,descriptor",
          "--denoise-steps", "1", "--denoise-batch", "8", "--steps", "1", "--stages-sk", "2x2", "--threads", "1", "--quiet"])
    config = json.loads((out / "config.json").read_text())
    assert config["miner"] == PRESETS[preset]["miner"] and config["margin_fn"] == PRESETS[preset]["margin_fn"]
    assert len((out / "log.csv").read_text().splitlines()) == 2


def test_bad_flags_are_clear_errors(tiny, tmp_path):
    with pytest.raises(SystemExit, match="unknown stage"):
        main(["--data", str(tiny), "--out", str(tmp_path), "--stages", "train"])
    with pytest.raises(SystemExit, match="--stages-sk must look like"):
        main(["--data", str(tiny), "--out", str(tmp_path), "--stages-sk", "big"])
