"""The pipeline's configuration: every command-line flag, the study's presets as data, and ``resolve``.

Every flag of ``train.py`` is declared in `build_parser()` and read in one place, `resolve()`, which turns the
parsed namespace into a frozen `Config`. Nothing else reads ``argparse`` output; the stages read the config.
Values that depend on the data (the denoiser's steps under ``--denoise-epochs``) are filled in by
`Config.for_data()`, which returns a new object, so ``config.json`` records what the run really used.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "STAGES",
    "PRESETS",
    "INIT_FROM",
    "DEFAULTS",
    "TRAINING_FLAGS",
    "LEGACY_FLAG_VALUES",
    "Config",
    "build_parser",
    "resolve",
    "parse",
]

STAGES = ("denoise", "descriptor", "evaluate")

# The stepped-batch rule that lets the batch grow past 128 on real sequences (docs/study.md, "Making the batches
# grow"): from the baseline, an L2-normalised descriptor's batch-hard loss sits above the collapse value at 32×4
# (1.06-1.12 for α = 1) while validation mAP still rises, and the study's strict rule flaps between 64 and 128.
# Growing under 1.2 × the collapse value, with a 0.1 band before the guard steps back, reaches the larger stages.
STEPPING: dict[str, Any] = dict(threshold_factor=1.2, hysteresis=0.1)

# The study's table (../shared/seed): the baseline is random triplets, hinge margin 1, "default SGD" (Keras: no
# momentum) at 0.1. Our descriptor is L2-normalised (distances at most 2): at margin 1, two thirds of random
# triplets stay active and the baseline never beats raw pixels; margin 0.1, chosen on validation, does on all three
# tasks (docs/study.md, "The fix"), so it is the preset's margin here (--margin 1 gives the study's). Batch hard
# uses Adam 2e-4, stepping the batch 64 → 128 (bh128) or 64 → 128 → 384 → 1024 with K 2 → 8 (bh1024), "starting
# with weights from the baseline model". The batch grows once the smaller batch has converged: bh128 starts from
# the baseline, and the 1024 presets from bh128's selected weights. From the baseline, BH1024 is ahead of BH128 at
# equal steps but behind at equal patches, as a 1024 batch takes 8 times fewer steps; from BH128's weights it gained
# 0.010 on validation where BH128 itself had stopped gaining (docs/study.md). Under --experiment all each preset
# starts from INIT_FROM's run descriptor; run alone, pass --init-descriptor.
PRESETS: dict[str, dict[str, Any]] = {
    "baseline": dict(
        denoiser="shallow",
        miner="random",
        margin_fn="hinge",
        margin=0.1,
        optimizer="sgd",
        lr=0.1,
        momentum=0.0,
        stages_sk="25x2",
        scheduler="none",
    ),
    # the soft margin at τ = 1 keeps ≥ 0.12 of the weight on every triplet of a normalised descriptor and stays under
    # raw pixels; τ = 0.1 was chosen on validation (docs/study.md)
    "soft-baseline": dict(
        denoiser="deep",
        miner="random",
        margin_fn="softplus",
        margin=0.0,
        margin_temperature=0.1,
        optimizer="sgd",
        lr=0.1,
        momentum=0.0,
        stages_sk="25x2",
        scheduler="none",
    ),
    "bh128": dict(
        denoiser="deep",
        miner="batch_hard",
        margin_fn="hinge",
        margin=1.0,
        optimizer="adam",
        lr=2e-4,
        stages_sk="32x2,32x4",
        scheduler="stepped_batch",
        **STEPPING,
    ),
    "bh1024": dict(
        denoiser="deep",
        miner="batch_hard",
        margin_fn="hinge",
        margin=1.0,
        optimizer="adam",
        lr=2e-4,
        stages_sk="32x2,32x4,64x6,128x8",
        scheduler="stepped_batch",
        **STEPPING,
    ),
    "soft-bh1024": dict(
        denoiser="deep",
        miner="batch_hard",
        margin_fn="softplus",
        margin=0.0,
        optimizer="adam",
        lr=2e-4,
        stages_sk="32x2,32x4,64x6,128x8",
        scheduler="stepped_batch",
        **STEPPING,
    ),
    # HardNet's loss (hardest in batch over matching pairs, both directions, margin 1) on the same protocol: K is 2
    # by its definition, so the batch grows through S alone: 64 → 128 → 384 → 1024
    "hardnet": dict(
        denoiser="deep",
        loss="hardnet",
        miner="batch_hard",
        margin_fn="hinge",
        margin=1.0,
        optimizer="adam",
        lr=2e-4,
        stages_sk="32x2,64x2,192x2,512x2",
        scheduler="stepped_batch",
        **STEPPING,
    ),
}
INIT_FROM = {"bh128": "baseline", "bh1024": "bh128", "soft-bh1024": "bh128", "hardnet": "baseline"}

# the flags whose change alters what a resumed run trains: --resume refuses a change unless --allow-changed-flags
# (the length --steps / --epochs may change: that is how a run is extended)
TRAINING_FLAGS = (
    "seed",
    "precision",
    "denoiser",
    "denoise_steps",
    "denoise_batch",
    "denoise_lr",
    "miner",
    "offline_every",
    "margin_fn",
    "margin",
    "margin_temperature",
    "distance",
    "optimizer",
    "lr",
    "momentum",
    "init_descriptor",
    "stages_sk",
    "scheduler",
    "patience",
    "augment",
    "memory",
    "judge_every",
    "split",
    "val_sequences",
    "smoothing",
    "guard_patience",
    "hysteresis",
    "stage_lr_start",
    "stage_lr_warmup",
    "lr_below",
    "stage_lr_factors",
    "loss",
    "threshold_factor",
    "batch_groups",
    "weight_ema",
)
# what a checkpoint written before a training flag existed trained with
LEGACY_FLAG_VALUES: dict[str, Any] = {
    "judge_every": 1,
    "split": None,
    "val_sequences": 0,
    "smoothing": 0.9,
    "guard_patience": None,
    "hysteresis": 0.0,
    "stage_lr_start": 1.0,
    "stage_lr_warmup": 0,
    "lr_below": 1.0,
    "stage_lr_factors": None,
    "loss": "triplet",
    "threshold_factor": 1.0,
    "batch_groups": "none",
    "margin_temperature": 1.0,
    "weight_ema": 0.0,
}

# the values of the preset-able flags when neither the flag nor a preset gives one
DEFAULTS: dict[str, Any] = dict(
    denoiser="shallow",
    loss="triplet",
    threshold_factor=1.0,
    hysteresis=0.0,
    miner="batch_hard",
    margin_fn="hinge",
    margin=None,
    margin_temperature=1.0,
    optimizer="adam",
    lr=2e-4,
    momentum=0.9,
    stages_sk="16x2,16x4,32x4",
    stage_lr_factors=None,
    scheduler="stepped_batch",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="HPatches pipeline: denoise, descriptor, evaluate.")
    p.add_argument("--data", type=Path, help="hpatches-release or N-HPatches folder (default: the embedded default)")
    p.add_argument(
        "--sequences", type=Path, help="image sequences with homographies: extract an hpatches-release dataset first"
    )
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument(
        "--experiment",
        choices=sorted(PRESETS) + ["all"],
        help="a preset of the study's table (flags given explicitly win); all: every preset and one table",
    )
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--allow-changed-flags",
        action="store_true",
        help="with --resume: continue although flags that change training differ from the checkpoint's",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tasks",
        type=Path,
        help="the benchmark's tasks folder (prepare.py download tasks): train and test on its --split and evaluate "
        "with its task files, with published results beside ours",
    )
    p.add_argument(
        "--split", help="the benchmark split with --tasks (a, b or c: they have training sequences; default a)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "xla"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="autocast dtype of the training forward passes",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument(
        "--xla-launch",
        action="store_true",
        help="with --device xla: one process per local XLA device (torch_xla.launch), e.g. on each TPU VM host of a pod",
    )
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("denoiser")
    g.add_argument("--denoiser", default=None, choices=["shallow", "deep", "none"])
    g.add_argument("--denoise-steps", type=int, default=300)
    g.add_argument(
        "--denoise-epochs", type=float, default=None, help="instead of --denoise-steps: passes over the training pairs"
    )
    g.add_argument("--denoise-batch", type=int, default=256)
    g.add_argument("--denoise-lr", type=float, default=1e-3)
    g = p.add_argument_group("descriptor")
    g.add_argument(
        "--loss",
        default=None,
        choices=["triplet", "hardnet"],
        help="triplet: --miner's triplets; hardnet: HardNet's loss on the batch's pairs (every stage K = 2)",
    )
    g.add_argument("--miner", default=None, choices=["random", "batch_hard", "batch_all", "offline"])
    g.add_argument(
        "--offline-every", type=int, default=200, help="offline miner: re-mine the training bank every N steps"
    )
    g.add_argument("--margin-fn", default=None, choices=["hinge", "softplus"])
    g.add_argument("--margin", type=float, default=None)
    g.add_argument(
        "--margin-temperature",
        type=float,
        default=None,
        help="--margin-fn softplus: τ in τ·ln(1 + exp((m + gap)/τ)) (default 1, the plain soft margin); τ < 1 lets "
        "easy triplets of a normalised descriptor drop out (docs/margins.md)",
    )
    g.add_argument("--distance", default="euclidean", choices=["euclidean", "sqeuclidean", "cosine"])
    g.add_argument("--optimizer", default=None, choices=["adam", "sgd"])
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9; the study's baselines: 0)")
    g.add_argument(
        "--init-descriptor",
        type=Path,
        default=None,
        help="start the descriptor from these L2-Net weights (a descriptor.pt)",
    )
    g.add_argument("--stages-sk", default=None, help="S×K per stage, e.g. 32x2,32x4 (one entry: a fixed S×K)")
    g.add_argument("--scheduler", default=None, choices=["none", "stepped_batch"])
    g.add_argument("--patience", type=int, default=50, help="stepped batch: steps under the threshold to advance")
    g.add_argument("--smoothing", type=float, default=0.9, help="stepped batch: EMA factor of the judged loss")
    g.add_argument(
        "--threshold-factor",
        type=float,
        default=None,
        help="stepped batch: the batch may grow under this × the loss's collapse value (1: the study's rule; the "
        "batch-hard presets: 1.2)",
    )
    g.add_argument(
        "--guard-patience",
        type=int,
        default=None,
        help="stepped batch: steps at or above the threshold (plus --hysteresis) after a step up before going back "
        "(default 4 × --patience)",
    )
    g.add_argument(
        "--hysteresis",
        type=float,
        default=None,
        help="stepped batch: the guard goes back only while the smoothed loss is >= threshold + this (default 0; "
        "the batch-hard presets: 0.1)",
    )
    g.add_argument(
        "--stage-lr-start",
        type=float,
        default=1.0,
        help="learning rate at a new stage's start, as a fraction of --lr (ramped back over --stage-lr-warmup steps)",
    )
    g.add_argument("--stage-lr-warmup", type=int, default=0, help="steps of a stage's learning-rate ramp")
    g.add_argument(
        "--lr-below",
        type=float,
        default=1.0,
        help="learning rate × this once the smoothed loss is under the stage threshold in a stage",
    )
    g.add_argument(
        "--stage-lr-factors",
        default=None,
        help="learning rate × these per stage, one per --stages-sk entry, e.g. 1,1,2,4 (default: the preset's, "
        "else all 1; a preset's factors are dropped when --stages-sk is given)",
    )
    g.add_argument("--steps", type=int, default=300, help="descriptor training steps")
    g.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="instead of --steps: train until epochs × (training patches) patches have been used (batches grow with the stages)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=250,
        help="matching mAP every N steps on the validation sequences (else a fixed subset of the test sequences, only drawn) (0: off)",
    )
    g.add_argument(
        "--val-sequences",
        type=int,
        default=0,
        help="hold out this many training sequences for validation (model selection, --plateau, the mAP curve)",
    )
    g.add_argument("--val-patches", type=int, default=500, help="patches per validation sequence in the validation mAP")
    g.add_argument(
        "--plateau",
        type=int,
        default=0,
        help="stop once validation matching mAP (at each --eval-every or --eval-every-patches evaluation) has not improved for N evaluations, at "
        "the last batch stage; descriptor.pt is then the best evaluation's weights (0: off; needs --val-sequences)",
    )
    g.add_argument(
        "--plateau-delta", type=float, default=0.002, help="the smallest mAP gain that counts as an improvement"
    )
    g.add_argument(
        "--plateau-steps",
        type=int,
        default=0,
        help="a --plateau also needs this many steps from the best evaluation to the last (0: off): with evaluations "
        "spaced in patches, --plateau evaluations are 8x fewer steps at batch 1024 than at 128 (docs/study.md)",
    )
    g.add_argument(
        "--eval-every-patches",
        type=int,
        default=0,
        help="instead of --eval-every: evaluate each time this many more training patches have been used (the "
        "same spacing in data whatever the batch size of the stage)",
    )
    g.add_argument("--augment", default="none", choices=["none", "random", "pair"])
    g.add_argument(
        "--batch-groups",
        default="none",
        choices=["none", "sequence"],
        help="sequence: each batch's classes come from one training sequence, so its negatives are from the same "
        "scene, as matching's distractors are (none: from all sequences)",
    )
    g.add_argument(
        "--memory",
        type=int,
        default=0,
        help="cross-batch memory (XBM): mine each batch against the last N training embeddings (0: off)",
    )
    g.add_argument(
        "--weight-ema",
        type=float,
        default=0.0,
        help="evaluate, select and save an exponential moving average of the weights with this decay (0: off, the "
        "raw weights; 0.99 averages about the last 100 steps); the training itself is unchanged",
    )
    g.add_argument("--checkpoint-every", type=int, default=50)
    g.add_argument("--monitor-every", type=int, default=50, help="collapse check on a fixed probe batch (eval mode)")
    g.add_argument(
        "--judge-every",
        type=int,
        default=None,
        help="read the training losses to the host (log, scheduler) every N steps, with one transfer; "
        "a stage change then takes effect up to N-1 steps later (default: 1 on the CPU, 10 on CUDA and XLA)",
    )
    g = p.add_argument_group("evaluation")
    g.add_argument("--verification-pairs", type=int, default=50_000)
    g.add_argument("--queries", type=int, default=1000)
    return p


@dataclass(frozen=True)
class Config:
    """One resolved run configuration (immutable: derive a changed one with `replace()`)."""

    data: Path | None
    sequences: Path | None
    out: Path
    tasks: Path | None
    split: str | None
    stages: tuple[str, ...]
    experiment: str | None
    resume: bool
    allow_changed_flags: bool
    seed: int
    device: str
    threads: int
    precision: str
    compile: bool
    xla_launch: bool
    quiet: bool
    denoiser: str
    denoise_steps: int
    denoise_epochs: float | None
    denoise_batch: int
    denoise_lr: float
    loss: str
    miner: str
    offline_every: int
    margin_fn: str
    margin: float | None
    margin_temperature: float
    distance: str
    optimizer: str
    lr: float
    momentum: float
    init_descriptor: Path | None
    stages_sk: tuple[tuple[int, int], ...]
    scheduler: str
    patience: int
    steps: int
    epochs: float | None
    eval_every: int
    eval_every_patches: int
    augment: str
    batch_groups: str
    memory: int
    checkpoint_every: int
    monitor_every: int
    judge_every: int | None
    verification_pairs: int
    queries: int
    val_sequences: int
    val_patches: int
    plateau: int
    plateau_delta: float
    plateau_steps: int
    smoothing: float
    threshold_factor: float
    guard_patience: int | None
    hysteresis: float
    stage_lr_start: float
    stage_lr_warmup: int
    lr_below: float
    stage_lr_factors: tuple[float, ...] | None  # None: 1 for every stage
    weight_ema: float  # 0: the raw weights are evaluated and saved
    shared_denoise: bool = False  # set by --experiment all: the denoiser output was copied from another preset

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def for_data(self, train_pairs: int, world: int) -> Config:
        """The values that depend on the data: ``denoise_steps`` from ``--denoise-epochs`` (one epoch: as many pairs
        as the training set has, over all replicas)."""
        if self.denoise_epochs is None:
            return self
        return self.replace(
            denoise_steps=max(1, math.ceil(self.denoise_epochs * train_pairs / (self.denoise_batch * world)))
        )

    def for_device(self, device_type: str) -> Config:
        """``judge_every`` from the device: every step on the CPU (a read costs nothing there), every 10 steps on an
        accelerator, where each read is a host sync (and, on torch-xla, one transfer)."""
        if self.judge_every is not None:
            return self
        return self.replace(judge_every=1 if device_type == "cpu" else 10)

    def training_flags(self) -> dict[str, Any]:
        """The values of :data:`TRAINING_FLAGS`, as recorded in a checkpoint."""
        full = self.as_json()
        return {k: full[k] for k in TRAINING_FLAGS}

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}
        out.update(stages=",".join(self.stages), stages_sk=",".join(f"{s}x{k}" for s, k in self.stages_sk))
        if self.stage_lr_factors is not None:
            out["stage_lr_factors"] = ",".join(repr(f) for f in self.stage_lr_factors)
        return out


def _stages_sk(text: str) -> tuple[tuple[int, int], ...]:
    try:
        sk = tuple((int(s), int(k)) for s, k in (part.split("x") for part in text.split(",")))
    except ValueError:
        raise SystemExit(f"error: --stages-sk must look like 32x2,32x4, got {text!r}") from None
    bad = [f"{s}x{k}" for s, k in sk if s < 1 or k < 2]
    if bad:
        raise SystemExit(f"error: --stages-sk: each stage needs S >= 1 and K >= 2, got {', '.join(bad)}")
    return sk


def _stage_lr_factors(text: str | None, n_stages: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        factors = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise SystemExit(f"error: --stage-lr-factors must look like 1,1,2,4, got {text!r}") from None
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise SystemExit(f"error: --stage-lr-factors must be finite numbers > 0, got {text!r}")
    if len(factors) != n_stages:
        raise SystemExit(
            f"error: --stage-lr-factors has {len(factors)} entries and --stages-sk {n_stages} stages: give one per stage"
        )
    return factors


def resolve(ns: argparse.Namespace, **overrides: Any) -> Config:
    """The namespace (plus ``overrides``, e.g. ``experiment=`` under ``--experiment all``) as a new `Config`:
    explicit flags win over the preset, the preset over `DEFAULTS`."""
    values = {**vars(ns), **overrides}
    preset = PRESETS.get(values["experiment"] or "", {})
    explicit_temperature = values["margin_temperature"] is not None
    explicit_factors, explicit_stages = values["stage_lr_factors"] is not None, values["stages_sk"] is not None
    for key, default in DEFAULTS.items():
        if values[key] is None:
            values[key] = preset.get(key, default)
    if not explicit_temperature and values["margin_fn"] != "softplus":
        values["margin_temperature"] = 1.0  # a preset's τ belongs to its soft margin, not to a --margin-fn hinge
    if explicit_stages and not explicit_factors:
        values["stage_lr_factors"] = None  # a preset's factors belong to its stages, not to a --stages-sk
    stages = tuple(s.strip() for s in values["stages"].split(",") if s.strip())
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"error: unknown stage(s) {', '.join(bad)}; valid: {', '.join(STAGES)}")
    for name in (
        "steps",
        "denoise_steps",
        "denoise_batch",
        "patience",
        "checkpoint_every",
        "monitor_every",
        "offline_every",
        "verification_pairs",
        "queries",
        "val_patches",
    ):
        if values[name] < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {values[name]}")
    for name in ("epochs", "denoise_epochs"):
        if values[name] is not None and not values[name] > 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be > 0, got {values[name]}")
    if values["judge_every"] is not None and values["judge_every"] < 1:
        raise SystemExit(f"error: --judge-every must be >= 1, got {values['judge_every']}")
    for name in ("val_sequences", "plateau", "plateau_steps", "stage_lr_warmup"):
        if values[name] < 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 0, got {values[name]}")
    if values["guard_patience"] is not None and values["guard_patience"] < 1:
        raise SystemExit(f"error: --guard-patience must be >= 1, got {values['guard_patience']}")
    for name in ("stage_lr_start", "lr_below"):
        if not (values[name] > 0 and math.isfinite(values[name])):
            raise SystemExit(f"error: --{name.replace('_', '-')} must be a finite number > 0, got {values[name]}")
    if not (0 <= values["hysteresis"] < math.inf and 0 <= values["plateau_delta"] < math.inf):
        raise SystemExit("error: --hysteresis and --plateau-delta must be finite numbers >= 0")
    if not (math.isfinite(values["margin_temperature"]) and values["margin_temperature"] > 0):
        raise SystemExit(f"error: --margin-temperature must be a finite number > 0, got {values['margin_temperature']}")
    if values["margin_temperature"] != 1.0 and values["margin_fn"] != "softplus":
        raise SystemExit(
            f"error: --margin-temperature is the soft margin's; --margin-fn {values['margin_fn']} has none "
            "(use --margin-fn softplus)"
        )
    if not (math.isfinite(values["threshold_factor"]) and values["threshold_factor"] > 0):
        raise SystemExit(f"error: --threshold-factor must be a finite number > 0, got {values['threshold_factor']}")
    for name in ("smoothing", "weight_ema"):
        if not 0 <= values[name] < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be in [0, 1), got {values[name]}")
    if values["plateau_steps"] and not values["plateau"]:
        raise SystemExit("error: --plateau-steps lengthens a --plateau: it needs --plateau N")
    if values["plateau"] and not values["val_sequences"]:
        raise SystemExit("error: --plateau judges validation mAP: it needs --val-sequences N")
    if values["eval_every_patches"] < 0:
        raise SystemExit(f"error: --eval-every-patches must be >= 0, got {values['eval_every_patches']}")
    if values["plateau"] and values["eval_every"] == 0 and values["eval_every_patches"] == 0:
        raise SystemExit("error: --plateau needs validation evaluations: --eval-every must be > 0")
    if values["eval_every"] < 0:
        raise SystemExit(f"error: --eval-every must be >= 0, got {values['eval_every']}")
    values.update(stages=stages, stages_sk=_stages_sk(values["stages_sk"]))
    values["stage_lr_factors"] = _stage_lr_factors(values["stage_lr_factors"], len(values["stages_sk"]))
    if values["split"] is not None and values["tasks"] is None:
        raise SystemExit("error: --split names a split of the benchmark's task files: it needs --tasks")
    if values["tasks"] is not None and values["split"] is None:
        values["split"] = "a"
    if values["loss"] == "hardnet":
        if any(k != 2 for _, k in values["stages_sk"]):
            raise SystemExit("error: --loss hardnet trains on matching pairs: every --stages-sk entry needs K = 2")
        if values["memory"] or values["miner"] == "offline":
            raise SystemExit("error: --loss hardnet mines its own negatives: not with --memory or --miner offline")
    memory = values["memory"]
    if memory < 0:
        raise SystemExit(f"error: --memory must be >= 0, got {memory}")
    if memory:
        largest = max(s * k for s, k in values["stages_sk"])
        if memory < largest:
            raise SystemExit(f"error: --memory {memory} is smaller than the largest batch ({largest} = S×K)")
        if values["miner"] not in ("batch_hard", "batch_all", "random"):
            raise SystemExit(f"error: --memory mines a batch against the memory; --miner {values['miner']} cannot")
        if values["device"] == "xla":
            raise SystemExit(
                "error: --memory runs in eager mode (it reads the queue's fill level): not with --device xla"
            )
    return Config(**values)


def parse(argv: list[str] | None = None) -> Config:
    return resolve(build_parser().parse_args(argv))
