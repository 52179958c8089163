"""Stepped batch-hard training of L2-Net on HPatches-style patches: the study's schedule, end to end, resumable.

    python examples/stepped_batch.py --out runs/stepped                     # embedded default data
    python examples/stepped_batch.py --data DIR --out runs/stepped --steps 2000 --margin-fn softplus
    python examples/stepped_batch.py --out runs/stepped --resume            # continue an interrupted run exactly

S×K batches come from :class:`tripletkit.SymmetricSampler` over the training sequences' physical patches (one class
per patch, 16 images each); :class:`tripletkit.SteppedBatchScheduler` grows (S, K) while the smoothed loss stays under
the collapse value of the margin function, and the sampler follows; :class:`tripletkit.CollapseMonitor` watches the
embeddings. Every ``--checkpoint-every`` steps the model, optimiser, scheduler, sampler and RNG states are written
atomically, so ``--resume`` continues with exactly the step an uninterrupted run would take next. ``log.csv`` has one
row per step; ``summary.json`` the stage changes and the collapse verdicts.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpatches.checkpoint import atomic_save, rng_state, set_rng_state  # noqa: E402
from hpatches.data import load_dataset  # noqa: E402
from hpatches.models import CourseworkDescriptor, L2Net  # noqa: E402
from tripletkit import BatchHardLoss, CollapseMonitor, SteppedBatchScheduler, SymmetricSampler  # noqa: E402

DEFAULT_STAGES = "16x2,16x4,32x4,64x4,64x8,128x8"


def parse_stages(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(s), int(k)) for s, k in (part.split("x") for part in text.split(","))]
    except ValueError:
        raise SystemExit(f"error: --stages must look like 16x2,32x4 (S×K per stage), got {text!r}") from None


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="hpatches-release or N-HPatches folder (default: the embedded default)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--stages", default=DEFAULT_STAGES, help="S×K per stage, e.g. 16x2,16x4,32x4")
    p.add_argument("--margin-fn", default="hinge", choices=["hinge", "softplus"])
    p.add_argument("--margin", type=float, default=None)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--smoothing", type=float, default=0.9)
    p.add_argument("--guard-patience", type=int, default=0, help="steps at or above the threshold before going back a stage (default 4 × patience; -1: no guard)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--model", default="l2net", choices=["l2net", "coursework"],
                   help="l2net (HardNet's layout) or the coursework descriptor (affine BN, no L2 normalisation)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--monitor-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    if a.resume and not ckpt_path.exists():
        raise SystemExit(f"error: --resume given but {ckpt_path} does not exist")

    # ---------------------------------------------------------------- data
    if a.data is None:
        from hpatches.prepare import build_default

        a.data = build_default(progress=not a.quiet) / "hpatches"
    ds = load_dataset(a.data, progress=not a.quiet)
    splits_file = Path(a.data) / "splits.json"
    train_seqs = json.loads(splits_file.read_text())["default"]["train"] if splits_file.exists() else ds.sequences
    patches, labels, _ = ds.training_arrays(train_seqs)
    x_all = torch.from_numpy(patches).float()[:, None].contiguous(memory_format=torch.channels_last)
    y_all = torch.from_numpy(labels)

    # ---------------------------------------------------------------- model, loss, schedule
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    model = (L2Net() if a.model == "l2net" else CourseworkDescriptor()).to(memory_format=torch.channels_last)
    loss_fn = BatchHardLoss(margin=a.margin, margin_fn=a.margin_fn)
    if a.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.weight_decay)
    guard_patience = a.guard_patience or 4 * a.patience
    sched = SteppedBatchScheduler(
        parse_stages(a.stages), margin_fn=loss_fn, patience=a.patience, smoothing=a.smoothing,
        guard=guard_patience > 0, guard_patience=max(guard_patience, 1),
    )
    sampler = SymmetricSampler(labels, sched.S, sched.K, seed=a.seed)
    monitor = CollapseMonitor(loss_fn, action="warn")
    step = 0
    if a.resume:
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        monitor.reference_distance = state["monitor_reference"]
        set_rng_state(state["rng"])
        step = state["step"]
    log_path = out / "log.csv"
    if not a.resume or not log_path.exists():
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerow(["step", "loss", "smoothed", "stage", "S", "K", "batch", "mean_distance", "collapsed"])
    else:  # drop rows written after the checkpoint we resume from
        rows = list(csv.reader(log_path.open()))
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if int(r[0]) <= step])

    # ---------------------------------------------------------------- training
    from tqdm import tqdm

    model.train()
    bar = tqdm(total=a.steps, initial=step, disable=a.quiet, desc="stepped batch-hard")
    t0 = time.perf_counter()
    batches = iter(sampler)
    collapse_flags = []
    # the monitor watches a fixed probe batch through the model in eval mode: the descriptors as they will be used
    # (in train mode L2-Net's last BatchNorm rescales every batch to unit variance, hiding a collapse)
    probe_sampler = SymmetricSampler(labels, min(32, len(np.unique(labels))), 8 if np.bincount(labels).max() >= 8 else 2, seed=a.seed + 1)
    probe = torch.tensor(next(iter(probe_sampler)))
    while step < a.steps:
        try:
            idx = next(batches)
        except StopIteration:
            batches = iter(sampler)
            continue
        index = torch.tensor(idx)
        emb = model(x_all[index])
        loss = loss_fn(emb, y_all[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.detach())
        changed = sched.step(value)
        if changed:
            sampler.set_batch_shape(sched.S, sched.K)
        dist, collapsed = "", ""
        if step % a.monitor_every == 0:
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.eval()
                with torch.no_grad():
                    probe_emb = model(x_all[probe])
                model.train()
                stats = monitor.update(probe_emb, y_all[probe], value)
            dist, collapsed = f"{stats.mean_distance:.5f}", int(stats.collapsed)
            collapse_flags.append({"step": step, "collapsed": stats.collapsed, "reason": stats.reason, "mean_distance": stats.mean_distance})
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
        with log_path.open("a", newline="") as f:
            csv.writer(f).writerow([step, f"{value:.6f}", f"{sched.events[-1].smoothed_loss if changed else sched.smoothed_loss:.6f}", sched.stage, sched.S, sched.K, sched.batch_size, dist, collapsed])
        bar.set_postfix(loss=f"{value:.3f}", stage=f"{sched.stage + 1}/{len(sched.stages)}", batch=sched.batch_size)
        bar.update(1)
        if step % a.checkpoint_every == 0 or step == a.steps:
            atomic_save(
                {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "sampler": sampler.state_dict(), "monitor_reference": monitor.reference_distance,
                    "rng": rng_state(),
                    "step": step, "args": {k: str(v) for k, v in vars(a).items()},
                },
                ckpt_path,
            )
            # a fresh iterator continues from the sampler state just saved, so a resumed run draws the same batches
            batches = iter(sampler)
    bar.close()
    summary = {
        "steps": step,
        "seconds_this_run": time.perf_counter() - t0,
        "threshold": sched.threshold,
        "final_stage": {"stage": sched.stage, "S": sched.S, "K": sched.K},
        "stage_changes": [e.__dict__ for e in sched.events],
        "collapse_checks": collapse_flags,
        "collapsed_at_end": monitor.collapsed,
        "data": str(a.data),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if not a.quiet:
        print(json.dumps({k: summary[k] for k in ("steps", "final_stage", "collapsed_at_end")}))
        for e in sched.events:
            print(f"step {e.step}: {e.reason} to S={e.S}, K={e.K} (smoothed loss {e.smoothed_loss:.4f} < threshold {e.threshold:.4f})" if e.reason == "advance" else f"step {e.step}: back to S={e.S}, K={e.K}")
    return summary


if __name__ == "__main__":
    run()
