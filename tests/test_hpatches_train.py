"""examples/hpatches/train.py end to end on tiny data: every output, exact resume, every preset runs a step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tripletkit_hpatches.config import PRESETS
from tripletkit_hpatches.train import main

ROOT = Path(__file__).resolve().parents[1]


FAST = [
    "--denoise-steps",
    "3",
    "--denoise-batch",
    "16",
    "--steps",
    "6",
    "--stages-sk",
    "2x2,4x2",
    "--patience",
    "2",
    "--checkpoint-every",
    "3",
    "--monitor-every",
    "2",
    "--eval-every",
    "2",
    "--verification-pairs",
    "200",
    "--queries",
    "5",
    "--threads",
    "1",
    "--quiet",
]


def test_end_to_end_outputs(tiny, tmp_path):
    out = tmp_path / "run"
    results = main(["--data", str(tiny), "--out", str(out)] + FAST)
    for name in (
        "config.json",
        "denoise_log.csv",
        "denoiser.pt",
        "denoised.npz",
        "log.csv",
        "checkpoint.pt",
        "descriptor.pt",
        "results.md",
        "results.json",
        "results.png",
        "curves.png",
        "tsne.png",
    ):
        assert (out / name).exists(), name
    assert set(results) == {"ours (L2-Net)", "SIFT", "raw pixels"}
    for r in results.values():
        assert all(0.0 <= r[t] <= 1.0 for t in ("verification", "matching", "retrieval")) and r["ties"] == "reference"
    assert len((out / "log.csv").read_text().splitlines()) == 7
    curve = (out / "map_log.csv").read_text().splitlines()
    assert curve[0] == "step,matching_map,stage,batch" and [int(r.split(",")[0]) for r in curve[1:]] == [2, 4, 6]
    assert all(0.0 <= float(r.split(",")[1]) <= 1.0 for r in curve[1:])


def test_epochs_are_a_patch_budget_and_resume_exactly(tiny, tmp_path):
    args = (
        ["--data", str(tiny), "--stages", "denoise,descriptor", "--denoise-epochs", "0.1"] + FAST + ["--epochs", "0.5"]
    )
    main(args + ["--out", str(tmp_path / "a")])
    rows = [r.split(",") for r in (tmp_path / "a" / "log.csv").read_text().splitlines()[1:]]
    # 2 training sequences × 10 patches × 16 images = 320 patches; half of them, in batches of 4 then 8
    used = np.cumsum([int(r[3]) for r in rows])
    assert used[-1] >= 160 and used[-2] < 160
    # 320 pairs × 0.1 / batch 16 → 2 denoiser steps
    assert len((tmp_path / "a" / "denoise_log.csv").read_text().splitlines()) == 3
    main(args[:-2] + ["--epochs", "0.25", "--out", str(tmp_path / "b")])
    main(args + ["--out", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "descriptor.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "descriptor.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


@pytest.mark.parametrize("miner", [["batch_hard"], ["random", "--margin", "1"]], ids=["batch_hard", "random"])
def test_resume_gives_the_same_next_steps(tiny, tmp_path, miner):
    # margin 1 for random triplets: with the default 0.2 every random triplet is already satisfied (zero gradient)
    args = ["--data", str(tiny), "--stages", "denoise,descriptor", "--miner", *miner] + FAST
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
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    anchors, positives, negatives = ckpt["extra"]["mined"]
    assert len(anchors) > 0 and len(anchors) == len(positives) == len(negatives)


def test_cross_batch_memory_trains_and_resumes_exactly(tiny, tmp_path):
    # --memory 16: each batch is mined against the last 16 training embeddings; the queue is in the checkpoint,
    # so an interrupted run continues with the same memory
    args = ["--data", str(tiny), "--stages", "denoise,descriptor", "--memory", "16"] + FAST
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b"), "--steps", "3"])
    main(args + ["--out", str(tmp_path / "b"), "--resume"])
    a = torch.load(tmp_path / "a" / "descriptor.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "descriptor.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["ranks"][0]["stateful"]["memory"]
    assert bool(state["filled"]) and state["embedding_memory"].shape == (16, 128)
    # the memory changes the run: it differs from the same run without it
    main(["--data", str(tiny), "--stages", "denoise,descriptor", "--out", str(tmp_path / "c")] + FAST)
    c = torch.load(tmp_path / "c" / "descriptor.pt", weights_only=True)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(SystemExit, match="smaller than the largest batch"):
        main(args + ["--out", str(tmp_path / "d"), "--memory", "4"])
    with pytest.raises(SystemExit, match="--miner offline cannot"):
        main(args + ["--out", str(tmp_path / "d"), "--miner", "offline"])
    with pytest.raises(SystemExit, match="--memory: 16 in the checkpoint, 32 now"):
        main(args + ["--out", str(tmp_path / "b"), "--resume", "--memory", "32", "--steps", "9"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_parses_and_runs_a_step(tiny, tmp_path, preset):
    out = tmp_path / preset
    main(
        [
            "--data",
            str(tiny),
            "--out",
            str(out),
            "--experiment",
            preset,
            "--stages",
            "denoise,descriptor",
            "--denoise-steps",
            "1",
            "--denoise-batch",
            "8",
            "--steps",
            "1",
            "--stages-sk",
            "2x2",
            "--threads",
            "1",
            "--quiet",
        ]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["miner"] == PRESETS[preset]["miner"] and config["margin_fn"] == PRESETS[preset]["margin_fn"]
    assert config["margin_temperature"] == PRESETS[preset].get("margin_temperature", 1.0)
    assert len((out / "log.csv").read_text().splitlines()) == 2


def test_bad_flags_are_clear_errors(tiny, tmp_path):
    with pytest.raises(SystemExit, match="unknown stage"):
        main(["--data", str(tiny), "--out", str(tmp_path), "--stages", "train"])
    with pytest.raises(SystemExit, match="--stages-sk must look like"):
        main(["--data", str(tiny), "--out", str(tmp_path), "--stages-sk", "big"])
    with pytest.raises(SystemExit, match="--init-descriptor"):
        main(
            [
                "--data",
                str(tiny),
                "--out",
                str(tmp_path),
                "--stages",
                "denoise,descriptor",
                "--denoise-steps",
                "1",
                "--init-descriptor",
                str(tmp_path / "nope.pt"),
            ]
        )
    with pytest.raises(SystemExit, match="--xla-launch needs --device xla"):
        main(["--data", str(tiny), "--out", str(tmp_path), "--xla-launch"])
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="needs torch-xla"):
            main(["--data", str(tiny), "--out", str(tmp_path), "--device", "xla"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            main(["--data", str(tiny), "--out", str(tmp_path), "--device", "cuda"])


def test_experiment_all_writes_one_table_and_shares_each_denoiser(tiny, tmp_path):
    out = tmp_path / "all"
    table = main(
        [
            "--data",
            str(tiny),
            "--out",
            str(out),
            "--experiment",
            "all",
            "--steps",
            "2",
            "--stages-sk",
            "2x2",
            "--denoise-steps",
            "2",
            "--denoise-batch",
            "8",
            "--verification-pairs",
            "100",
            "--queries",
            "4",
            "--threads",
            "1",
            "--quiet",
        ]
    )
    assert list(table) == list(PRESETS)
    md = (out / "experiments.md").read_text()
    for name in PRESETS:
        assert f"| {name} " in md
        assert (out / name / "results.json").exists()
    rows = json.loads((out / "experiments.json").read_text())
    assert {"SIFT (shallow)", "SIFT (deep)", "raw pixels (shallow)", "raw pixels (deep)"} <= set(rows)
    for name in PRESETS:  # each row is that run's own result
        ours = json.loads((out / name / "results.json").read_text())["ours (L2-Net)"]
        assert rows[name] == {t: ours[t] for t in ("verification", "matching", "retrieval")}
    # the deep denoiser is trained once (soft-baseline) and reused by the batch-hard presets
    first = torch.load(out / "soft-baseline" / "denoiser.pt", weights_only=True)
    for name in ("bh128", "bh1024", "soft-bh1024"):
        other = torch.load(out / name / "denoiser.pt", weights_only=True)
        assert all(torch.equal(first[k], other[k]) for k in first)
    assert (out / "experiments.png").exists()
    # as in the study, batch hard starts from the baseline's weights; the 1024 presets grow from BH128's
    for name, start in (("bh128", "baseline"), ("bh1024", "bh128"), ("soft-bh1024", "bh128"), ("hardnet", "baseline")):
        assert json.loads((out / name / "config.json").read_text())["init_descriptor"] == str(
            out / start / "descriptor.pt"
        )
        assert f"| {name} " in md and start in [c.strip() for c in md.split(f"| {name} ")[1].split("\n")[0].split("|")]
    assert json.loads((out / "baseline" / "config.json").read_text())["momentum"] == 0.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_flag_trains_and_is_recorded(tiny, tmp_path, precision):
    out = tmp_path / precision
    main(["--data", str(tiny), "--out", str(out), "--stages", "denoise,descriptor", "--precision", precision] + FAST)
    config = json.loads((out / "config.json").read_text())
    assert config["precision_used"] == precision and config["world_size"] == 1
    losses = [float(r.split(",")[1]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 6 and all(np.isfinite(losses))


def test_auto_precision_follows_the_hardware():
    from tripletkit_hpatches.runtime import pick_precision

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert pick_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert pick_precision("fp32", torch.device("cpu")) == "fp32"


def _torchrun(args, nproc=2):
    import os
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(ROOT / "examples" / "hpatches" / "train.py"),
    ]
    return subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_processes_train_resume_and_change_stage_together(tiny, tmp_path):
    # random triplets, margin 1: the loss starts under the collapse value 1, so the scheduler advances after patience
    args = ["--data", str(tiny), "--miner", "random", "--margin", "1"] + FAST
    full = _torchrun(args + ["--out", str(tmp_path / "a")])
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "a"
    for name in ("results.md", "results.json", "log.csv", "checkpoint.pt", "descriptor.pt", "denoised.npz", "tsne.png"):
        assert (out / name).exists(), name
    rows = [r.split(",") for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(1, 7))  # rank 0 alone writes the log
    # per-replica S×K 2x2 then 4x2: the global batch is 2 × S × K, and both replicas moved to stage 2 together
    assert int(rows[0][3]) == 8 and int(rows[-1][3]) == 16 and rows[-1][2] == "1"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    # interrupted after 3 steps, resumed with the same world size: the same model and log as the uninterrupted run
    part = _torchrun(args + ["--out", str(tmp_path / "b"), "--steps", "3", "--stages", "denoise,descriptor"])
    assert part.returncode == 0, part.stderr[-3000:]
    resumed = _torchrun(args + ["--out", str(tmp_path / "b"), "--resume", "--stages", "denoise,descriptor"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(out / "descriptor.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "descriptor.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()
    # a checkpoint of 2 replicas cannot be resumed by one process
    with pytest.raises(SystemExit, match="2 process"):
        main(args + ["--out", str(tmp_path / "b"), "--resume", "--stages", "descriptor", "--steps", "7"])


def test_resume_refuses_changed_training_flags(tiny, tmp_path):
    args = ["--data", str(tiny), "--stages", "denoise,descriptor"] + FAST
    main(args + ["--out", str(tmp_path), "--steps", "3"])
    with pytest.raises(
        SystemExit,
        match=r"(?s)--miner: 'batch_hard' in the checkpoint, 'random' now.*--lr: 0.0002 in the checkpoint, 0.01 now",
    ):
        main(args + ["--out", str(tmp_path), "--resume", "--lr", "0.01", "--miner", "random"])
    main(args + ["--out", str(tmp_path), "--resume", "--lr", "0.01", "--allow-changed-flags"])
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + 6
    # the override is recorded: from here on the run trains with --lr 0.01, and a longer run is no change of flags
    main(args + ["--out", str(tmp_path), "--resume", "--lr", "0.01", "--steps", "7"])


def test_compiled_training_step_matches_eager_without_graph_breaks(tiny, tmp_path):
    """``--compile`` compiles the descriptor step's forward with the loss inside as one graph (fullgraph: a break is
    an error), and trains the same numbers as eager mode. Inductor's random ops fall back to eager's here, so
    dropout draws the same masks in both. fp32 (bf16 rounds differently in a fused kernel) and SGD (Adam's g/√v
    turns a 1e-9 gradient difference into a whole step where the gradient is near 0)."""
    import torch._dynamo
    import torch._inductor.config
    from torch._dynamo.utils import counters

    args = ["--data", str(tiny), "--experiment", "bh128", "--denoiser", "none", "--stages", "denoise,descriptor"]
    args += ["--steps", "4", "--stages-sk", "4x2", "--eval-every", "0", "--precision", "fp32", "--optimizer", "sgd"]
    args += ["--lr", "0.01", "--threads", "1", "--quiet"]
    main(args + ["--out", str(tmp_path / "eager")])
    torch._dynamo.reset()
    counters.clear()
    # inductor's own config switch, restored on exit (a monkeypatch of the config module hides the key afterwards)
    with torch._inductor.config.patch(fallback_random=True):
        main(args + ["--out", str(tmp_path / "compiled"), "--compile"])
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    eager = [r.split(",") for r in (tmp_path / "eager" / "log.csv").read_text().splitlines()[1:]]
    compiled = [r.split(",") for r in (tmp_path / "compiled" / "log.csv").read_text().splitlines()[1:]]
    assert len(eager) == len(compiled) == 4
    np.testing.assert_allclose([float(r[1]) for r in compiled], [float(r[1]) for r in eager], rtol=1e-4, atol=1e-5)
    a = torch.load(tmp_path / "eager" / "descriptor.pt", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "descriptor.pt", weights_only=True)
    for k in a:
        # the fused kernels sum in another order; through the per-patch normalisation that is up to 4e-5 here, where
        # a wrong or missing gradient would be off by the whole update (lr 0.01 × 4 steps)
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)


def _benchmark_like(root: Path) -> tuple[Path, Path]:
    """N-HPatches data with 42 release-style sequence names and a tasks folder whose split ``a`` has the benchmark's
    40 test sequences (small task files of its format)."""
    import pandas as pd

    from tripletkit_hpatches.data import write_nhpatches_sequence
    from tripletkit_hpatches.descriptors import IMAGE_TYPES
    from tripletkit_hpatches.noise import noise_sequence
    from tripletkit_hpatches.tasks import generate_verification, write_verification

    data, tasks = root / "data", root / "tasks"
    rng = np.random.default_rng(0)
    names = [f"{'iv'[k % 2]}_s{k:02d}" for k in range(42)]
    for s in names:
        base = np.kron(rng.integers(0, 256, (6, 8, 8)), np.ones((4, 4)))
        clean = {t: np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8) for t in IMAGE_TYPES}
        write_nhpatches_sequence(data, s, clean, noise_sequence(clean, s))
    tasks.mkdir()
    test, train = names[:40], names[40:]
    (tasks / "splits.json").write_text(
        json.dumps({"a": {"name": "a", "test": test, "train": train}, "full": {"name": "full", "test": names}})
    )
    write_verification(generate_verification(test, {s: 6 for s in test}, n_pairs=300, progress=False), tasks, "a")
    cells = [(s, i) for s in test for i in range(6)]
    pick = rng.permutation(len(cells))
    pd.DataFrame([cells[i] for i in pick[:30]], columns=["s", "idx"]).to_csv(
        tasks / "retr_queries_split-a.csv", index=False
    )
    pd.DataFrame([cells[i] for i in pick[30:150]], columns=["s", "idx"]).to_csv(
        tasks / "retr_distractors_split-a.csv", index=False
    )
    return data, tasks


def test_benchmark_tasks_train_on_the_split_and_put_published_results_beside_ours(tmp_path):
    data, tasks = _benchmark_like(tmp_path)
    args = ["--data", str(data), "--tasks", str(tasks), "--split", "a", "--denoiser", "none", "--steps", "2"]
    args += ["--stages-sk", "2x2", "--eval-every", "0", "--threads", "1", "--quiet"]
    main(args + ["--out", str(tmp_path / "run")])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["split"] == "a" and config["split_sequences"]["train"] == ["i_s40", "v_s41"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    sift_a = [p for p in results["published"] if p["descriptor"] == "SIFT" and p["split"] == "a"]
    assert sift_a and sift_a[0]["published"] is True and sift_a[0]["matching"] == 24.42  # the iago-suarez PDF value
    assert all(0 <= results[m]["matching"] <= 1 for m in ("SIFT", "raw pixels"))
    md = (tmp_path / "run" / "results.md").read_text()
    assert "Published results, split a" in md and "HardNet+" in md and "published, not measured here" in md
    assert (tmp_path / "run" / "comparison.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no training sequences"):
        main(args[:4] + ["--split", "full"] + args[6:] + ["--out", str(tmp_path / "full")])
    with pytest.raises(SystemExit, match="needs --tasks"):
        main(["--data", str(data), "--split", "a", "--out", str(tmp_path / "x"), "--quiet"])


def test_validation_split_plateau_stop_and_selection(tiny, tmp_path):
    """--val-sequences holds a training sequence out; --plateau stops at the last stage once the validation mAP has
    not improved by --plateau-delta for N evaluations, and descriptor.pt is the best evaluation's weights."""
    out = tmp_path / "run"
    args = ["--data", str(tiny), "--out", str(out), "--stages", "denoise,descriptor"] + FAST
    args += ["--steps", "60", "--val-sequences", "1", "--plateau", "2", "--plateau-delta", "0.5", "--patience", "1"]
    main(args)
    split = json.loads((out / "config.json").read_text())["split_sequences"]
    assert len(split["val"]) == 1 and not set(split["val"]) & set(split["train"]) and split["test"] == ["i_b", "v_d"]
    rows = [r.split(",") for r in (out / "map_log.csv").read_text().splitlines()[1:]]
    # the rule restated on the logged curve: the first value is the best (nothing beats it by 0.5); the run stops
    # at the first evaluation with 2 evaluations since the best, taken at the last stage (stage index 1)
    since, stop = 0, None
    for i, (step, _value, stage, _batch) in enumerate(rows):
        since = 0 if i == 0 else since + 1
        if since >= 2 and stage == "1":
            stop = int(step)
            break
    assert stop is not None and stop < 60
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "step,loss,stage,batch,lr" and int(log[-1].split(",")[0]) == stop
    best = torch.load(out / "descriptor_best.pt", weights_only=True)
    final = torch.load(out / "descriptor.pt", weights_only=True)
    last = torch.load(out / "descriptor_last.pt", weights_only=True)
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert not all(torch.equal(last[k], final[k]) for k in last)  # training went on after the selected evaluation
    before = (out / "log.csv").read_text()
    main(args + ["--resume"])  # a finished plateau run is done: nothing more is trained
    assert (out / "log.csv").read_text() == before


def test_resume_with_plateau_steps_continues_as_if_uninterrupted(tiny, tmp_path):
    """A run stopped by --plateau, resumed with a --plateau-steps floor its stop did not meet, trains on: exactly as
    a run that had the floor from the start. Its checkpoint is made a legacy one (no last_step in the plateau's
    state, as before the floor existed): the last evaluation's step then comes from map_log.csv."""
    args = ["--data", str(tiny), "--stages", "denoise,descriptor"] + FAST
    args += ["--steps", "60", "--val-sequences", "1", "--plateau", "2", "--plateau-delta", "0.5", "--patience", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    main(args + ["--out", str(a)])
    rows = [r.split(",") for r in (a / "map_log.csv").read_text().splitlines()[1:]]
    stopped = int(rows[-1][0])
    assert stopped < 60  # stopped by the plateau, not the step budget
    state = torch.load(a / "checkpoint.pt", weights_only=True)
    for rank in state["ranks"]:
        assert rank["stateful"]["plateau"].pop("last_step") == stopped
    torch.save(state, a / "checkpoint.pt")
    floor = ["--plateau-steps", "20"]
    main(args + floor + ["--out", str(a), "--resume"])
    main(args + floor + ["--out", str(b)])
    for name in ("log.csv", "map_log.csv"):
        assert (a / name).read_text() == (b / name).read_text()
    rows = [r.split(",") for r in (b / "map_log.csv").read_text().splitlines()[1:]]
    assert int(rows[-1][0]) > stopped  # the floor made it train past the old stop
    best = torch.load(a / "descriptor.pt", weights_only=True)
    want = torch.load(b / "descriptor.pt", weights_only=True)
    assert all(torch.equal(best[k], want[k]) for k in want)


def test_plateau_needs_validation():
    from tripletkit_hpatches.config import parse

    with pytest.raises(SystemExit, match="--val-sequences"):
        parse(["--plateau", "3"])
    with pytest.raises(SystemExit, match="eval-every"):
        parse(["--plateau", "3", "--val-sequences", "1", "--eval-every", "0"])
    for flag, value in (("--stage-lr-start", "0"), ("--lr-below", "nan"), ("--smoothing", "1"), ("--hysteresis", "-1")):
        with pytest.raises(SystemExit, match=flag.lstrip("-").split("-")[0]):
            parse([flag, value])


def test_hold_out_is_fixed_spread_over_kinds_and_checked():
    from tripletkit_hpatches.stages.data import hold_out

    names = ["i_a", "i_b", "i_c", "v_a", "v_b", "ef_x", "ef_y"]
    train, val = hold_out(names, 3)
    assert sorted(train + val) == sorted(names) and len(val) == 3
    assert {v.split("_")[0] for v in val} == {"i", "v", "ef"}  # one of each kind
    assert hold_out(list(reversed(names)), 3)[1] == val  # the order of the list does not matter
    with pytest.raises(SystemExit, match="leaves no training sequence"):
        hold_out(names, 7)


def test_pair_loss_is_hardnet_on_each_class_first_two_members():
    from tripletkit import HardNetLoss
    from tripletkit_hpatches.stages.descriptor import PairLoss

    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    ref = HardNetLoss()
    labels2 = torch.tensor([5, 5, 1, 1, 9, 9, 0, 0, 3, 3, 7, 7])
    assert torch.equal(PairLoss(HardNetLoss())(emb, labels2), ref(emb[0::2], emb[1::2]))
    labels4 = torch.tensor([5] * 4 + [1] * 4 + [9] * 4)  # the probe's K = 4 order: the first two of each class
    want = ref(emb[[0, 4, 8]], emb[[1, 5, 9]])
    assert torch.equal(PairLoss(HardNetLoss())(emb, labels4), want)
    assert PairLoss(HardNetLoss()).collapse_value == 1.0
    with pytest.raises(ValueError, match="next to each other"):
        PairLoss(HardNetLoss())(emb, torch.tensor([5, 1] * 6))


def test_hardnet_loss_needs_pairs():
    from tripletkit_hpatches.config import parse

    with pytest.raises(SystemExit, match="K = 2"):
        parse(["--loss", "hardnet", "--stages-sk", "8x2,8x4"])
    assert parse(["--experiment", "hardnet"]).stages_sk == ((32, 2), (64, 2), (192, 2), (512, 2))


def test_stage_threshold_and_stage_lr_reach_the_log(tiny, tmp_path):
    """--threshold-factor scales the collapse value: a threshold no loss reaches advances after --patience steps;
    --stage-lr-start/--stage-lr-warmup set the logged rate of the new stage's first steps."""
    out = tmp_path / "run"
    args = ["--data", str(tiny), "--out", str(out), "--stages", "denoise,descriptor"] + FAST
    main(args + ["--threshold-factor", "100", "--smoothing", "0", "--stage-lr-start", "0.5", "--stage-lr-warmup", "2"])
    rows = [r.split(",") for r in (out / "log.csv").read_text().splitlines()[1:]]
    stages = [int(r[2]) for r in rows]
    assert stages[:3] == [0, 1, 1]  # patience 2: advanced at step 2 (the log shows the stage after the step)
    lrs = [float(r[4]) for r in rows]
    # step 1: the base rate; from the change on: 0.5, 0.75, then 1 × the base rate (Adam 2e-4)
    assert lrs[:5] == pytest.approx([2e-4, 1e-4, 1.5e-4, 2e-4, 2e-4])
    with pytest.raises(SystemExit, match="threshold-factor"):
        main(args + ["--threshold-factor", "0"])


def test_stage_lr_factors_set_each_stage_rate_and_are_checked(tiny, tmp_path):
    """--stage-lr-factors multiplies the rate of each stage (the log's lr column), is a training flag, and belongs to
    the --stages-sk it was given for."""
    from tripletkit_hpatches.config import parse

    out = tmp_path / "run"
    args = ["--data", str(tiny), "--out", str(out), "--stages", "denoise,descriptor"] + FAST
    # FAST steps 2x2 → 4x2; a threshold no loss reaches advances after --patience 2 steps
    main(args + ["--threshold-factor", "100", "--smoothing", "0", "--stage-lr-factors", "3,0.5"])
    rows = [r.split(",") for r in (out / "log.csv").read_text().splitlines()[1:]]
    # each row shows the stage after its step and the rate set for the next step, the stage's
    stages, lrs = [int(r[2]) for r in rows], [float(r[4]) for r in rows]
    assert stages[:3] == [0, 1, 1]
    assert lrs == pytest.approx([2e-4 * (3.0, 0.5)[s] for s in stages])
    assert json.loads((out / "config.json").read_text())["stage_lr_factors"] == "3.0,0.5"
    with pytest.raises(SystemExit, match="--stage-lr-factors: '3.0,0.5' in the checkpoint, '3.0,1.0' now"):
        main(
            args
            + ["--threshold-factor", "100", "--smoothing", "0", "--stage-lr-factors", "3,1", "--resume", "--steps", "7"]
        )
    base = ["--data", str(tiny)]
    assert parse(base).stage_lr_factors is None
    assert parse([*base, "--stages-sk", "4x2", "--stage-lr-factors", "2"]).stage_lr_factors == (2.0,)
    for bad, message in (
        (["--stage-lr-factors", "1,2"], "has 2 entries and --stages-sk 3 stages"),
        (["--stage-lr-factors", "1,0,1"], "finite numbers > 0"),
        (["--stage-lr-factors", "1,inf,1"], "finite numbers > 0"),
        (["--stage-lr-factors", "1,x,1"], "must look like 1,1,2,4"),
    ):
        with pytest.raises(SystemExit, match=message):
            parse([*base, *bad])


def test_evaluation_spacing_in_patches_or_off(tiny, tmp_path):
    """--eval-every-patches evaluates each time a multiple of it is crossed; --eval-every 0 evaluates never."""
    args = ["--data", str(tiny), "--stages", "denoise,descriptor"] + FAST
    main(args + ["--out", str(tmp_path / "p"), "--eval-every-patches", "10"])
    after = [int(r.split(",")[3]) for r in (tmp_path / "p" / "log.csv").read_text().splitlines()[1:]]
    batches = [4] + after[:-1]  # the log shows the batch size after each step; the first stage is 2x2
    seen = np.cumsum(batches)
    want = [i + 1 for i in range(len(seen)) if seen[i] // 10 > (seen[i] - batches[i]) // 10 or i == len(seen) - 1]
    got = [int(r.split(",")[0]) for r in (tmp_path / "p" / "map_log.csv").read_text().splitlines()[1:]]
    assert got == want
    main(args + ["--out", str(tmp_path / "off"), "--eval-every", "0"])
    assert (tmp_path / "off" / "map_log.csv").read_text().splitlines()[1:] == []


@pytest.mark.parametrize("groups", ["none", "sequence"])
def test_batch_groups_sequence_keeps_each_batch_in_one_training_sequence(tiny, tmp_path, monkeypatch, groups):
    from tripletkit.training import batches as batches_module

    seen: list[list[int]] = []
    original = batches_module.SteppedBatches.__next__

    def record(self):
        batch = original(self)
        seen.append(batch)
        return batch

    monkeypatch.setattr(batches_module.SteppedBatches, "__next__", record)
    args = ["--data", str(tiny), "--stages", "denoise,descriptor", "--batch-groups", groups] + FAST
    main(args + ["--out", str(tmp_path / "run"), "--steps", "12"])
    # the tiny set's 2 training sequences hold 10 patches × 16 images each, one sequence after the other
    sequences = [{i // 160 for i in batch} for batch in seen]
    assert len(seen) == 12 and {len(b) for b in seen} == {4, 8}  # both stages (2x2, then 4x2) were drawn
    if groups == "sequence":
        assert all(len(s) == 1 for s in sequences), sequences
        assert {next(iter(s)) for s in sequences} == {0, 1}
    else:
        assert any(len(s) == 2 for s in sequences), sequences  # from all sequences: some batch mixes them
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["batch_groups"] == groups


def test_margin_temperature_reaches_the_loss_and_is_checked(tiny, tmp_path):
    from tripletkit.margins import SoftplusMargin
    from tripletkit_hpatches.config import parse
    from tripletkit_hpatches.runtime import Runtime
    from tripletkit_hpatches.stages.descriptor import build_loss

    rt = Runtime(torch.device("cpu"))
    base = ["--data", str(tiny), "--out", str(tmp_path / "t"), "--margin-fn", "softplus"]
    for extra, temperature in (([], 1.0), (["--margin-temperature", "0.1"], 0.1)):
        assert build_loss(parse([*base, *extra]), rt).margin_fn == SoftplusMargin(0.0, temperature=temperature)
    for loss in ("triplet", "hardnet"):
        cfg = parse([*base, "--margin-temperature", "0.25", "--loss", loss, "--stages-sk", "4x2"])
        assert build_loss(cfg, rt).margin_fn.collapse_value == pytest.approx(0.25 * np.log(2))
    # it trains, and it is a training flag: recorded, and a resume with another value is refused
    args = [*base, "--stages", "denoise,descriptor", *FAST, "--steps", "2"]
    main([*args, "--margin-temperature", "0.1"])
    assert json.loads((tmp_path / "t" / "config.json").read_text())["margin_temperature"] == 0.1
    with pytest.raises(SystemExit, match="--margin-temperature: 0.1 in the checkpoint, 0.2 now"):
        main([*args, "--margin-temperature", "0.2", "--resume", "--steps", "3"])
    # the soft-baseline preset's τ (0.1) belongs to its soft margin: a --margin-fn hinge drops it, an explicit τ stays
    assert parse([*base, "--experiment", "soft-baseline"]).margin_temperature == 0.1
    assert parse([*base, "--experiment", "soft-baseline", "--margin-fn", "hinge"]).margin_temperature == 1.0
    assert parse([*base, "--experiment", "soft-baseline", "--margin-temperature", "0.3"]).margin_temperature == 0.3
    for bad, message in (
        (["--margin-temperature", "0"], "--margin-temperature must be a finite number > 0"),
        (["--margin-temperature", "nan"], "--margin-temperature must be a finite number > 0"),
        (["--margin-fn", "hinge", "--margin-temperature", "0.1"], "--margin-fn hinge has none"),
    ):
        with pytest.raises(SystemExit, match=message):
            parse([*base, *bad])


def test_weight_ema_saves_the_average_and_leaves_the_training_alone(tiny, tmp_path, monkeypatch):
    """--weight-ema D: descriptor.pt is the moving average of the raw weights after each step (restated here in
    NumPy from the weights the loop handed over), the training (log.csv, the checkpoint's model) is the run
    without it, and an interrupted run resumes to the same average."""
    import tripletkit_hpatches.stages.descriptor as stage
    from tripletkit.training import WeightEMA
    from tripletkit_hpatches.models import L2Net

    handed: list[dict[str, np.ndarray]] = []

    class Recording(WeightEMA):
        def update(self, model):
            handed.append({k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()})
            super().update(model)

    args = ["--data", str(tiny), "--stages", "denoise,descriptor"] + FAST
    main(args + ["--out", str(tmp_path / "plain")])
    monkeypatch.setattr(stage, "WeightEMA", Recording)
    main(args + ["--out", str(tmp_path / "a"), "--weight-ema", "0.5"])
    assert len(handed) == 6
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "plain" / "log.csv").read_text()
    raw = torch.load(tmp_path / "plain" / "descriptor.pt", weights_only=True)
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(raw[k], ckpt[k]) for k in raw)
    saved = torch.load(tmp_path / "a" / "descriptor.pt", weights_only=True)
    torch.manual_seed(0)  # the run's seed (--seed 0) draws L2Net's initial weights first
    init = {k: v.numpy().astype(np.float64) for k, v in L2Net().state_dict().items()}
    for k, v in saved.items():
        if not v.is_floating_point():
            assert torch.equal(v, raw[k])  # counters are copied
            continue
        avg = init[k]
        for n, weights in enumerate(handed):
            d = min(0.5, (1 + n) / (10 + n))
            avg = d * avg + (1 - d) * weights[k].astype(np.float64)
        np.testing.assert_allclose(v.numpy(), avg, rtol=1e-5, atol=1e-6, err_msg=k)
    assert not all(torch.equal(saved[k], raw[k]) for k in raw)
    monkeypatch.setattr(stage, "WeightEMA", WeightEMA)
    main(args + ["--out", str(tmp_path / "b"), "--weight-ema", "0.5", "--steps", "3"])
    main(args + ["--out", str(tmp_path / "b"), "--weight-ema", "0.5", "--resume"])
    b = torch.load(tmp_path / "b" / "descriptor.pt", weights_only=True)
    assert all(torch.equal(saved[k], b[k]) for k in saved)
    with pytest.raises(SystemExit, match="--weight-ema: 0.5 in the checkpoint, 0.0 now"):
        main(args + ["--out", str(tmp_path / "b"), "--resume", "--steps", "9"])
    with pytest.raises(SystemExit, match=r"--weight-ema must be in \[0, 1\)"):
        main(args + ["--out", str(tmp_path / "c"), "--weight-ema", "1"])
