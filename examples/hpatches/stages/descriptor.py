"""Stage 2: L2-Net trained on the denoised training patches with S×K batches, a miner and stepped batch.

The loop is tripletkit's training blocks: `SteppedBatches` draws the batches and grows
them, `CollapseProbe` watches a fixed probe batch in eval mode, and
`TrainingCheckpoint` makes ``--resume`` exact. What is left here is the HPatches part:
the patch bank, augmentation, the offline miner and the matching-mAP learning curve.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import torch

from tripletkit import LOSSES, CrossBatchMemory, OfflineMiner
from tripletkit.training import (
    CheckpointError,
    CollapseProbe,
    LossBuffer,
    Plateau,
    StageLR,
    SteppedBatches,
    TrainingCheckpoint,
    WeightEMA,
    atomic_save,
    atomic_write_text,
    init_optimizer_state,
    load_checkpoint,
    probe_indices,
)
from tripletkit_hpatches.baselines import describe, model_descriptors
from tripletkit_hpatches.config import LEGACY_FLAG_VALUES, Config
from tripletkit_hpatches.data import PatchDataset
from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.evaluate import evaluate_matching
from tripletkit_hpatches.models import L2Net
from tripletkit_hpatches.runtime import Runtime
from tripletkit_hpatches.stages.data import class_labels

__all__ = ["run_descriptor", "descriptor_done", "augment", "build_loss", "curve_patches"]

BANK_CHUNK = 2048


def augment(x: torch.Tensor, labels: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """``random``: an independent flip/rot90 per patch; ``pair``: one flip/rot90 per class, applied to all its
    members (anchor and positive alike: the study's untested idea)."""
    if mode == "none":
        return x
    n = x.shape[0]
    if mode == "random":
        choice = torch.randint(0, 8, (n,), generator=gen)
    else:
        per_class = torch.randint(0, 8, (int(labels.max()) + 1,), generator=gen)
        choice = per_class[labels]
    out = x.clone()
    for c in range(8):
        sel = choice == c
        if sel.any():
            y = torch.rot90(x[sel], c % 4, (2, 3))
            out[sel] = torch.flip(y, (3,)) if c >= 4 else y
    return out


class PairLoss(torch.nn.Module):
    """HardNet's loss on an S×K batch whose classes come in runs of K (the sampler's and the probe's order): the
    first two members of each class are the matching pair (anchor, positive)."""

    def __init__(self, loss: torch.nn.Module, check: bool = True) -> None:
        super().__init__()
        self.loss, self.check = loss, check
        self.gather_distributed = False

    @property
    def collapse_value(self) -> float:
        return self.loss.collapse_value

    @property
    def margin_fn(self):  # the scheduler's threshold and the collapse monitor read the loss's margin
        return self.loss.margin_fn

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = labels.shape[0]
        k = 2 if not self.check else n // int(torch.unique(labels).numel())
        groups = labels.view(n // k, k)
        if self.check and not bool((groups == groups[:, :1]).all()):
            raise ValueError("PairLoss needs each class's members next to each other (an S×K batch in sampler order)")
        e = emb.view(n // k, k, -1)
        return self.loss(e[:, 0], e[:, 1])


def build_loss(cfg: Config, rt: Runtime) -> torch.nn.Module:
    """The triplet loss of ``--miner``, ``--margin-fn``, ``--margin`` and ``--distance``.

    Under compile/XLA the shapes are static (``max_class_size`` = the largest K, no NaN check). The offline miner
    trains on given triplets that are local to each replica, so its loss is not gathered: DDP's gradient average is
    then the mean over all replicas' triplets.
    """
    max_k = max(k for _, k in cfg.stages_sk)
    static = rt.static_shapes
    # a config dict only when a temperature is set, so the plain soft margin builds exactly as before
    margin_fn = (
        cfg.margin_fn
        if cfg.margin_temperature == 1.0
        else {"name": cfg.margin_fn, "temperature": cfg.margin_temperature}
    )
    if cfg.loss == "hardnet":
        return PairLoss(
            LOSSES.build("hardnet", margin=cfg.margin, margin_fn=margin_fn, validate=not static), check=not static
        )
    miner = {
        "random": {"name": "random", "seed": cfg.seed},
        "batch_hard": {"name": "batch_hard", "max_class_size": max_k if static else None},
        "batch_all": {"name": "batch_all", "max_class_size": max_k if static else None},
        "offline": "random",
    }[cfg.miner]
    return LOSSES.build(
        "triplet",
        margin=cfg.margin,
        margin_fn=margin_fn,
        distance=cfg.distance,
        miner=miner,
        validate=not static,
        gather_distributed=rt.ddp and cfg.miner != "offline",
    )


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def curve_patches(split: dict[str, list[str]], den, patches: int = 500) -> dict:
    """The learning curve's fixed evaluation set (all 16 images of each sequence, its first ``patches`` patches).

    With validation sequences: all of them. This curve selects the model and ends a ``--plateau`` run. Without:
    the first 3 test sequences. That curve is only drawn; nothing is selected on it."""
    chosen = split["val"] if split.get("val") else split["test"][:3]
    return {s: {t: den[s][k][:patches] for k, t in enumerate(IMAGE_TYPES)} for s in chosen}


def _mine_bank(model: torch.nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, miner: OfflineMiner, rt: Runtime):
    """Describe every training patch (eval mode) and mine one triplet per valid anchor from the whole bank.

    Chunks have one size (the last is padded on XLA) so that the graph compiles once."""
    model.eval()
    parts = []
    with torch.no_grad():
        for b in range(0, len(x_all), BANK_CHUNK):
            chunk = x_all[b : b + BANK_CHUNK]
            n = len(chunk)
            if rt.xla and n < BANK_CHUNK:
                chunk = torch.cat([chunk, chunk.new_zeros((BANK_CHUNK - n, *chunk.shape[1:]))])
            parts.append(model(chunk.to(rt.device)).cpu()[:n])
    model.train()
    t = miner(torch.cat(parts), y_all.cpu())
    keep = torch.nonzero(t.valid).flatten()
    return t.anchor[keep], t.positive[keep], t.negative[keep]


def _sequence_ids(ds: PatchDataset, sequences: list[str]) -> np.ndarray:
    """The training sequence of each patch, in ``class_labels``' order."""
    return np.repeat(np.arange(len(sequences)), [16 * ds.num_patches(s) for s in sequences])


def descriptor_done(cfg: Config) -> bool:
    """Whether ``descriptor.pt`` holds the whole requested training (steps, or the epochs' patch budget) and loads:
    a file that exists but does not load (damaged after the run) is written again from the checkpoint."""
    if not (cfg.out / "descriptor.pt").exists() or not (cfg.out / "checkpoint.pt").exists():
        return False
    try:
        torch.load(cfg.out / "descriptor.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # any unreadable file is redone, with a warning
        warnings.warn(
            f"{cfg.out / 'descriptor.pt'} does not load ({e}); writing it again from the checkpoint", stacklevel=2
        )
        return False
    try:
        state = load_checkpoint(cfg.out / "checkpoint.pt")
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    extra = state["extra"]
    if extra.get("plateaued"):
        if not cfg.plateau:
            return True
        # judged again under this invocation's rule: a longer patience continues the run (plateaued was only
        # recorded at the last stage, so the stage needs no second look)
        saved = state["ranks"][0]["stateful"]["plateau"]
        plateau = Plateau(cfg.plateau, min_delta=cfg.plateau_delta, min_steps=cfg.plateau_steps)
        plateau.load_state_dict(saved)
        return _plateau_stops(plateau, cfg.out / "map_log.csv", extra["step"])
    if cfg.epochs is not None:
        return extra["seen"] >= int(cfg.epochs * extra["train_patches"])
    return extra["step"] >= cfg.steps


def _check_flags(cfg: Config, saved: dict, path: Path) -> None:
    """A resume trains what the checkpoint trained: a changed training flag is refused, listing every change."""
    now = cfg.training_flags()
    changed = [
        f"--{k.replace('_', '-')}: {saved.get(k, LEGACY_FLAG_VALUES.get(k))!r} in the checkpoint, {now[k]!r} now"
        for k in now
        if saved.get(k, LEGACY_FLAG_VALUES.get(k)) != now[k]
    ]
    if changed and not cfg.allow_changed_flags:
        raise SystemExit(
            f"error: --resume with flags that differ from {path}'s run (pass --allow-changed-flags to continue anyway):\n  "
            + "\n  ".join(changed)
        )


def _plateau_stops(plateau: Plateau, map_log: Path, step: int) -> bool:
    """Whether a restored plateau count (checkpointed at ``step``) stops the run under its rule now. A checkpoint
    from before the count kept its last evaluation's step takes it from ``map_log.csv``."""
    if plateau.evaluations and plateau.last_step is None:
        plateau.load_state_dict(plateau.state_dict(), last_step=_last_evaluation(map_log, step))
    return plateau.plateaued


def _last_evaluation(map_log: Path, step: int) -> int:
    """The step of the last validation evaluation up to ``step`` in ``map_log.csv`` (a checkpoint's plateau count
    was taken there)."""
    steps = []
    if map_log.exists():
        steps = [int(r.split(",")[0]) for r in map_log.read_text().splitlines()[1:] if r.split(",")[0].isdigit()]
    steps = [s for s in steps if s <= step]
    if not steps:
        raise SystemExit(
            f"error: the checkpoint counts validation evaluations but {map_log} has none up to step {step}"
        )
    return steps[-1]


def _rewind_log(path: Path, header: str, step: int) -> None:
    """A fresh log, or (on resume) the rows up to the checkpoint's step; written atomically."""
    keep = []
    if step > 0 and path.exists():
        keep = [
            r for r in path.read_text().splitlines()[1:] if r.split(",")[0].isdigit() and int(r.split(",")[0]) <= step
        ]
    atomic_write_text(path, "".join(r + "\n" for r in [header, *keep]))


def run_descriptor(cfg: Config, ds: PatchDataset, split: dict[str, list[str]], rt: Runtime) -> None:
    """``descriptor.pt``, ``checkpoint.pt`` (and ``.prev``), ``log.csv`` and ``map_log.csv`` in ``cfg.out``."""
    from tqdm import tqdm

    device = rt.device
    den = np.load(cfg.out / "denoised.npz")
    labels = class_labels(ds, split["train"])
    x_all = torch.from_numpy(np.concatenate([den[s].reshape(-1, ds.size, ds.size) for s in split["train"]])).float()[
        :, None
    ]
    y_all = torch.from_numpy(labels)
    if device.type == "cuda" and cfg.augment == "none":  # the training patches stay on the GPU
        x_all, y_all = x_all.to(device), y_all.to(device)
    rt.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = L2Net()
    if cfg.init_descriptor is not None:
        try:
            model.load_state_dict(torch.load(cfg.init_descriptor, weights_only=True, map_location="cpu"))
        except (OSError, RuntimeError) as e:
            raise SystemExit(f"error: --init-descriptor {cfg.init_descriptor}: {e}") from None
    model = model.to(device).to(memory_format=torch.channels_last)
    # the averaged weights are what the run evaluates, selects and saves; the raw ones are what it trains
    ema = WeightEMA(model, cfg.weight_ema) if cfg.weight_ema else None
    scored = ema.module if ema is not None else model
    net = rt.wrap(model)  # DDP broadcasts rank 0's initial weights
    if rt.ddp:  # different dropout masks on each replica from here on
        rt.manual_seed(cfg.seed + rt.rank)
    loss_fn = build_loss(cfg, rt)
    # the probe and the scheduler judge the plain loss; only the training step mines against the memory
    xbm = None
    if cfg.memory:
        if rt.ddp:
            raise SystemExit("error: --memory is not available under DDP (each replica would keep its own queue)")
        xbm = CrossBatchMemory(loss_fn, embedding_size=L2Net.DIM, memory_size=cfg.memory).to(device)
    train_loss = xbm if xbm is not None else loss_fn

    # --compile: the step's forward, loss included, is one graph. The memory reads its fill level (eager), the
    # offline miner's triplets change size and the random miner draws from its own generator (which a graph cannot
    # hold), so with those only the network is compiled.
    whole = xbm is None and cfg.miner not in ("offline", "random")
    embed = net if whole else rt.compiled(net)

    def embed_and_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with rt.autocast():
            emb = embed(xb)
        return train_loss(emb.float(), yb)

    forward = rt.compiled(embed_and_loss) if whole else embed_and_loss
    offline = (
        OfflineMiner(distance=cfg.distance, positive="random", negative="hardest", seed=cfg.seed)
        if cfg.miner == "offline"
        else None
    )
    opt = _optimizer(cfg, model)
    init_optimizer_state(opt)  # the first step is the same graph as the rest (XLA, compile); a resume overwrites it
    # on XLA the model's zero scalars (BatchNorm's counters) become device data here, not constants of step 1's graph;
    # before the restore, which sets the XLA RNG that this sync would move on
    rt.end_step()
    stepped = cfg.scheduler == "stepped_batch"
    batches = SteppedBatches(
        labels,
        cfg.stages_sk if stepped else cfg.stages_sk[:1],
        margin_fn=loss_fn,
        threshold=cfg.threshold_factor * loss_fn.collapse_value,
        patience=cfg.patience,
        smoothing=cfg.smoothing,
        guard=True,
        guard_patience=4 * cfg.patience if cfg.guard_patience is None else cfg.guard_patience,
        hysteresis=cfg.hysteresis,
        judge_every=cfg.judge_every,
        seed=cfg.seed,
        rank=rt.rank,
        world_size=rt.world,
        groups=_sequence_ids(ds, split["train"]) if cfg.batch_groups == "sequence" else None,
        reduce=False,  # the loss buffer below hands over the replicas' mean
    )
    # the losses stay on the device until the scheduler judges them (or the log, probe or checkpoint needs them):
    # a torch-xla step is then one graph with no transfer, a CUDA step has no host sync
    losses = LossBuffer(cfg.judge_every, reduce=rt.ddp and not loss_fn.gather_distributed)
    buffered: list[int] = []  # the steps whose losses the buffer holds
    idx = torch.tensor(probe_indices(labels, S=64, K=2 if cfg.loss == "hardnet" else 4, seed=cfg.seed + 1))
    probe = CollapseProbe(
        loss_fn, x_all[idx.to(x_all.device)].to(device), y_all[idx.to(y_all.device)], every=cfg.monitor_every
    )
    # the study's remedies for a stalling stage: a lower rate at a stage's start, a higher one under the margin, and a
    # rate per stage
    stage_lr = StageLR(
        opt,
        start_factor=cfg.stage_lr_start,
        warmup=cfg.stage_lr_warmup,
        below_factor=cfg.lr_below,
        stage_factors=cfg.stage_lr_factors,
    )
    plateau = Plateau(cfg.plateau or 1, min_delta=cfg.plateau_delta, min_steps=cfg.plateau_steps)
    gen = torch.Generator().manual_seed(cfg.seed + rt.rank)
    stateful = {"batches": batches, "augment_rng": gen, "probe": probe, "stage_lr": stage_lr, "plateau": plateau}
    if hasattr(getattr(loss_fn, "miner", None), "state_dict"):
        stateful["miner"] = loss_fn.miner
    if offline is not None:
        stateful["offline"] = offline
    if xbm is not None:
        stateful["memory"] = xbm
    if ema is not None:
        stateful["weight_ema"] = ema
    ckpt = TrainingCheckpoint(cfg.out / "checkpoint.pt", model=model, optimizer=opt, stateful=stateful, device=device)
    try:
        if cfg.resume and ckpt.exists():  # the flags first: a changed miner also changes what state there is
            _check_flags(cfg, load_checkpoint(ckpt.path)["extra"].get("flags", {}), ckpt.path)
        extra = ckpt.restore() if cfg.resume else None
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    step, seen = (extra["step"], extra["seen"]) if extra else (0, 0)
    mined = extra.get("mined") if extra else None
    log, map_log = cfg.out / "log.csv", cfg.out / "map_log.csv"
    if rt.main:
        _rewind_log(log, "step,loss,stage,batch,lr", step)
        _rewind_log(map_log, "step,matching_map,stage,batch", step)
    # --epochs is a patch budget: with stepped batches the number of steps is only known at the end
    budget = None if cfg.epochs is None else int(cfg.epochs * len(labels))
    evaluating = cfg.eval_every > 0 or cfg.eval_every_patches > 0
    curve = curve_patches(split, den, cfg.val_patches) if rt.main and evaluating else None
    last_stage = len(batches.scheduler.stages) - 1
    plateaued = bool(extra.get("plateaued")) if extra else False
    if extra and cfg.plateau:
        # judged again under this invocation's rule: a resume with a longer patience continues a stopped run
        plateaued = _plateau_stops(plateau, map_log, step) and batches.stage == last_stage
    # on XLA the curve runs in chunks of the probe's size: the eval graph the probe compiled serves both
    describe_batch = len(idx) if rt.xla else 1024
    net.train()
    bar = tqdm(
        total=budget if budget is not None else cfg.steps,
        initial=seen if budget is not None else step,
        desc="descriptor",
        unit="patch" if budget else "it",
        disable=cfg.quiet,
    )
    f = log.open("a") if rt.main else None
    try:
        while ((step < cfg.steps) if budget is None else (seen < budget)) and not plateaued:
            if offline is not None:
                if mined is None or step % cfg.offline_every == 0:
                    mined = _mine_bank(model, x_all, y_all, offline, rt)
                b = max(1, batches.batch_size // 3)
                pick = torch.randint(0, len(mined[0]), (b,), generator=gen)
                sel = torch.cat([mined[0][pick], mined[1][pick], mined[2][pick]]).to(x_all.device)
                xb = x_all[sel].to(device).contiguous(memory_format=torch.channels_last)
                r = torch.arange(b, device=device)
                with rt.autocast():
                    emb = embed(xb)
                loss = loss_fn(emb.float(), triplets=(r, r + b, r + 2 * b))
            else:
                sel = batches.next_tensor(x_all.device)
                yb = y_all[sel]
                xb = (
                    augment(x_all[sel], yb - yb.min(), cfg.augment, gen)
                    .to(device)
                    .contiguous(memory_format=torch.channels_last)
                )
                loss = forward(xb, yb.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            losses.append(loss)  # before the step boundary: the buffer's update is part of the step's graph
            rt.end_step()
            step += 1
            buffered.append(step)
            used = xb.shape[0] * rt.world
            seen += used
            bar.update(used if budget is not None else 1)
            finished = (step == cfg.steps) if budget is None else (seen >= budget)
            if cfg.eval_every_patches:  # a multiple of the spacing was crossed by this step's patches
                spaced = seen // cfg.eval_every_patches > (seen - used) // cfg.eval_every_patches
            else:
                spaced = cfg.eval_every > 0 and step % cfg.eval_every == 0
            curve_due = curve is not None and (spaced or finished)
            ckpt_due = step % cfg.checkpoint_every == 0 or finished
            # read when the scheduler judges (so stage changes do not depend on the other reasons), or when the
            # log, the probe, the curve or the checkpoint needs the losses
            if (
                len(losses) + batches.unjudged >= cfg.judge_every
                or finished
                or ckpt_due
                or curve_due
                or probe.due(step)
            ):
                for at, value in zip(buffered, losses.read()):
                    batches.step(value)  # under DDP: the replicas' mean (the buffer reduced it)
                    lr = cfg.lr * stage_lr.update(batches)  # the rate of the next step
                    if f is not None:
                        f.write(f"{at},{value:.6f},{batches.stage},{batches.batch_size * rt.world},{lr:.6g}\n")
                buffered.clear()
                postfix = {"loss": f"{value:.3f}", "batch": batches.batch_size * rt.world}
                if rt.main:
                    stats = probe(model, step, value)  # a CollapseWarning says when the descriptors collapse
                    if stats is not None:
                        postfix["spread"] = f"{stats.mean_distance:.3f}"
                bar.set_postfix(postfix)
            if curve_due:
                describe_fn = model_descriptors(scored, batch_size=describe_batch, device=device)
                score = evaluate_matching(describe(curve, describe_fn), curve)["mean"]
                model.train()  # (the average stays in eval mode)
                with map_log.open("a") as m:
                    m.write(f"{step},{score:.6f},{batches.stage},{batches.batch_size * rt.world}\n")
                if cfg.plateau:
                    if plateau.improves(score):  # model selection on validation: the best weights so far
                        atomic_save(scored.state_dict(), cfg.out / "descriptor_best.pt")
                    plateau.update(score, step)
                    # the stopping rule waits for the last batch stage: a plateau at a small batch is not the method's
                    plateaued = plateau.plateaued and batches.stage == last_stage
                    ckpt_due = True  # the best weights and the plateau's count are saved together
            if ckpt_due:
                if f is not None:
                    f.flush()
                ckpt.save(
                    step=step,
                    seen=seen,
                    train_patches=len(labels),
                    mined=mined,
                    flags=cfg.training_flags(),
                    plateaued=plateaued,
                )
    finally:
        if f is not None:
            f.close()
    bar.close()
    if rt.main:
        best = cfg.out / "descriptor_best.pt"
        if cfg.plateau and best.exists():  # selected by validation mAP; the last weights are kept beside it
            atomic_save(scored.state_dict(), cfg.out / "descriptor_last.pt")
            atomic_save(torch.load(best, weights_only=True, map_location="cpu"), cfg.out / "descriptor.pt")
        else:
            atomic_save(scored.state_dict(), cfg.out / "descriptor.pt")
