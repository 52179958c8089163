"""Stepped batch-hard training of L2-Net on HPatches-style patches with tripletkit's training blocks, resumable.

    python examples/stepped_batch.py --out runs/stepped                     # embedded default data
    python examples/stepped_batch.py --data DIR --out runs/stepped --steps 2000 --margin-fn softplus
    python examples/stepped_batch.py --out runs/stepped --resume            # continue an interrupted run exactly

`tripletkit.training.SteppedBatches` draws S×K batches (one class per physical patch) and grows them while the
smoothed loss stays under the collapse value; `tripletkit.training.CollapseProbe` judges a fixed probe batch
in eval mode; `tripletkit.training.TrainingCheckpoint` makes ``--resume`` exact. ``log.csv`` has one row per
step, ``summary.json`` the stage changes and the collapse verdicts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tripletkit import BatchHardLoss
from tripletkit.training import CollapseProbe, SteppedBatches, TrainingCheckpoint, atomic_write_text, probe_indices
from tripletkit_hpatches.data import load_dataset
from tripletkit_hpatches.models import CourseworkDescriptor, L2Net


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="hpatches-release or N-HPatches folder (default: the embedded default)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--stages", default="16x2,16x4,32x4,64x4,64x8,128x8", help="S×K per stage, e.g. 16x2,16x4,32x4")
    p.add_argument("--margin-fn", default="hinge", choices=["hinge", "softplus"])
    p.add_argument("--margin", type=float, default=None)
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--smoothing", type=float, default=0.9)
    p.add_argument(
        "--guard-patience",
        type=int,
        default=0,
        help="steps at or above the threshold before going back a stage (default 4 × patience; -1: no guard)",
    )
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument(
        "--model",
        default="l2net",
        choices=["l2net", "coursework"],
        help="l2net (HardNet's layout) or the coursework descriptor",
    )
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--monitor-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        stages = [(int(s), int(k)) for s, k in (part.split("x") for part in a.stages.split(","))]
    except ValueError:
        raise SystemExit(f"error: --stages must look like 16x2,32x4 (S×K per stage), got {a.stages!r}") from None
    return argparse.Namespace(**{**vars(a), "stages": stages})


def run(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.data is None:
        from tripletkit_hpatches.prepare import build_default

        data = build_default(progress=not a.quiet) / "hpatches"
    else:
        data = a.data
    ds = load_dataset(data, progress=not a.quiet)
    splits = Path(data) / "splits.json"
    patches, labels, _ = ds.training_arrays(
        json.loads(splits.read_text())["default"]["train"] if splits.exists() else ds.sequences
    )
    x, y = (
        torch.from_numpy(patches).float()[:, None].contiguous(memory_format=torch.channels_last),
        torch.from_numpy(labels),
    )

    torch.manual_seed(a.seed)
    model = (L2Net() if a.model == "l2net" else CourseworkDescriptor()).to(memory_format=torch.channels_last)
    loss_fn = BatchHardLoss(margin=a.margin, margin_fn=a.margin_fn)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    guard_patience = a.guard_patience or 4 * a.patience
    batches = SteppedBatches(
        labels,
        a.stages,
        margin_fn=loss_fn,
        patience=a.patience,
        smoothing=a.smoothing,
        guard=guard_patience > 0,
        guard_patience=max(guard_patience, 1),
        seed=a.seed,
    )
    probe_idx = probe_indices(labels, S=32, K=8, seed=a.seed + 1)
    probe = CollapseProbe(loss_fn, x[probe_idx], y[probe_idx], every=a.monitor_every)
    ckpt = TrainingCheckpoint(
        a.out / "checkpoint.pt", model=model, optimizer=opt, stateful={"batches": batches, "probe": probe}
    )
    if a.resume and not ckpt.exists():
        raise SystemExit(f"error: --resume given but {ckpt.path} does not exist")
    extra = ckpt.restore() if a.resume else None
    step, checks = (extra["step"], extra["checks"]) if extra else (0, [])
    log = a.out / "log.csv"
    rows = log.read_text().splitlines()[1 : step + 1] if extra and log.exists() else []
    atomic_write_text(log, "\n".join(["step,loss,smoothed,stage,S,K,batch,mean_distance,collapsed", *rows]) + "\n")

    from tqdm import tqdm

    model.train()
    t0 = time.perf_counter()
    with log.open("a") as f, tqdm(total=a.steps, initial=step, disable=a.quiet, desc="stepped batch-hard") as bar:
        while step < a.steps:
            idx = next(batches)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            change = batches.step(loss)
            stats = probe(model, step, loss)
            if stats is not None:
                checks.append(
                    {
                        "step": step,
                        "collapsed": stats.collapsed,
                        "reason": stats.reason,
                        "mean_distance": stats.mean_distance,
                    }
                )
            smoothed = change.smoothed_loss if change else batches.scheduler.smoothed_loss
            dist, collapsed = (f"{stats.mean_distance:.5f}", int(stats.collapsed)) if stats else ("", "")
            f.write(
                f"{step},{float(loss.detach()):.6f},{smoothed:.6f},{batches.stage},{batches.S},{batches.K},{batches.batch_size},{dist},{collapsed}\n"
            )
            bar.set_postfix(
                loss=f"{float(loss.detach()):.3f}",
                stage=f"{batches.stage + 1}/{len(a.stages)}",
                batch=batches.batch_size,
            )
            bar.update(1)
            if step % a.checkpoint_every == 0 or step == a.steps:
                f.flush()
                ckpt.save(step=step, checks=checks)
    summary = {
        "steps": step,
        "seconds_this_run": time.perf_counter() - t0,
        "threshold": batches.scheduler.threshold,
        "final_stage": {"stage": batches.stage, "S": batches.S, "K": batches.K},
        "stage_changes": [e.__dict__ for e in batches.events],
        "collapse_checks": checks,
        "collapsed_at_end": probe.monitor.collapsed,
        "data": str(data),
    }
    atomic_write_text(a.out / "summary.json", json.dumps(summary, indent=1))
    if not a.quiet:
        print(json.dumps({k: summary[k] for k in ("steps", "final_stage", "collapsed_at_end")}))
        for e in batches.events:
            print(
                f"step {e.step}: {e.reason} to S={e.S}, K={e.K} (smoothed loss {e.smoothed_loss:.4f}, threshold {e.threshold:.4f})"
            )
    return summary


if __name__ == "__main__":
    run()
