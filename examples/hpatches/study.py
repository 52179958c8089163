"""The study reproduced on real sequences: one command from the image sequences to the table (docs/study.md).

    python examples/hpatches/study.py --out runs/study                  # every part, resumable
    python examples/hpatches/study.py --out runs/study --seeds 0        # one part: seed 0's runs
    python examples/hpatches/study.py --out runs/study --report         # the table from the runs that finished

The protocol:

1. **Data.** The real sequences (``--sequences``, default ``../shared/data/sequences``) are extracted with the
   HPatches protocol and noised with our model, once (or ``--data`` names a prepared folder). Its split gives the
   test sequences, read once, for the table. ``--val-sequences`` of the training sequences are held out for
   validation (`stages.data.hold_out`: the same ones for every seed and preset).
2. **One denoiser** (the deep U-Net) is trained on the training sequences and shared by every row, so the rows
   differ only in the descriptor's training. One set of task files is written for the test sequences and shared too.
3. **Baselines** (random triplets, SGD 0.1; hinge margin 0.1 and soft margin) train until validation matching mAP
   reaches a plateau (``--plateau`` evaluations without a gain of ``--plateau-delta``), capped at ``--baseline-epochs``.
   The weights of the best validation evaluation are kept (the last one that beat the best before it by
   ``--plateau-delta``).
4. **Batch hard** steps through the study's stages with the presets' stepping rule; it stops at a validation plateau
   reached at its last stage (``--plateau`` evaluations and at least ``--plateau-steps`` steps without a gain: the
   evaluations come every ``--eval-patches`` patches, so at batch 1024 four of them are only 117 steps), capped at
   ``--bh-epochs`` for BH128 and ``--bh1024-epochs`` for the rows whose last stage is batch 1024 (an epoch is 8 times
   fewer steps there). BH128 and HardNet's loss start from the same seed's
   converged baseline; BH1024 and soft BH1024 grow the batch once BH128 has converged, from its selected weights
   (``config.INIT_FROM``).
5. **Augmentation**: the batch-hard preset with the best mean validation mAP is trained again with
   ``--augment random`` and ``pair`` (its own run is the ``none`` row). Chosen by validation, never by the test.
6. **The table** (``OUT/study.md``, ``.json``, figures): mean ± spread over the seeds on the test sequences, and the
   issue's targets checked on it.

Each run is ``train.py`` in its own folder (``OUT/runs/<preset>-s<seed>``), with ``--resume``: a killed study
continues where it stopped; a run counts as done only once its ``done.json`` (written last) exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tripletkit.training import atomic_write_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRAIN = HERE / "train.py"
BH_PRESETS = ("bh128", "bh1024", "soft-bh1024", "hardnet")
BASELINES = ("baseline", "soft-baseline")
# The remedy runs (docs/study.md, "Making the batches grow"): bh1024 from the baseline under the study's strict rule
# (threshold = the collapse value), each remedy, and the presets' rule (1.2 × the collapse value, a 0.1 band);
# descriptor only, a fixed patch budget, no selection.
STRICT = "--threshold-factor 1 --hysteresis 0"
WARM_LR = "--stage-lr-start 0.1 --stage-lr-warmup 100 --lr-below 2"
REMEDIES = {
    "none": STRICT,
    "hysteresis": "--threshold-factor 1 --hysteresis 0.15",
    "hysteresis-warm-lr": f"--threshold-factor 1 --hysteresis 0.15 {WARM_LR}",
    "preset": "",
    "preset-warm-lr": WARM_LR,
}
ROWS = (
    "baseline",
    "soft-baseline",
    "bh128",
    "bh1024",
    "soft-bh1024",
    "hardnet",
    "augment-random",
    "augment-pair",
    *(f"remedy-{name}" for name in REMEDIES),
)
SHARED_DENOISER = ("denoised.npz", "denoiser.pt", "denoise_log.csv")

__all__ = ["StudyConfig", "Run", "plan", "build_parser", "resolve", "main"]


@dataclass(frozen=True)
class StudyConfig:
    out: Path
    sequences: Path
    data: Path | None
    seeds: tuple[int, ...]
    jobs: int
    threads: int
    val_sequences: int
    val_patches: int
    denoise_steps: int
    baseline_epochs: float
    baseline_margin: float | None  # None: the preset's (0.1), no flag
    bh_epochs: float
    bh1024_epochs: float  # the cap of the batch-hard rows whose last stage is batch 1024
    remedy_epochs: float
    eval_patches: int
    plateau: int
    plateau_delta: float
    plateau_steps: int  # the batch-hard runs' (train.py --plateau-steps)
    stepping: tuple[str, ...]
    augment: bool
    rows: tuple[str, ...]
    verification_pairs: int
    queries: int
    report: bool


@dataclass(frozen=True)
class Run:
    """One ``train.py`` run of the study: its row, seed, flags and the run it starts from."""

    row: str
    seed: int
    flags: tuple[str, ...]
    after: tuple[str, ...] = ()  # runs that must be done first (the run it starts from, the selection)

    @property
    def name(self) -> str:
        return f"{self.row}-s{self.seed}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="study.py", description="The study reproduced on real sequences (resumable).")
    p.add_argument("--out", type=Path, default=Path("runs/study"))
    p.add_argument("--sequences", type=Path, default=REPO.parent / "shared" / "data" / "sequences")
    p.add_argument("--data", type=Path, help="a prepared hpatches-release or N-HPatches folder instead of --sequences")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each gets cores / jobs threads)")
    p.add_argument("--val-sequences", type=int, default=3)
    p.add_argument("--val-patches", type=int, default=500)
    p.add_argument("--denoise-steps", type=int, default=300)
    p.add_argument("--baseline-epochs", type=float, default=2.0, help="the baselines' cap if no plateau comes first")
    p.add_argument(
        "--baseline-margin",
        type=float,
        default=None,
        help="hinge margin of the random-triplet baseline row (default: the preset's 0.1, chosen on validation for "
        "the L2-normalised descriptor; 1 is the study's, see docs/study.md); the batch-hard rows start from that "
        "baseline",
    )
    p.add_argument(
        "--bh-epochs",
        type=float,
        default=3.0,
        help="the batch-hard runs' cap (BH1024 needed about 840,000 patches, 2.85 epochs, to its plateau; "
        "BH128 was still rising at 1.5, see docs/study.md)",
    )
    p.add_argument(
        "--bh1024-epochs",
        type=float,
        default=7.0,
        help="the cap of the batch-hard rows whose last stage is batch 1024 (BH1024, soft BH1024, HardNet's loss "
        "and the augmentation rows that repeat one of them): an epoch is 8x fewer steps at 1024 than at BH128's "
        "128; at 3 and 5 epochs BH1024 seed 0 and both HardNet runs ended at the cap, at 7 every run stops on its "
        "plateau (docs/study.md)",
    )
    p.add_argument("--remedy-epochs", type=float, default=0.25, help="the remedy runs' fixed length")
    p.add_argument(
        "--eval-patches",
        type=int,
        default=30_000,
        help="validate every time this many more training patches have been used (every run, every stage)",
    )
    p.add_argument("--plateau", type=int, default=4)
    p.add_argument("--plateau-delta", type=float, default=0.002)
    p.add_argument(
        "--plateau-steps",
        type=int,
        default=232,
        help="the batch-hard runs' plateau also needs this many steps without a gain (default 232: 8 evaluations at "
        "batch 1024, the patience chosen on validation; 4 evaluations are 936 steps at batch 128, see docs/study.md)",
    )
    p.add_argument(
        "--stepping",
        default="",
        help="extra train.py flags for every batch-hard run (default none: the presets carry the recommended rule)",
    )
    p.add_argument("--no-augment", action="store_true", help="skip the two augmentation runs")
    p.add_argument(
        "--rows",
        nargs="+",
        choices=ROWS,
        default=list(ROWS),
        help="run only these rows (a part of the study; a batch-hard row also runs the rows it starts from)",
    )
    p.add_argument("--verification-pairs", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--report", action="store_true", help="only write the table from the runs that are done")
    return p


def resolve(ns: argparse.Namespace) -> StudyConfig:
    if ns.jobs < 1:
        raise SystemExit(f"error: --jobs must be >= 1, got {ns.jobs}")
    if ns.data is None and not ns.sequences.is_dir():
        raise SystemExit(f"error: --sequences {ns.sequences} is not a folder (give --sequences or --data)")
    if ns.val_sequences < 1 or ns.plateau < 1:
        raise SystemExit("error: the protocol selects on validation: --val-sequences and --plateau must be >= 1")
    for name in ("baseline_epochs", "bh_epochs", "bh1024_epochs", "remedy_epochs"):
        value = getattr(ns, name)
        if not 0 < value < math.inf:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be a finite number > 0, got {value}")
    if ns.plateau_steps < 0:
        raise SystemExit(f"error: --plateau-steps must be >= 0, got {ns.plateau_steps}")
    if ns.baseline_margin is not None and not 0 < ns.baseline_margin < math.inf:
        raise SystemExit(f"error: --baseline-margin must be a finite number > 0, got {ns.baseline_margin}")
    threads = max(1, (os.cpu_count() or 1) // ns.jobs)
    return StudyConfig(
        out=ns.out,
        sequences=ns.sequences,
        data=ns.data,
        seeds=tuple(dict.fromkeys(ns.seeds)),
        jobs=ns.jobs,
        threads=threads,
        val_sequences=ns.val_sequences,
        val_patches=ns.val_patches,
        denoise_steps=ns.denoise_steps,
        baseline_epochs=ns.baseline_epochs,
        baseline_margin=ns.baseline_margin,
        bh_epochs=ns.bh_epochs,
        bh1024_epochs=ns.bh1024_epochs,
        remedy_epochs=ns.remedy_epochs,
        eval_patches=ns.eval_patches,
        plateau=ns.plateau,
        plateau_delta=ns.plateau_delta,
        plateau_steps=ns.plateau_steps,
        stepping=tuple(ns.stepping.split()),
        augment=not ns.no_augment,
        rows=tuple(ns.rows),
        verification_pairs=ns.verification_pairs,
        queries=ns.queries,
        report=ns.report,
    )


# ---------------------------------------------------------------------------------------------------- the plan
def _common(cfg: StudyConfig, data: Path) -> tuple[str, ...]:
    return (
        "--data", str(data),
        "--tasks", str(cfg.out / "tasks"),
        "--split", "default",
        "--val-sequences", str(cfg.val_sequences),
        "--val-patches", str(cfg.val_patches),
        "--denoiser", "deep",
        "--stages", "descriptor,evaluate",
        "--plateau", str(cfg.plateau),
        "--plateau-delta", str(cfg.plateau_delta),
        "--verification-pairs", str(cfg.verification_pairs),
        "--queries", str(cfg.queries),
        "--threads", str(cfg.threads),
    )  # fmt: skip


def plan(cfg: StudyConfig, data: Path, augment_from: str | None = None) -> list[Run]:
    """Every run of the study, in an order that respects ``after``. ``augment_from``: the batch-hard preset the
    augmentation rows repeat (chosen on validation once the batch-hard runs are done)."""
    from tripletkit_hpatches.config import INIT_FROM  # the run each batch-hard row starts from

    runs = []
    common = _common(cfg, data)

    def baseline(row: str, seed: int) -> Run:
        # the margin applies to the hinge baseline only: the soft baseline has no margin to set
        margin = ("--margin", str(cfg.baseline_margin)) if row == "baseline" and cfg.baseline_margin is not None else ()
        return Run(
            row,
            seed,
            (*common, "--seed", str(seed), "--experiment", row, "--epochs", str(cfg.baseline_epochs),
             "--eval-every-patches", str(cfg.eval_patches), *margin),
        )  # fmt: skip

    # the baselines train at one batch of 50, where --plateau evaluations are thousands of steps: no floor to add
    steps = ("--plateau-steps", str(cfg.plateau_steps)) if cfg.plateau_steps else ()

    def batch_hard(row: str, seed: int, *extra: str) -> tuple[str, ...]:
        start = cfg.out / "runs" / f"{INIT_FROM[row]}-s{seed}" / "descriptor.pt"
        training = (*cfg.stepping, "--experiment", row, *extra)
        cap = cfg.bh1024_epochs if last_batch(training) >= 1024 else cfg.bh_epochs
        return (*common, *steps, "--seed", str(seed), "--init-descriptor", str(start), "--epochs", str(cap),
                "--eval-every-patches", str(cfg.eval_patches), *training)  # fmt: skip

    # the order runs start in: what the most rows need first, each row's seeds together
    runs += [baseline("baseline", seed) for seed in cfg.seeds]
    for row in BH_PRESETS:  # bh128 first: the 1024 rows start from it
        runs += [Run(row, seed, batch_hard(row, seed), after=(f"{INIT_FROM[row]}-s{seed}",)) for seed in cfg.seeds]
    runs += [baseline("soft-baseline", seed) for seed in cfg.seeds]
    if cfg.augment and augment_from is not None:
        every_bh = tuple(f"{r}-s{x}" for r in BH_PRESETS for x in cfg.seeds)
        for mode in ("random", "pair"):
            runs += [
                Run(f"augment-{mode}", seed, batch_hard(augment_from, seed, "--augment", mode), after=every_bh)
                for seed in cfg.seeds
            ]
    seed = cfg.seeds[0]
    start = cfg.out / "runs" / f"baseline-s{seed}" / "descriptor.pt"
    for name, flags in REMEDIES.items():
        remedy = (
            *common[: common.index("--stages")], "--stages", "descriptor", "--seed", str(seed), "--threads",
            str(cfg.threads), "--experiment", "bh1024", "--init-descriptor", str(start), "--epochs",
            str(cfg.remedy_epochs), "--eval-every", "0", *flags.split(),
        )  # fmt: skip
        runs.append(Run(f"remedy-{name}", seed, remedy, after=(f"baseline-s{seed}",)))
    return runs


def last_batch(flags: tuple[str, ...]) -> int:
    """The batch size (S × K) of the last stage that train.py runs with ``flags`` (the preset's, or a
    ``--stages-sk`` given through ``--stepping``)."""
    from tripletkit_hpatches.config import parse

    s, k = parse(list(flags)).stages_sk[-1]
    return s * k


def _part(cfg: StudyConfig, runs: list[Run]) -> list[Run]:
    """The runs of ``cfg.rows`` and every run they start from."""
    by_name = {r.name: r for r in runs}
    wanted = {r.name for r in runs if r.row in cfg.rows}
    if any(r.startswith("augment") for r in cfg.rows) and not any(r.row.startswith("augment") for r in runs):
        # the augmentation runs exist once their preset is chosen: run what the choice needs first
        wanted |= {r.name for r in runs if r.row in BH_PRESETS}
    grow = list(wanted)
    while grow:
        for a in by_name[grow.pop()].after:
            if a not in wanted:
                wanted.add(a)
                grow.append(a)
    return [r for r in runs if r.name in wanted]


# ---------------------------------------------------------------------------------------------------- running
def _record(cfg: StudyConfig, name: str) -> dict | None:
    """A finished run's ``done.json`` (None if it has none yet: not finished, or never started)."""
    path = cfg.out / "runs" / name / "done.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path} does not read as JSON ({e}); delete it to rerun {name}") from None
    if not isinstance(record, dict) or not isinstance(record.get("command"), list):
        raise SystemExit(f"error: {path} has no command list; delete it to rerun {name}")
    return record


def _recorded_flags(record: dict) -> list[str]:
    # done.json files before "flags" was recorded: the train.py flags are the command between the script and --out
    if "flags" in record:
        return list(record["flags"])
    cmd = record["command"]
    return cmd[2 : cmd.index("--out")] if "--out" in cmd else cmd[2:]


def _done(cfg: StudyConfig, run: Run) -> bool:
    """Finished with the flags the plan asks for now. A run finished under other flags (a larger --bh-epochs, say) is
    not: it runs again with ``--resume``, which continues its checkpoint to the new budget (a run that stopped on its
    plateau stays as it is and is only evaluated again)."""
    record = _record(cfg, run.name)
    return record is not None and _recorded_flags(record) == list(run.flags)


def _would_train(cfg: StudyConfig, run: Run) -> bool:
    """Whether ``run``, finished under other flags, would train further under the plan's (a larger budget, a
    longer patience), or only be evaluated again (a changed stopping rule it had met anyway): train.py's own test."""
    from tripletkit_hpatches.config import parse
    from tripletkit_hpatches.stages.descriptor import descriptor_done

    return not descriptor_done(parse([*run.flags, "--out", str(cfg.out / "runs" / run.name), "--resume"]))


def _check_starts(cfg: StudyConfig, runs: list[Run]) -> None:
    """A run whose start (an ``after`` run) would train further, while the run itself already trained from that
    start, would continue from weights that no longer match its start: refused, with the way out."""
    for run in runs:
        if (cfg.out / "runs" / run.name / "checkpoint.pt").exists():
            for name, start in ((a, next((r for r in runs if r.name == a), None)) for a in run.after):
                if (
                    start is not None
                    and _record(cfg, name) is not None
                    and not _done(cfg, start)
                    and _would_train(cfg, start)
                ):
                    raise SystemExit(
                        f"error: {name} would train further under the new flags, but {run.name} already trained "
                        f"from its weights; use a new --out (or keep {name}'s budget)"
                    )


def _execute(cfg: StudyConfig, run: Run) -> Run:
    folder = cfg.out / "runs" / run.name
    folder.mkdir(parents=True, exist_ok=True)
    for file in SHARED_DENOISER:  # one denoiser for every row: hard links, not copies of a large file
        target, source = folder / file, cfg.out / "denoiser" / file
        if not target.exists():
            os.link(source, target)
    cmd = [sys.executable, str(TRAIN), *run.flags, "--out", str(folder), "--resume", "--quiet"]
    t0 = time.perf_counter()
    with (folder / "train.log").open("a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if rc != 0:
        raise RuntimeError(f"{run.name} failed (exit {rc}); see {folder / 'train.log'}")
    atomic_write_text(
        folder / "done.json",
        json.dumps(
            {"command": cmd, "flags": list(run.flags), "seconds_this_invocation": round(time.perf_counter() - t0, 1)},
            indent=1,
        ),
    )
    return run


def run_all(cfg: StudyConfig, runs_for) -> None:
    """Run what is not done, ``cfg.jobs`` at a time, each once its ``after`` runs are done. ``runs_for()`` is asked
    again after every finished run (the augmentation runs appear once the selection can be made)."""
    running: dict[Future, Run] = {}
    with ThreadPoolExecutor(cfg.jobs) as pool:
        while True:
            busy = {r.name for r in running.values()}
            planned = runs_for()
            _check_starts(cfg, planned)
            done = {r.name for r in planned if _done(cfg, r)}
            todo = [r for r in planned if r.name not in done and r.name not in busy]
            ready = [r for r in todo if all(a in done for a in r.after)]
            for r in ready[: cfg.jobs - len(running)]:
                print(f"[study] start {r.name}", flush=True)
                running[pool.submit(_execute, cfg, r)] = r
            if not running:
                if todo:
                    raise SystemExit(f"error: runs waiting on runs that cannot start: {[r.name for r in todo]}")
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                r = running.pop(fut)
                fut.result()  # a failed run stops the study (the others finish their current run first)
                print(f"[study] done {r.name}", flush=True)


# ---------------------------------------------------------------------------------------------------- stages
def data_path(cfg: StudyConfig) -> Path:
    """Where the dataset the study trains on is (``--data``, or the one `prepare_data` makes)."""
    return cfg.data if cfg.data is not None else cfg.out / "data" / "noisy"


def prepare_data(cfg: StudyConfig) -> Path:
    """The noised dataset the study trains on (extracted and noised once into ``OUT/data``), or ``--data``."""
    if cfg.data is not None:
        return cfg.data
    from tripletkit_hpatches.prepare import noise_dataset
    from tripletkit_hpatches.stages.data import extract_sequences

    extracted = extract_sequences(cfg.sequences, cfg.out / "data", seed=0, progress=True)
    noisy = data_path(cfg)
    if not (noisy / "dataset.json").exists():  # written last by noise_dataset
        noise_dataset(extracted, noisy, seed=0, strength=1.0)
    return noisy


def prepare_denoiser_and_tasks(cfg: StudyConfig, data: Path) -> None:
    """The shared denoiser (``OUT/denoiser``) and the shared task files of the test sequences (``OUT/tasks``)."""
    den = cfg.out / "denoiser"
    if not (den / "done.json").exists():
        cmd = [
            sys.executable, str(TRAIN), "--data", str(data), "--out", str(den), "--stages", "denoise",
            "--denoiser", "deep", "--denoise-steps", str(cfg.denoise_steps), "--val-sequences",
            str(cfg.val_sequences), "--threads", str(os.cpu_count() or 1), "--resume",
        ]  # fmt: skip
        print("[study] " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
        atomic_write_text(den / "done.json", json.dumps({"command": cmd}, indent=1))
    import numpy as np

    from tripletkit_hpatches.config import parse
    from tripletkit_hpatches.stages.data import load_data
    from tripletkit_hpatches.stages.evaluate import tasks_complete, write_tasks

    if tasks_complete(cfg.out / "tasks"):  # a resumed study: the dataset need not be loaded for them again
        return
    ds, split = load_data(data, 0, False)
    tcfg = parse(
        ["--out", str(cfg.out), "--verification-pairs", str(cfg.verification_pairs), "--queries", str(cfg.queries)]
    )
    # the training list of the task files holds the validation sequences too: each run holds the same ones out
    write_tasks(tcfg, ds, np.load(den / "denoised.npz"), split["test"], sorted(split["train"] + split["val"]))


def select_augment_preset(cfg: StudyConfig, data: Path) -> str | None:
    """The batch-hard preset with the best mean validation matching mAP over the seeds (None until all are done,
    under the flags the plan asks for now)."""
    from tripletkit_hpatches.study_report import best_validation

    bh = [r for r in plan(cfg, data) if r.row in BH_PRESETS]
    if not all(_done(cfg, r) for r in bh):
        return None
    scores = {r: sum(best_validation(cfg.out / "runs" / f"{r}-s{s}") for s in cfg.seeds) for r in BH_PRESETS}
    return max(scores, key=scores.__getitem__)


def main(argv: list[str] | None = None) -> int:
    cfg = resolve(build_parser().parse_args(argv))
    from tripletkit_hpatches.study_report import write_report

    if not cfg.report:
        cfg.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.out / "study_config.json", json.dumps(_as_json(cfg), indent=1))
        t0 = time.perf_counter()
        data = prepare_data(cfg)
        prepare_denoiser_and_tasks(cfg, data)
        run_all(cfg, lambda: _part(cfg, plan(cfg, data, select_augment_preset(cfg, data))))
        print(f"[study] all runs done ({time.perf_counter() - t0:.0f} s this invocation)")
    print(write_report(cfg.out, augment_from=select_augment_preset(cfg, data_path(cfg))))
    return 0


def _as_json(cfg: StudyConfig) -> dict:
    out = dataclasses.asdict(cfg)
    return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()} | {"argv": sys.argv[1:]}


if __name__ == "__main__":
    sys.exit(main())
