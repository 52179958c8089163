"""What a descriptor separates: positives, negatives from the same sequence and from other sequences.

    python examples/hpatches/descriptor_stats.py --run runs/study/runs/baseline-s0 [--descriptor W.pt ...] [--init]
        [--margins 1 0.1]

On the run's validation sequences (its ``config.json``), the first ``--patches`` patches of each, between the
reference image and ``--image`` (default ``e1``): the mean L2 distance of the matching pairs, of the non-matching
pairs within one sequence and across sequences, and the share of reference patches whose nearest neighbour among
all the target patches is their own match. Descriptors are L2-normalised first, as the evaluation does. Rows: each
``--descriptor`` (default the run's ``descriptor.pt``), an untrained L2-Net with ``--init`` (seeded), raw pixels and
SIFT. A random-triplet objective can be met on average (negatives far, on the mean) while the nearest neighbour,
which the matching task scores, gets worse: this table shows which.

The last column, ``validation_matching``, is the matching mAP of the run's own validation curve (the same
sequences, ``val_patches`` patches of each, all 16 images): the number its plateau rule selects on, so raw pixels
and SIFT get a validation value to compare a run with, without reading the test sequences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tripletkit_hpatches.baselines import describe, model_descriptors, raw_pixel_descriptors, sift_descriptors
from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.evaluate import evaluate_matching
from tripletkit_hpatches.models import L2Net
from tripletkit_hpatches.stages.descriptor import curve_patches

__all__ = ["pair_stats", "main"]


def pair_stats(
    ref: np.ndarray, target: np.ndarray, sequence: np.ndarray, margins: tuple[float, ...] = ()
) -> dict[str, float]:
    """``ref[i]`` and ``target[i]`` describe one physical patch; ``sequence[i]`` is its sequence. For each margin α
    in ``margins``, ``active_α`` is the share of triplets (``ref[i]``, ``target[i]``, ``target[j]``), j ≠ i, whose hinge
    loss ``[α + d(i, i) − d(i, j)]₊`` is non-zero: the triplets a random-triplet loss still takes a gradient from."""
    a = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    b = target / np.linalg.norm(target, axis=1, keepdims=True)
    d = np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0))
    n = len(d)
    off = ~np.eye(n, dtype=bool)
    same = (sequence[:, None] == sequence[None]) & off
    gap = (np.diag(d)[:, None] - d)[off]
    active = {f"active_{m:g}": float((gap + m > 0).mean()) for m in margins}
    return {
        "positive": float(np.diag(d).mean()),
        "negative_same_sequence": float(d[same].mean()),
        "negative_other_sequence": float(d[sequence[:, None] != sequence[None]].mean()),
        "nearest_is_match": float((d.argmin(1) == np.arange(n)).mean()),
    } | active


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="descriptor_stats.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--descriptor", type=Path, nargs="*", default=None)
    p.add_argument("--init", action="store_true", help="also an untrained L2-Net (torch seed 0)")
    p.add_argument("--patches", type=int, default=300)
    p.add_argument("--image", default="e1", choices=IMAGE_TYPES[1:])
    p.add_argument(
        "--margins",
        type=float,
        nargs="*",
        default=[],
        help="for each hinge margin, the share of triplets (every non-matching target as the negative) still active",
    )
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    weights = a.descriptor if a.descriptor is not None else [a.run / "descriptor.pt"]
    for path in (a.run / "config.json", a.run / "denoised.npz", *weights):
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist (--run needs a train.py run folder; --descriptor its .pt)")
    config = json.loads((a.run / "config.json").read_text())
    seqs = config["split_sequences"]["val"] or config["split_sequences"]["test"]
    den = np.load(a.run / "denoised.npz")
    k = IMAGE_TYPES.index(a.image)
    ref = np.concatenate([den[s][0][: a.patches] for s in seqs]).astype(np.float32)
    tgt = np.concatenate([den[s][k][: a.patches] for s in seqs]).astype(np.float32)
    sequence = np.concatenate([np.full(min(a.patches, den[s].shape[1]), i) for i, s in enumerate(seqs)])
    describers = {}
    for w in weights:
        m = L2Net()
        m.load_state_dict(torch.load(w, weights_only=True, map_location="cpu"))
        describers[str(w)] = model_descriptors(m)
    if a.init:
        torch.manual_seed(0)
        describers["untrained L2-Net"] = model_descriptors(L2Net())
    describers |= {"raw pixels": raw_pixel_descriptors, "SIFT": sift_descriptors}
    curve = curve_patches(config["split_sequences"], den, config["val_patches"])
    rows = [
        {"descriptor": name}
        | pair_stats(fn(ref), fn(tgt), sequence, tuple(a.margins))
        | {"validation_matching": evaluate_matching(describe(curve, fn), curve)["mean"]}
        for name, fn in describers.items()
    ]
    from tabulate import tabulate

    print(f"validation sequences {', '.join(seqs)}; {a.patches} patches each; ref against {a.image}")
    print(tabulate(rows, headers="keys", floatfmt=".3f"))
    return rows


if __name__ == "__main__":
    main()
