"""HPatches benchmark task files: splits, verification pairs, retrieval queries/distractors.

Reads the benchmark's ``tasks/`` layout (``splits/splits.json`` or ``splits.json``, ``verif_{pos,neg_intra,neg_inter}
_split-X.csv``, ``retr_{queries,distractors}_split-X.csv``) and regenerates missing verification files with the
benchmark's own generator and seed (numpy's legacy ``RandomState(42)``, the same calls in the same order), which
reproduces the official files exactly when the real per-sequence patch counts are used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tripletkit.training.atomic import atomic_open
from tripletkit_hpatches.descriptors import _native, valid_sequence_name

if TYPE_CHECKING:  # pandas is imported where it is used: an evaluation reads its task files without it
    import pandas as pd

__all__ = [
    "Split",
    "VerificationPairs",
    "RetrievalTask",
    "TaskRows",
    "load_splits",
    "load_split",
    "read_verification",
    "read_retrieval",
    "generate_verification",
    "write_verification",
    "find_task_file",
    "check_sequence_name",
]

VERIF_KINDS = ("pos", "neg_intra", "neg_inter")


class TaskFileError(ValueError):
    """A task file that is missing or malformed; the message names the file (and the line)."""


def check_sequence_name(name: object, where: str) -> str:
    """A sequence name read from a file becomes a path component (`valid_sequence_name`)."""
    if not valid_sequence_name(name):
        raise TaskFileError(f"{where}: {name!r} is not a valid sequence name (letters, digits, _ . - only)")
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class Split:
    name: str
    test: tuple[str, ...]
    train: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerificationPairs:
    """Rows of ``s1,t1,idx1,s2,t2,idx2`` as arrays (sequence names as object arrays, image ids 0–5)."""

    s1: np.ndarray
    t1: np.ndarray
    idx1: np.ndarray
    s2: np.ndarray
    t2: np.ndarray
    idx2: np.ndarray
    source: str = ""  # the file the rows came from (for messages: "<file> line <n>")
    # (names, codes1, codes2) with s1 == names[codes1] and s2 == names[codes2], when the reader had them: the
    # evaluation then indexes sequences without hashing a million strings
    codes: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.s1)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(
            {"s1": self.s1, "t1": self.t1, "idx1": self.idx1, "s2": self.s2, "t2": self.t2, "idx2": self.idx2}
        )


@dataclass(frozen=True)
class TaskRows:
    """Rows of ``s,idx`` (a retrieval file): sequence names as an object array, patch indices as int64; columns by
    attribute or by name."""

    s: np.ndarray
    idx: np.ndarray

    def __len__(self) -> int:
        return len(self.s)

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in ("s", "idx"):
            raise KeyError(column)
        return self.s if column == "s" else self.idx


@dataclass(frozen=True)
class RetrievalTask:
    queries: TaskRows
    distractors: TaskRows
    queries_source: str = ""
    distractors_source: str = ""


def find_task_file(tasks_dir: str | os.PathLike, name: str) -> Path:
    root = Path(tasks_dir)
    for candidate in (root / name, root / "splits" / name):
        if candidate.exists():
            return candidate
    raise TaskFileError(f"{root / name}: missing")


def load_splits(tasks_dir: str | os.PathLike) -> dict[str, Split]:
    path = find_task_file(tasks_dir, "splits.json")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TaskFileError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(raw, dict):
        raise TaskFileError(f"{path}: expected an object of splits, got {type(raw).__name__}")
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise TaskFileError(f"{path}: split {name!r} must be an object, got {type(entry).__name__}")
        if "test" not in entry:
            raise TaskFileError(f"{path}: split {name!r} has no 'test' list")
        lists = {}
        for key in ("test", "train"):
            value = entry.get(key, [])
            if not isinstance(value, list):
                raise TaskFileError(f"{path}: split {name!r}: {key!r} must be a list, got {type(value).__name__}")
            lists[key] = tuple(check_sequence_name(v, f"{path}: split {name!r} {key}") for v in value)
        out[name] = Split(name=str(entry.get("name", name)), test=lists["test"], train=lists["train"])
    return out


def load_split(tasks_dir: str | os.PathLike, name: str) -> Split:
    splits = load_splits(tasks_dir)
    if name not in splits:
        raise ValueError(f"unknown split {name!r}; the splits file has {', '.join(sorted(splits))}")
    return splits[name]


Table = dict[str, np.ndarray]  # column → values (names as object arrays, integers as int64)
Coded = dict[str, tuple[tuple[str, ...], np.ndarray]]  # name column → (distinct names, codes into them)


def _read_native(path: Path, columns: list[str], ints: tuple[str, ...]) -> tuple[Table, Coded] | None:
    """The compiled reader for the plain layout (a header, then names and non-negative integers, comma-separated);
    None for anything else, which the pandas reader then reads or names."""
    if _native is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None  # the pandas reader names it
    parsed = _native.parse_tasks(data, "".join("i" if c in ints else "s" for c in columns))
    if parsed is None or parsed[0] != columns:
        return None
    _, _, values = parsed
    table: Table = {}
    coded: Coded = {}
    for c, v in zip(columns, values):
        if c in ints:
            table[c] = np.frombuffer(v, dtype=np.int64)
        else:
            codes, names = np.frombuffer(v[0], dtype=np.int32), tuple(v[1])
            table[c] = np.asarray(names, dtype=object)[codes]
            coded[c] = (names, codes)
    return table, coded


def _read_table(
    path: Path, columns: list[str], ints: tuple[str, ...] = (), names: tuple[str, ...] = ()
) -> tuple[Table, Coded]:
    """The CSV with exactly ``columns``; every ``ints`` column holds non-negative integers and every ``names``
    column valid sequence names. Errors name the file and the line (the header is line 1). Returns the columns,
    and for the names columns their distinct values with codes into them when the reader had them.

    Fast paths: the compiled reader (plain layout), then pandas' C parser with the integer columns as int64; the
    names are checked once per distinct value (a file of 1M rows names at most 116 sequences). Only a file that
    fails both is read again as text, row by row, to name the first bad line."""
    native = _read_native(path, columns, ints)
    if native is not None:
        table, coded = native
        for c in names:
            bad = [v for v in coded[c][0] if not valid_sequence_name(v)]
            if bad:
                r = int(np.flatnonzero(table[c] == bad[0])[0])
                raise TaskFileError(f"{path} line {r + 2}: column {c!r} is {bad[0]!r}, not a valid sequence name")
        return native
    import pandas as pd

    try:
        fast = pd.read_csv(
            path, dtype={c: (np.int64 if c in ints else str) for c in columns}, keep_default_na=False, engine="c"
        )
    except (ValueError, OverflowError, TypeError, pd.errors.ParserError):
        fast = None
    except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise TaskFileError(f"{path}: cannot read ({e})") from e
    if fast is not None and list(fast.columns) == columns and all((fast[c].to_numpy() >= 0).all() for c in ints):
        for c in names:
            values = fast[c].to_numpy(object)
            bad = [v for v in pd.unique(values) if not valid_sequence_name(v)]
            if bad:
                r = int(np.flatnonzero(values == bad[0])[0])
                raise TaskFileError(f"{path} line {r + 2}: column {c!r} is {bad[0]!r}, not a valid sequence name")
        return {c: fast[c].to_numpy(np.int64 if c in ints else object) for c in columns}, {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise TaskFileError(f"{path}: cannot read ({e})") from e
    if list(df.columns) != columns:
        raise TaskFileError(f"{path}: header {list(df.columns)}, expected {columns}")
    out: Table = {}
    for c in ints:
        text = df[c].to_numpy(object)
        ok = np.array([t.isdigit() and t.isascii() for t in text], dtype=bool)
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            raise TaskFileError(f"{path} line {r + 2}: column {c!r} is {text[r]!r}, not a non-negative integer")
        out[c] = text.astype(np.int64)
    for c in names:
        values = df[c].to_numpy(object)
        for r, v in enumerate(values):
            if not valid_sequence_name(v):
                raise TaskFileError(f"{path} line {r + 2}: column {c!r} is {v!r}, not a valid sequence name")
        out[c] = values
    return {c: out[c] for c in columns}, {}


def _shared_codes(coded: Coded, a: str, b: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray] | None:
    """Codes of two name columns into one list of names (each column was interned on its own)."""
    if a not in coded or b not in coded:
        return None
    names_a, codes_a = coded[a]
    names_b, codes_b = coded[b]
    names = tuple(dict.fromkeys(names_a + names_b))
    where = {n: i for i, n in enumerate(names)}
    remap = np.array([where[n] for n in names_b], dtype=np.int32)
    return names, codes_a, remap[codes_b] if len(codes_b) else codes_b


def read_verification(tasks_dir: str | os.PathLike, split: str) -> dict[str, VerificationPairs]:
    """The three verification files of a split, keyed ``pos``, ``neg_intra``, ``neg_inter``."""
    out = {}
    for kind in VERIF_KINDS:
        path = find_task_file(tasks_dir, f"verif_{kind}_split-{split}.csv")
        df, coded = _read_table(
            path, ["s1", "t1", "idx1", "s2", "t2", "idx2"], ints=("t1", "idx1", "t2", "idx2"), names=("s1", "s2")
        )
        for c in ("t1", "t2"):
            bad = df[c] > 5
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise TaskFileError(f"{path} line {r + 2}: image id {c}={df[c][r]} is not in 0..5")
        out[kind] = VerificationPairs(
            df["s1"],
            df["t1"],
            df["idx1"],
            df["s2"],
            df["t2"],
            df["idx2"],
            source=str(path),
            codes=_shared_codes(coded, "s1", "s2"),
        )
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise TaskFileError(f"{tasks_dir}: verification files of split {split} differ in length: {lengths}")
    return out


def read_retrieval(tasks_dir: str | os.PathLike, split: str) -> RetrievalTask:
    qp = find_task_file(tasks_dir, f"retr_queries_split-{split}.csv")
    dp = find_task_file(tasks_dir, f"retr_distractors_split-{split}.csv")
    (q, _), (d, _) = (_read_table(p, ["s", "idx"], ints=("idx",), names=("s",)) for p in (qp, dp))
    return RetrievalTask(TaskRows(q["s"], q["idx"]), TaskRows(d["s"], d["idx"]), str(qp), str(dp))


def generate_verification(
    test_sequences: list[str] | tuple[str, ...], counts: dict[str, int], n_pairs: int = 1_000_000, progress: bool = True
) -> dict[str, VerificationPairs]:
    """The benchmark's ``gen_verif``: the same legacy-RNG calls in the same order, so the official files come out
    when ``counts`` are the real patch counts (PNG height / 65) and ``test_sequences`` the splits.json order.

    Draw order (each consumes the RNG, so it is kept exactly): ``seed(42)``; ``s = choice(test, n)``; for every row
    two distinct patch indices ``choice(arange(N_s), 2, replace=False)``; then for every row two distinct image ids
    ``choice(arange(5), 2, replace=False)`` (ids 0–4 only); then ``s_inter = choice(test, n)`` and for every row
    ``randint(N_{s_inter})``. About a minute for 1M pairs (one permutation of N per row, as the original).
    """
    from tqdm import tqdm

    missing = [s for s in test_sequences if s not in counts]
    if missing:
        raise ValueError(f"patch counts missing for {', '.join(missing[:5])}")
    rs = np.random.RandomState(42)
    s = draw_sequences(rs, test_sequences, n_pairs)
    idx = draw_index_pairs(rs, s, counts, progress)
    types = np.empty((n_pairs, 2), dtype=np.int64)
    for r in tqdm(range(n_pairs), desc="verification pairs: image ids", disable=not progress, mininterval=1.0):
        types[r] = rs.choice(np.arange(5), 2, replace=False)
    s_inter = rs.choice(np.asarray(test_sequences, dtype=object), n_pairs)
    idx_inter = np.array([rs.randint(counts[k]) for k in s_inter], dtype=np.int64)
    return {
        "pos": VerificationPairs(s, types[:, 0], idx[:, 0], s, types[:, 1], idx[:, 0]),
        "neg_intra": VerificationPairs(s, types[:, 0], idx[:, 0], s, types[:, 1], idx[:, 1]),
        "neg_inter": VerificationPairs(s, types[:, 0], idx[:, 0], s_inter, types[:, 1], idx_inter),
    }


def draw_sequences(rs: np.random.RandomState, test_sequences, n: int) -> np.ndarray:
    """Step 2 of the generator: ``choice(test, n)`` in splits.json order."""
    return rs.choice(np.asarray(test_sequences, dtype=object), n)


def draw_index_pairs(
    rs: np.random.RandomState, s: np.ndarray, counts: dict[str, int], progress: bool = False
) -> np.ndarray:
    """Step 3: for every row in order, two distinct patch indices ``choice(arange(N_s), 2, replace=False)``."""
    from tqdm import tqdm

    idx = np.empty((len(s), 2), dtype=np.int64)
    for r in tqdm(range(len(s)), desc="verification pairs: indices", disable=not progress, mininterval=1.0):
        idx[r] = rs.choice(np.arange(counts[s[r]]), 2, replace=False)
    return idx


def write_verification(pairs: dict[str, VerificationPairs], tasks_dir: str | os.PathLike, split: str) -> None:
    root = Path(tasks_dir)
    root.mkdir(parents=True, exist_ok=True)
    # all three, or none: each is written atomically, and a reader refuses a partial set (``ensure_verification``
    # regenerates only when none exists), so a kill between two files is caught, never trusted
    for kind, p in pairs.items():
        with atomic_open(root / f"verif_{kind}_split-{split}.csv", "w", newline="") as f:
            p.to_frame().to_csv(f, index=False)
