"""examples/hpatches/study.py end to end on a small dataset: the parts, the selection on validation, the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "hpatches" / "study.py"

SMALL = [
    "--denoise-steps", "2",
    "--baseline-epochs", "0.04",
    "--bh-epochs", "0.04",
    "--bh1024-epochs", "0.04",
    "--remedy-epochs", "0.03",
    "--eval-patches", "100",
    "--plateau", "1",
    "--val-sequences", "1",
    "--val-patches", "20",
    "--verification-pairs", "300",
    "--queries", "5",
]  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """6 sequences × 180 patches (train 3, validation 1 of them held out, test 2): enough classes for 128×8 and 512×2."""
    from tripletkit_hpatches.data import write_nhpatches_sequence
    from tripletkit_hpatches.descriptors import IMAGE_TYPES
    from tripletkit_hpatches.noise import noise_sequence

    root = tmp_path_factory.mktemp("small_nh")
    rng = np.random.default_rng(0)
    names = ("i_a", "i_b", "v_c", "v_d", "i_e", "v_f")
    for s in names:
        base = np.kron(rng.integers(0, 256, (180, 8, 8)), np.ones((4, 4))).astype(float)
        clean = {t: np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8) for t in IMAGE_TYPES}
        write_nhpatches_sequence(root, s, clean, noise_sequence(clean, s))
    split = {"default": {"train": ["i_a", "v_c", "i_e", "v_f"], "test": ["i_b", "v_d"]}}
    (root / "splits.json").write_text(json.dumps(split))
    return root


def _study(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STUDY), *args], capture_output=True, text=True, cwd=ROOT, timeout=900)


def test_study_part_selection_table_and_resume(small, tmp_path):
    out = tmp_path / "study"
    args = ["--data", str(small), "--out", str(out), "--seeds", "0", "--jobs", "2", *SMALL]
    r = _study([*args, "--rows", "augment-pair", "remedy-none"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = out / "runs"
    done = sorted(p.parent.name for p in runs.glob("*/done.json"))
    # the augmentation row needs the selection, which needs every batch-hard preset, which needs the baseline
    assert done == sorted(
        ["baseline-s0", "bh128-s0", "bh1024-s0", "soft-bh1024-s0", "hardnet-s0", "augment-pair-s0", "remedy-none-s0"]
    )

    # the selection, restated: the batch-hard preset whose selected evaluation (the last one that beat the best
    # so far by more than --plateau-delta, 0.002 by default) has the best validation matching mAP
    def selected(run):
        best = None
        for v in pd.read_csv(runs / run / "map_log.csv")["matching_map"]:
            best = v if best is None or v > best + 0.002 else best
        return best

    best_val = {p: selected(f"{p}-s0") for p in ("bh128", "bh1024", "soft-bh1024", "hardnet")}
    chosen = max(best_val, key=best_val.__getitem__)
    config = json.loads((runs / "augment-pair-s0" / "config.json").read_text())
    assert config["experiment"] == chosen and config["augment"] == "pair"
    # BH128 starts from the same seed's baseline, BH1024 from BH128's selected weights, all on the same denoised
    # patches and task files
    bh = json.loads((runs / "bh1024-s0" / "config.json").read_text())
    assert bh["init_descriptor"] == str(runs / "bh128-s0" / "descriptor.pt")
    bh128 = json.loads((runs / "bh128-s0" / "config.json").read_text())
    assert bh128["init_descriptor"] == str(runs / "baseline-s0" / "descriptor.pt")
    assert (runs / "bh1024-s0" / "denoised.npz").stat().st_ino == (out / "denoiser" / "denoised.npz").stat().st_ino
    assert bh["split_sequences"]["val"] and not set(bh["split_sequences"]["val"]) & set(bh["split_sequences"]["train"])
    # the table's numbers are the runs' own results
    table = json.loads((out / "study.json").read_text())["table"]
    ours = json.loads((runs / "baseline-s0" / "results.json").read_text())
    assert table["baseline"]["matching"]["mean"] == ours["ours (L2-Net)"]["matching"]
    assert table["raw pixels"]["retrieval"]["mean"] == ours["raw pixels"]["retrieval"]
    text = (out / "study.md").read_text()
    assert "| batch hard 1024 |" in text and "| SIFT |" in text and "Remedies" in text
    target = next(t for t in json.loads((out / "study.json").read_text())["targets"] if "raw pixels" in t["target"])
    for t in ("verification", "matching", "retrieval"):
        gain = ours["ours (L2-Net)"][t] - ours["raw pixels"][t]  # one seed: the mean is the run's own number
        assert target["numbers"][t] == pytest.approx(gain)
    for name in ("study.png", "study_curves.png", "study_remedies.png"):
        assert (out / name).stat().st_size > 0
    # a second invocation trusts the finished runs and starts none
    again = _study([*args, "--rows", "augment-pair", "remedy-none"])
    assert again.returncode == 0 and "[study] start" not in again.stdout

    # a larger budget for the batch-hard rows: the same command continues them (train.py --resume), nothing else
    def trained(row):
        from tripletkit.training import load_checkpoint

        return load_checkpoint(runs / row / "checkpoint.pt")["extra"]

    before = trained("bh128-s0")
    log_before = (runs / "bh128-s0" / "log.csv").read_text()
    longer = [*args[: args.index("--bh-epochs")], "--bh-epochs", "0.12", *args[args.index("--bh-epochs") + 2 :]]
    more = _study([*longer, "--rows", "bh128"])
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "[study] start bh128-s0" in more.stdout and "start baseline-s0" not in more.stdout
    after = trained("bh128-s0")
    record = json.loads((runs / "bh128-s0" / "done.json").read_text())
    assert record["flags"][record["flags"].index("--epochs") + 1] == "0.12"
    # it had stopped at its cap, not on a plateau, so it continued from its checkpoint: the old log is the new head
    assert not before.get("plateaued") and not after.get("plateaued")
    assert after["step"] > before["step"] and after["seen"] >= int(0.12 * after["train_patches"]) > before["seen"]
    assert (runs / "bh128-s0" / "log.csv").read_text().startswith(log_before)
    # a baseline that would train further under rows that already started from it is refused, before anything runs
    # (a larger budget and a longer patience: whether it stopped at its cap or on its plateau, it would go on)
    base = [*longer[: longer.index("--baseline-epochs")], "--baseline-epochs", "0.2"]
    base += longer[longer.index("--baseline-epochs") + 2 :]
    base = [*base[: base.index("--plateau")], "--plateau", "50", *base[base.index("--plateau") + 2 :]]
    refused = _study([*base, "--rows", "bh128"])
    assert refused.returncode != 0
    assert "baseline-s0 would train further under the new flags, but bh128-s0 already trained" in refused.stderr
    # a changed stopping rule that the start had met anyway (bh128-s0 stopped at its cap) only evaluates it again:
    # not refused, and its weights are the ones bh1024 started from
    weights = (runs / "bh128-s0" / "descriptor.pt").read_bytes()
    floor = _study([*longer, "--plateau-steps", "7", "--rows", "bh1024"])
    assert floor.returncode == 0, floor.stdout[-3000:] + floor.stderr[-3000:]
    assert "[study] start bh128-s0" in floor.stdout and (runs / "bh128-s0" / "descriptor.pt").read_bytes() == weights
    assert trained("bh128-s0")["step"] == after["step"]


def test_the_1024_rows_have_their_own_cap(tmp_path):
    """--bh-epochs caps BH128, --bh1024-epochs every batch-hard row whose last stage is batch 1024 (an augmentation
    row by the preset it repeats); the baselines and the remedy runs keep theirs."""
    from tripletkit_hpatches import study

    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--bh-epochs", "3", "--bh1024-epochs", "5",
            "--baseline-epochs", "2", "--remedy-epochs", "0.25"]  # fmt: skip
    cfg = study.resolve(study.build_parser().parse_args(argv))

    def caps(augment_from):
        runs = study.plan(cfg, tmp_path, augment_from)
        return {r.name: r.flags[r.flags.index("--epochs") + 1] for r in runs}

    got = caps("soft-bh1024")
    want = {"baseline": "2", "soft-baseline": "2", "bh128": "3", "bh1024": "5", "soft-bh1024": "5", "hardnet": "5"}
    want |= {"augment-random": "5", "augment-pair": "5", "remedy-none": "0.25"}
    for row, cap in want.items():
        assert float(got[f"{row}-s0"]) == float(cap), row
    assert float(caps("bh128")["augment-pair-s1"]) == 3.0  # augmentation of BH128 keeps BH128's cap
    # the cap follows the stages train.py will run: a --stages-sk given through --stepping, ending at 128 for every row
    cfg = study.resolve(study.build_parser().parse_args([*argv, "--stepping", "--stages-sk 32x2,64x2"]))
    assert float(caps("soft-bh1024")["bh1024-s0"]) == 3.0
    # the protocol's defaults (docs/study.md): 7 epochs for the 1024 rows, at which every run of the table stopped
    # on its plateau, and 3 for BH128
    cfg = study.resolve(study.build_parser().parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "o")]))
    got = caps("soft-bh1024")
    assert float(got["bh1024-s1"]) == 7.0 and float(got["bh128-s1"]) == 3.0
    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(SystemExit, match="--bh1024-epochs must be a finite number > 0"):
            study.resolve(study.build_parser().parse_args(["--data", str(tmp_path), "--bh1024-epochs", bad]))


def test_study_refuses_a_protocol_without_validation(small, tmp_path):
    r = _study(["--data", str(small), "--out", str(tmp_path / "s"), "--val-sequences", "0"])
    assert r.returncode != 0 and "validation" in r.stderr


def test_study_baseline_margin_reaches_the_hinge_baseline_only(small, tmp_path):
    from tripletkit_hpatches import study

    def plan(*extra):
        ns = study.build_parser().parse_args(["--data", str(small), "--out", str(tmp_path / "s"), *extra])
        return {r.name: r for r in study.plan(study.resolve(ns), small, augment_from="bh128")}

    default, changed = plan(), plan("--baseline-margin", "0.1")
    # no flag by default: the runs of an earlier study keep matching their done.json
    assert all("--margin" not in r.flags for r in default.values())
    flags = list(changed["baseline-s1"].flags)
    assert flags[flags.index("--margin") + 1] == "0.1" and flags[:-2] == list(default["baseline-s1"].flags)
    # the soft baseline and the batch-hard rows keep their own flags; the latter start from the new baseline
    for name in ("soft-baseline-s0", "bh128-s0", "bh1024-s1", "augment-pair-s0", "remedy-none-s0"):
        assert changed[name].flags == default[name].flags
    assert changed["bh128-s1"].after == ("baseline-s1",) and changed["bh1024-s1"].after == ("bh128-s1",)
    assert changed["soft-bh1024-s0"].after == ("bh128-s0",) and changed["hardnet-s0"].after == ("baseline-s0",)
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit, match="--baseline-margin must be a finite number > 0"):
            plan("--baseline-margin", bad)


def test_stage_losses_equal_a_brute_force_batch_hard():
    import torch

    from tripletkit.samplers import SymmetricSampler
    from tripletkit_hpatches.stage_losses import stage_losses

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8))
    model = lambda x: torch.nn.functional.normalize(net(x), dim=1)  # noqa: E731
    model.train = lambda: None  # no dropout: train mode changes nothing here
    x = torch.randn(60 * 4, 1, 4, 4)
    labels = np.repeat(np.arange(60), 4)
    rows = stage_losses(model, x, labels, [(8, 2), (10, 4)], batches=3)
    for row, (S, K) in zip(rows, [(8, 2), (10, 4)]):
        hinge, soft = [], []
        for i, idx in enumerate(SymmetricSampler(labels, S, K, seed=0)):
            if i == 3:
                break
            e = model(x[idx]).detach().double().numpy()
            y = labels[idx]
            d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
            same = y[:, None] == y[None]
            gap = np.array(
                [d[a][same[a] & (np.arange(len(y)) != a)].max() - d[a][~same[a]].min() for a in range(len(y))]
            )
            hinge.append(np.maximum(gap + 1.0, 0).mean())
            soft.append(np.log1p(np.exp(gap)).mean())
        assert row["batch"] == S * K
        assert row["hinge_mean"] == pytest.approx(np.mean(hinge), abs=1e-5)
        assert row["softplus_mean"] == pytest.approx(np.mean(soft), abs=1e-5)
        assert row["hinge_threshold"] == 1.0 and row["softplus_threshold"] == pytest.approx(np.log(2))


def test_pair_stats_against_a_loop():
    from tripletkit_hpatches.descriptor_stats import pair_stats

    rng = np.random.default_rng(1)
    ref, tgt = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    seq = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    b = tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
    pos, same, other, hits, active = [], [], [], 0, {1.0: 0, 0.1: 0}
    for i in range(9):
        dists = [float(np.linalg.norm(a[i] - b[j])) for j in range(9)]
        hits += int(np.argmin(dists) == i)
        for j in range(9):
            (pos if i == j else same if seq[i] == seq[j] else other).append(dists[j])
            for m in active:
                active[m] += int(j != i and m + dists[i] - dists[j] > 0)
    got = pair_stats(ref, tgt, seq, (1.0, 0.1))
    assert got["active_1"] == active[1.0] / 72 and got["active_0.1"] == active[0.1] / 72
    assert 0 < active[0.1] < active[1.0] < 72  # the two margins differ, so a swapped or ignored margin shows
    assert got["positive"] == pytest.approx(np.mean(pos))
    assert got["negative_same_sequence"] == pytest.approx(np.mean(same))
    assert got["negative_other_sequence"] == pytest.approx(np.mean(other))
    assert got["nearest_is_match"] == hits / 9


def _matching_ap_loop(ref: np.ndarray, tgt: np.ndarray) -> float:
    """HPatches matching AP written out: each reference patch takes its nearest target (first on ties), the N
    matches are ranked by distance (stable), AP with numpos = N and the benchmark's two-sided precision."""
    n = len(ref)
    nn, dist = [], []
    for i in range(n):
        d = [float(np.linalg.norm(ref[i] - tgt[j])) for j in range(n)]
        nn.append(int(np.argmin(d)))
        dist.append(min(d))
    order = sorted(range(n), key=lambda i: dist[i])
    total, hits = 0.0, 0
    for rank, i in enumerate(order, start=1):
        if nn[i] == i:
            hits += 1
            before = 1.0 if rank == 1 else (hits - 1) / (rank - 1)  # precision just before: 1 at the top
            total += (before + hits / rank) / 2
    return total / n


def test_descriptor_stats_gives_each_descriptor_the_validation_curves_matching_map(tmp_path, capsys):
    from tripletkit_hpatches.baselines import raw_pixel_descriptors
    from tripletkit_hpatches.descriptor_stats import main
    from tripletkit_hpatches.descriptors import IMAGE_TYPES

    rng = np.random.default_rng(3)
    seqs = {"i_x": 9, "v_y": 7}
    den = {s: np.clip(rng.normal(128, 6, (1, n, 32, 32)) + rng.normal(0, 30, (16, n, 32, 32)), 0, 255)
           for s, n in seqs.items()}  # fmt: skip
    np.savez(tmp_path / "denoised.npz", **{s: v.astype(np.float32) for s, v in den.items()})
    split = {"train": ["i_t"], "val": list(seqs), "test": ["v_z"]}
    (tmp_path / "config.json").write_text(json.dumps({"split_sequences": split, "val_patches": 6}))
    rows = main(["--run", str(tmp_path), "--descriptor", "--patches", "5", "--threads", "1"])
    raw = next(r for r in rows if r["descriptor"] == "raw pixels")
    # the curve's set: the first val_patches (6) of each validation sequence, ref against each of the 15 images
    aps = []
    for s in seqs:
        d = raw_pixel_descriptors(den[s][:, :6].reshape(-1, 32, 32)).reshape(16, 6, -1)
        aps += [_matching_ap_loop(d[0], d[k]) for k in range(1, len(IMAGE_TYPES))]
    assert 0.05 < np.mean(aps) < 0.95  # neither trivial nor hopeless, so a wrong set or image would show
    assert raw["validation_matching"] == pytest.approx(np.mean(aps), abs=1e-9)
    assert {r["descriptor"] for r in rows} == {"raw pixels", "SIFT"}
    assert "validation_matching" in capsys.readouterr().out


def test_descriptor_stats_names_a_missing_file(tmp_path):
    from tripletkit_hpatches.descriptor_stats import main

    with pytest.raises(SystemExit, match="config.json does not exist"):
        main(["--run", str(tmp_path)])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "denoised.npz").write_bytes(b"")
    with pytest.raises(SystemExit, match="nope.pt does not exist"):
        main(["--run", str(tmp_path), "--descriptor", str(tmp_path / "nope.pt")])


def _fake_run(folder: Path, maps: list[float], margin: float, seed: int) -> None:
    """A finished baseline run's files, written by hand: what the report reads, with known numbers."""
    folder.mkdir(parents=True)
    config = {"experiment": "baseline", "margin_fn": "hinge", "margin": margin, "plateau": 4, "plateau_delta": 0.002}
    (folder / "config.json").write_text(json.dumps(config | {"stages_sk": "25x2"}))
    steps = [100 * (i + 1) for i in range(len(maps))]
    (folder / "map_log.csv").write_text(
        "step,matching_map,stage,batch\n" + "".join(f"{s},{v},0,50\n" for s, v in zip(steps, maps))
    )
    (folder / "log.csv").write_text(
        "step,loss,stage,batch,lr\n" + "".join(f"{s},0.5,0,50,0.1\n" for s in range(1, steps[-1] + 1))
    )
    tasks = {"verification": 0.6 + seed / 100, "matching": 0.08, "retrieval": 0.3}
    ref = {"verification": 0.5, "matching": 0.1, "retrieval": 0.4}
    results = {"ours (L2-Net)": tasks, "SIFT": ref, "raw pixels": ref}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "done.json").write_text(json.dumps({"command": [], "flags": []}))


def test_report_takes_the_evaluation_train_py_selected_and_names_a_changed_margin(tmp_path):
    from tripletkit_hpatches.study_report import selected_evaluation, write_report

    # 0.101 and 0.1065 beat the best so far by less than the delta (0.002): the weights tested are 0.105's, at step
    # 300, though the maximum is 0.1065 at step 400
    maps = [0.100, 0.101, 0.105, 0.1065, 0.104]
    _fake_run(tmp_path / "runs" / "baseline-s0", maps, 1.0, 0)
    _fake_run(tmp_path / "runs" / "baseline-s1", [0.090, 0.093], 1.0, 1)
    assert selected_evaluation(tmp_path / "runs" / "baseline-s0") == (300, pytest.approx(0.105))
    text = write_report(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| baseline"))
    # the preset's margin is 0.1: these runs trained at the study's 1, and the row says so
    assert row.startswith("| baseline (margin 1) | 0, 1 |")
    # validation: 0.105 (seed 0) and 0.093 (seed 1), mean 0.099, range 0.012
    assert "| 0.0990 ± 0.0120 |" in row
    table = json.loads((tmp_path / "study.json").read_text())["table"]["baseline"]
    assert table["verification"]["values"] == [0.6, 0.61]
    # the targets' numbers, to 4 decimals: verification 0.605 − 0.5 (SIFT and raw pixels are both 0.5 here)
    assert '"verification": 0.105, "matching": -0.02, "retrieval": -0.1}' in text

    # the preset's own margin needs no label; a row mixing margins is refused, not averaged
    other = tmp_path / "other"
    _fake_run(other / "runs" / "baseline-s0", maps, 0.1, 0)
    assert "| baseline | 0 |" in write_report(other)
    _fake_run(other / "runs" / "baseline-s1", maps, 1.0, 1)
    with pytest.raises(ValueError, match="differ in their margin"):
        write_report(other)


def test_report_names_a_soft_margin_temperature_other_than_the_presets(tmp_path):
    from tripletkit_hpatches.study_report import write_report

    for seed, temperature in ((0, 1.0), (1, 1.0)):
        folder = tmp_path / "runs" / f"soft-baseline-s{seed}"
        _fake_run(folder, [0.05, 0.06], 0.0, seed)
        config = json.loads((folder / "config.json").read_text())
        config |= {"experiment": "soft-baseline", "margin_fn": "softplus", "margin_temperature": temperature}
        (folder / "config.json").write_text(json.dumps(config))
    # the preset's τ is 0.1: runs at τ = 1 (or from before the flag, which trained at 1) are labelled
    assert "| soft baseline (temperature 1) | 0, 1 |" in write_report(tmp_path)
    config.pop("margin_temperature")
    (folder / "config.json").write_text(json.dumps(config))
    assert "| soft baseline (temperature 1) | 0, 1 |" in write_report(tmp_path)
    (folder / "config.json").write_text(json.dumps(config | {"margin_temperature": 0.1}))
    with pytest.raises(ValueError, match="differ in their margin"):
        write_report(tmp_path)


def test_selected_evaluation_refuses_a_run_without_one(tmp_path):
    from tripletkit_hpatches.study_report import selected_evaluation

    _fake_run(tmp_path / "a", [0.1], 0.1, 0)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps(config | {"plateau": 0}))
    with pytest.raises(ValueError, match="without a plateau rule"):
        selected_evaluation(tmp_path / "a")
    _fake_run(tmp_path / "b", [0.1], 0.1, 0)
    (tmp_path / "b" / "map_log.csv").write_text("step,matching_map,stage,batch\n")
    with pytest.raises(ValueError, match="has no evaluation"):
        selected_evaluation(tmp_path / "b")
