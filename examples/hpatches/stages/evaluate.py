"""Stage 3: the three HPatches tasks on the denoised test sequences, for our descriptor, SIFT and raw pixels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tripletkit.training import atomic_write_text
from tripletkit_hpatches.baselines import describe, model_descriptors, raw_pixel_descriptors, sift_descriptors
from tripletkit_hpatches.config import Config
from tripletkit_hpatches.data import PatchDataset
from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.evaluate import evaluate
from tripletkit_hpatches.models import L2Net
from tripletkit_hpatches.published import is_official_split, published_for
from tripletkit_hpatches.tasks import generate_verification, write_verification

__all__ = ["Evaluation", "run_evaluate", "write_tasks", "tasks_complete"]

OURS = "ours (L2-Net)"


@dataclass
class Evaluation:
    """What the evaluation produced: the table's numbers and what the reports draw from."""

    summary: dict[str, dict]  # method -> verification / matching / retrieval mAP and the tie rule
    ours: dict  # our descriptor's full result (per task and level)
    published: list[dict]  # other descriptors' published numbers for the same benchmark split (else empty)
    model: torch.nn.Module
    denoised: Any  # the NpzFile of denoised patches
    test: list[str]


def _retrieval_files(ds: PatchDataset, den, test: list[str], tasks: Path, n_queries: int, seed: int) -> None:
    """Queries and distractors the benchmark's way: random (sequence, patch) ref cells with pixel std > 10, no
    duplicates, queries first, then distractors disjoint from them."""
    rng = np.random.RandomState(seed)
    cells = [(s, i) for s in test for i in range(ds.num_patches(s)) if den[s][0, i].std() > 10]
    order = rng.permutation(len(cells))
    nq = min(n_queries, len(cells) // 3)
    for name, part in (("queries", order[:nq]), ("distractors", order[nq:])):
        atomic_write_text(
            tasks / f"retr_{name}_split-default.csv",
            "s,idx\n" + "".join(f"{cells[k][0]},{cells[k][1]}\n" for k in part),
        )


TASK_FILES = (
    "splits.json",
    "verif_pos_split-default.csv",
    "verif_neg_intra_split-default.csv",
    "verif_neg_inter_split-default.csv",
    "retr_queries_split-default.csv",
    "retr_distractors_split-default.csv",
)


def tasks_complete(tasks: Path) -> bool:
    """Whether ``tasks/manifest.json`` (written last) lists every task file with the size it has now: a set that
    a kill interrupted is regenerated, never trusted because its first file exists."""
    try:
        manifest = json.loads((tasks / "manifest.json").read_text())
        return all((tasks / name).stat().st_size == manifest[name] for name in TASK_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_tasks(cfg: Config, ds: PatchDataset, den, test: list[str], train: list[str]) -> Path:
    """The task files of the run's split (once): verification pairs with the benchmark's generator, retrieval
    queries and distractors; ``splits.json`` names the split ``default``. Each file is written atomically and
    ``manifest.json`` last; without a matching manifest the whole set is written again (the generators are
    seeded, so the files come out the same)."""
    tasks = cfg.out / "tasks"
    tasks.mkdir(exist_ok=True)
    if tasks_complete(tasks):
        return tasks
    atomic_write_text(tasks / "splits.json", json.dumps({"default": {"name": "default", "test": test, "train": train}}))
    counts = {s: ds.num_patches(s) for s in test}
    write_verification(
        generate_verification(test, counts, n_pairs=cfg.verification_pairs, progress=not cfg.quiet),
        tasks,
        "default",
    )
    _retrieval_files(ds, den, test, tasks, cfg.queries, cfg.seed)
    atomic_write_text(
        tasks / "manifest.json", json.dumps({name: (tasks / name).stat().st_size for name in TASK_FILES}, indent=1)
    )
    return tasks


def run_evaluate(cfg: Config, ds: PatchDataset, split: dict[str, list[str]], device: torch.device) -> Evaluation:
    """Writes ``results.json`` (per method: the three mAPs and the tie rule; with ``--tasks`` on one of the
    benchmark's splits, also the published numbers for that split, each marked ``"published": true``).

    With ``--tasks`` the benchmark's own task files are used (its verification files are generated with its own
    generator from the real patch counts when the folder lacks them); otherwise the run writes its own."""
    den = np.load(cfg.out / "denoised.npz")
    test = split["test"]
    if cfg.tasks is not None:
        tasks, split_name = cfg.tasks, cfg.split or "a"
    else:
        tasks, split_name = write_tasks(cfg, ds, den, test, split["train"]), "default"
    patches = {s: {t: den[s][k] for k, t in enumerate(IMAGE_TYPES)} for s in test}
    model = L2Net().to(device)
    model.load_state_dict(torch.load(cfg.out / "descriptor.pt", weights_only=True, map_location=device))
    methods = {
        OURS: model_descriptors(model, device=device),
        "SIFT": sift_descriptors,
        "raw pixels": raw_pixel_descriptors,
    }
    results, full = {}, {}
    for name, fn in methods.items():
        r = evaluate(
            describe(patches, fn), tasks, split_name, generate_missing=cfg.tasks is not None, progress=not cfg.quiet
        )
        results[name] = {k: r[k] for k in ("verification", "matching", "retrieval", "ties")}
        full[name] = r
    official = cfg.tasks is not None and is_official_split(cfg.tasks, split_name, test) and not ds.synthetic
    published = [p.as_dict() for p in published_for(split_name)] if official else []
    atomic_write_text(cfg.out / "results.json", json.dumps(results | {"published": published}, indent=1))
    return Evaluation(results, full[OURS], published, model, den, test)
