"""The reference benchmark's evaluation as one process, for the end-to-end timing in bench/test_evaluation.py.

What hpatches-benchmark's ``hpatches_eval.py`` does from its start to its last number: import numpy, pandas and
scipy; read every descriptor CSV with pandas and cast it to float32, one process per core (as its joblib pool);
read the task files with pandas; then the three tasks with its algorithm (tripletkit/testing/hpatches_reference.py:
the per-pair scipy distance loop, one cdist per image pair, one sort per query × level × pool size).

    python -m bench.reference_evaluate --descr-dir DIR --tasks TASKDIR --split syn

Prints one JSON line: the three mAPs (fractions, as ours) and the time of each part.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

from tripletkit.testing import hpatches_reference as ref

TYPES = ["ref"] + [f"{lv}{i}" for lv in "eht" for i in range(1, 6)]


def _load_sequence(folder: str) -> tuple[str, dict[str, np.ndarray]]:
    return Path(folder).name, {
        t: pd.read_csv(Path(folder) / f"{t}.csv", header=None).to_numpy().astype(np.float32) for t in TYPES
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--descr-dir", type=Path, required=True)
    p.add_argument("--tasks", type=Path, required=True)
    p.add_argument("--split", required=True)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    split = json.loads((a.tasks / "splits.json").read_text())[a.split]
    folders = sorted(str(f) for f in a.descr_dir.iterdir() if f.is_dir())
    with Pool(os.cpu_count()) as pool:
        desc = dict(pool.map(_load_sequence, folders))
    times = {"read_descriptors": time.perf_counter() - t0}

    def rows(name: str) -> np.ndarray:
        return pd.read_csv(a.tasks / name).to_numpy()  # as the benchmark: an object array, iterated row by row

    out: dict = {}
    t = time.perf_counter()
    pairs = {k: rows(f"verif_{k}_split-{a.split}.csv") for k in ("pos", "neg_intra", "neg_inter")}
    out["verification"] = ref.verification_at_reference_speed(desc, pairs)
    times["verification"] = time.perf_counter() - t
    t = time.perf_counter()
    out["matching"] = ref.matching_at_reference_speed(desc, split["test"])
    times["matching"] = time.perf_counter() - t
    t = time.perf_counter()
    out["retrieval"] = ref.retrieval_at_reference_speed(
        desc, rows(f"retr_queries_split-{a.split}.csv"), rows(f"retr_distractors_split-{a.split}.csv")
    )
    times["retrieval"] = time.perf_counter() - t
    out["timing_s"] = times
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
