"""How far each stepped-batch stage's loss is from its collapse threshold, for a trained descriptor.

    python examples/hpatches/stage_losses.py --run runs/study/runs/baseline-s0 [--stages-sk 32x2,32x4,64x6,128x8]

For each S×K stage: the batch-hard loss (hinge α=1 and soft margin) of ``--batches`` random S×K training batches,
drawn the way training draws them (`SymmetricSampler`), in train mode (dropout on, as the scheduler sees the
loss) without a gradient step, and each margin's collapse value. A stage can be entered and kept by the
stepped-batch rule only when its loss is under the threshold; this table says which stages are in reach of the
weights as they are, before any batch-hard training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tripletkit import BatchHardLoss
from tripletkit.samplers import SymmetricSampler
from tripletkit_hpatches.models import L2Net
from tripletkit_hpatches.stages.data import class_labels, load_data

__all__ = ["stage_losses", "main"]


def stage_losses(
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    stages: list[tuple[int, int]],
    batches: int = 20,
    seed: int = 0,
) -> list[dict]:
    """Mean and spread of the hinge (α = 1) and soft-margin batch-hard losses per stage, with their thresholds."""
    losses = {"hinge": BatchHardLoss(margin=1.0), "softplus": BatchHardLoss(margin_fn="softplus", margin=0.0)}
    rows = []
    torch.manual_seed(seed)  # the dropout masks: the same table for the same weights
    model.train()
    for S, K in stages:
        sampler = SymmetricSampler(labels, S, K, seed=seed)
        values: dict[str, list[float]] = {k: [] for k in losses}
        with torch.no_grad():
            for i, idx in enumerate(sampler):
                if i == batches:
                    break
                sel = torch.tensor(idx)
                emb = model(x[sel].contiguous(memory_format=torch.channels_last))
                for name, fn in losses.items():
                    values[name].append(float(fn(emb, torch.from_numpy(labels)[sel])))
        row = {"S": S, "K": K, "batch": S * K}
        for name, fn in losses.items():
            row[f"{name}_mean"] = float(np.mean(values[name]))
            row[f"{name}_std"] = float(np.std(values[name]))
            row[f"{name}_threshold"] = float(fn.collapse_value)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="stage_losses.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a train.py run folder (config.json, denoised.npz)")
    p.add_argument("--descriptor", type=Path, help="weights to judge (default: the run's descriptor.pt)")
    p.add_argument("--stages-sk", default="32x2,32x4,64x6,128x8")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    config = json.loads((a.run / "config.json").read_text())
    ds, _ = load_data(Path(config["data"]), 0, False)
    train = config["split_sequences"]["train"]
    den = np.load(a.run / "denoised.npz")
    x = torch.from_numpy(np.concatenate([den[s].reshape(-1, ds.size, ds.size) for s in train])).float()[:, None]
    model = L2Net()
    model.load_state_dict(torch.load(a.descriptor or a.run / "descriptor.pt", weights_only=True, map_location="cpu"))
    stages = [(int(s), int(k)) for s, k in (t.split("x") for t in a.stages_sk.split(","))]
    rows = stage_losses(model, x, class_labels(ds, train), stages, a.batches)
    from tabulate import tabulate

    print(tabulate(rows, headers="keys", floatfmt=".4f"))
    return rows


if __name__ == "__main__":
    main()
