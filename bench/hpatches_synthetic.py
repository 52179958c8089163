"""A synthetic HPatches split of realistic size for the evaluation benchmark: 40 sequences with the real split-a
patch counts (lower bounds from ../shared/data when present, else 1,300 each), 128-D descriptors whose noise grows
from e to h to t, 1M verification pairs per file (uniform, not the legacy generator: the timing does not depend on
which pairs), 10,000 queries and 20,000 distractors."""

from __future__ import annotations

import json
import shutil
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

from tripletkit.training.atomic import atomic_write_text
from tripletkit_hpatches.descriptors import IMAGE_TYPES, DescriptorSet, write_descriptor_dir
from tripletkit_hpatches.tasks import VerificationPairs

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data" / "hpatches-tasks"


def split_a_counts(n_sequences: int = 40) -> dict[str, int]:
    if (SHARED / "sequence_patch_counts.json").exists():
        meta = json.loads((SHARED / "sequence_patch_counts.json").read_text())["sequences"]
        test = json.loads((SHARED / "splits.json").read_text())["a"]["test"][:n_sequences]
        return {s: int(meta[s].get("exact", meta[s]["lower_bound"])) for s in test}
    return {f"{'iv'[k % 2]}_seq{k:03d}": 1300 for k in range(n_sequences)}


def sequence_descriptors(k: int, n: int, dim: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """Sequence number k's 16 images: a float32 base for ref, noise growing from e to h to t on the others."""
    rng = np.random.default_rng([seed, k])
    base = rng.standard_normal((n, dim), dtype=np.float32)
    return {
        t: base
        if t == "ref"
        else base + {"e": 0.4, "h": 0.8, "t": 1.2}[t[0]] * rng.standard_normal(base.shape, dtype=np.float32)
        for t in IMAGE_TYPES
    }


def full_benchmark_counts() -> dict[str, int]:
    """All 116 sequences of the full split with their patch counts (lower bounds from ../shared/data when present,
    else 1,350 each: the release's mean)."""
    if (SHARED / "sequence_patch_counts.json").exists():
        meta = json.loads((SHARED / "sequence_patch_counts.json").read_text())["sequences"]
        return {s: int(v.get("exact", v["lower_bound"])) for s, v in sorted(meta.items())}
    return {f"{'iv'[k % 2]}_seq{k:03d}": 1350 for k in range(116)}


def write_task_files(
    tmp: Path, counts: dict[str, int], n_pairs: int, n_queries: int, n_distractors: int, seed: int = 0
) -> None:
    """``splits.json`` (split ``syn``: every sequence of ``counts`` is a test sequence), the three verification
    files and the two retrieval files, in the benchmark's layout."""
    rng = np.random.default_rng(seed)
    seqs = list(counts)
    (tmp / "splits.json").write_text(json.dumps({"syn": {"name": "syn", "test": seqs, "train": []}}))
    s1 = rng.choice(np.asarray(seqs, dtype=object), n_pairs)
    n1 = np.array([counts[s] for s in s1])
    i = (rng.random(n_pairs) * n1).astype(np.int64)
    j = (i + 1 + (rng.random(n_pairs) * (n1 - 1)).astype(np.int64)) % n1
    t = np.stack([rng.permutation(5)[:2] for _ in range(1000)])[rng.integers(0, 1000, n_pairs)]
    s2 = rng.choice(np.asarray(seqs, dtype=object), n_pairs)
    k = (rng.random(n_pairs) * np.array([counts[s] for s in s2])).astype(np.int64)
    pairs = {
        "pos": VerificationPairs(s1, t[:, 0], i, s1, t[:, 1], i),
        "neg_intra": VerificationPairs(s1, t[:, 0], i, s1, t[:, 1], j),
        "neg_inter": VerificationPairs(s1, t[:, 0], i, s2, t[:, 1], k),
    }
    for kind, p in pairs.items():
        p.to_frame().to_csv(tmp / f"verif_{kind}_split-syn.csv", index=False)
    cells = np.array([(si, x) for si, s in enumerate(seqs) for x in range(counts[s])])
    pick = rng.permutation(len(cells))[: n_queries + n_distractors]
    q, d = cells[pick[:n_queries]], cells[pick[n_queries:]]
    pd.DataFrame({"s": [seqs[a] for a in q[:, 0]], "idx": q[:, 1]}).to_csv(
        tmp / "retr_queries_split-syn.csv", index=False
    )
    pd.DataFrame({"s": [seqs[a] for a in d[:, 0]], "idx": d[:, 1]}).to_csv(
        tmp / "retr_distractors_split-syn.csv", index=False
    )


def make_split(
    tmp: Path,
    n_pairs: int = 1_000_000,
    n_queries: int = 10_000,
    n_distractors: int = 20_000,
    dim: int = 128,
    seed: int = 0,
    n_sequences: int = 40,
) -> DescriptorSet:
    """Task files in ``tmp`` (split ``syn``) for ``n_sequences`` with split-a counts; returns their descriptors."""
    counts = split_a_counts(n_sequences)
    write_task_files(tmp, counts, n_pairs, n_queries, n_distractors, seed)
    return DescriptorSet({s: sequence_descriptors(k, n, dim, seed) for k, (s, n) in enumerate(counts.items())})


def _write_sequence(job: tuple) -> None:
    root, k, seq, n, dim, seed = job
    write_descriptor_dir({seq: sequence_descriptors(k, n, dim, seed)}, root)


def write_synthetic_set(
    root: Path,
    counts: dict[str, int],
    n_pairs: int,
    n_queries: int,
    n_distractors: int,
    dim: int = 128,
    seed: int = 0,
    workers: int = 2,
) -> Path:
    """``root/tasks`` (split ``syn``) and ``root/descr`` (the benchmark's CSV layout, %.9g), written once.

    ``root/complete.json`` holds the parameters and is written last; a folder whose marker matches is reused as it
    is, any other is emptied first (its marker removed before anything else, so an interrupted rewrite is never
    mistaken for a finished one)."""
    marker = root / "complete.json"
    want = json.dumps(
        {
            "counts": counts,
            "pairs": n_pairs,
            "queries": n_queries,
            "distractors": n_distractors,
            "dim": dim,
            "seed": seed,
        },
        sort_keys=True,
    )
    if marker.exists() and marker.read_text() == want:
        return root
    marker.unlink(missing_ok=True)
    for sub in ("tasks", "descr"):
        shutil.rmtree(root / sub, ignore_errors=True)
    (root / "tasks").mkdir(parents=True)
    write_task_files(root / "tasks", counts, n_pairs, n_queries, n_distractors, seed)
    jobs = [(root / "descr", k, s, n, dim, seed) for k, (s, n) in enumerate(counts.items())]
    with Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_sequence, jobs):
            pass
    atomic_write_text(marker, want)
    return root
