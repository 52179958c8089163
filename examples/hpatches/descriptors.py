"""Descriptor sets in memory and in the benchmark's CSV layout (``<dir>/<sequence>/<type>.csv``).

A `DescriptorSet` maps sequence name → image type (``ref``, ``e1`` … ``t5``) → (N, D) float32 array; row i of
every type of a sequence describes the same physical patch. CSV files have no header, one descriptor per row, ``,``
(the python benchmark's default) or ``;`` (MATLAB, N-HPatches) as delimiter.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tripletkit.training.atomic import atomic_open
from tripletkit_hpatches.threads import worker_threads

__all__ = [
    "IMAGE_TYPES",
    "DescriptorSet",
    "read_descriptor_dir",
    "write_descriptor_dir",
    "DescriptorFileError",
    "valid_sequence_name",
]

IMAGE_TYPES = ("ref",) + tuple(f"{level}{i}" for level in "eht" for i in range(1, 6))


_SEQUENCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def valid_sequence_name(name: object) -> bool:
    """Whether a sequence name read from a file is safe as a path component: letters, digits, ``_ . -``, no
    separators, no ``..`` (``../x`` in a splits file would reach outside the data folder)."""
    return isinstance(name, str) and _SEQUENCE_NAME.fullmatch(name) is not None and ".." not in name


class DescriptorFileError(ValueError):
    """A descriptor file that cannot be used; the message names the file."""


class DescriptorSet(Mapping):
    """Validated descriptors: every sequence has all 16 types with the same N and every type the same D."""

    def __init__(self, data: Mapping[str, Mapping[str, np.ndarray]], *, types: Iterable[str] = IMAGE_TYPES) -> None:
        self.types = tuple(types)
        self._data: dict[str, dict[str, np.ndarray]] = {}
        dim = None
        for seq, per_type in data.items():
            missing = [t for t in self.types if t not in per_type]
            if missing:
                raise ValueError(f"sequence {seq!r} has no descriptors for {', '.join(missing)}")
            arrays = {}
            n = None
            for t in self.types:
                a = np.asarray(per_type[t])
                if a.ndim != 2:
                    raise ValueError(f"{seq}/{t}: descriptors must be (N, D), got shape {a.shape}")
                if not np.isfinite(a).all():
                    raise ValueError(f"{seq}/{t}: descriptors contain NaN or inf")
                if n is None:
                    n = a.shape[0]
                elif a.shape[0] != n:
                    raise ValueError(f"{seq}/{t}: {a.shape[0]} descriptors but {seq}/ref has {n}")
                if dim is None:
                    dim = a.shape[1]
                elif a.shape[1] != dim:
                    raise ValueError(f"{seq}/{t}: dimension {a.shape[1]}, expected {dim}")
                arrays[t] = np.ascontiguousarray(a, dtype=np.float32)
            self._data[seq] = arrays
        self.dim = dim or 0

    def __getitem__(self, seq: str) -> dict[str, np.ndarray]:
        try:
            return self._data[seq]
        except KeyError:
            raise KeyError(f"no descriptors for sequence {seq!r}") from None

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def num_patches(self, seq: str) -> int:
        return self[seq]["ref"].shape[0]

    def require(self, sequences: Iterable[str]) -> None:
        missing = [s for s in sequences if s not in self._data]
        if missing:
            raise ValueError(
                f"descriptors are missing for {len(missing)} sequence(s) of the split: {', '.join(missing[:8])}"
            )


try:  # the compiled strict reader (setup.py builds it where a C compiler is present; optional)
    from tripletkit_hpatches import _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only where the extension could not be built
    _native = None


def _parse_native(path: Path, delimiter: str) -> np.ndarray | None:
    """The compiled strict reader: a plain rectangular table of decimal numbers, each rounded to the nearest double
    and then to float32 (the bits pandas gives), about 3× pandas' speed and without the GIL, so threads overlap it.
    None when the extension is absent, the file cannot be read, or anything in it is outside that grammar (blank
    lines, spaces, quotes, text, ragged rows), which the pandas path then reads or names."""
    if _native is None or len(delimiter) != 1:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    parsed = _native.parse(data, delimiter)
    if parsed is None:
        return None
    buf, rows, cols = parsed
    return np.frombuffer(buf, dtype=np.float32).reshape(rows, cols)


def _parse_fast(path: Path, delimiter: str) -> np.ndarray | None:
    """pandas' C parser straight from the file, to float32 (about twice numpy's speed); None for anything that is
    not a plain rectangular numeric table (empty fields, ragged rows, text, bytes that are not UTF-8), which the
    careful path then reads or names.

    Parsing to float32 gives the bits of parsing to float64 and then rounding, as the benchmark does
    (``pd.read_csv(...).astype(np.float32)``): pandas converts through a double."""
    import pandas as pd

    try:
        with np.errstate(over="ignore"):  # a value past float32's range becomes inf, and the careful read names it
            # low_memory=False: one pass over the file instead of chunks (5 % less CPU; every column's type is given)
            df = pd.read_csv(
                path, sep=delimiter, header=None, dtype=np.float32, engine="c", na_filter=False, low_memory=False
            )
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    # pandas holds columns, so its array is column-major; the row-major copy is made here, in the worker, so that
    # only one copy of each file is alive once every file is read (the set's peak memory is the set's size)
    return np.ascontiguousarray(df.to_numpy())


def _read_csv_carefully(path: Path, delimiter: str) -> np.ndarray:
    try:
        text = path.read_text()
    except OSError as e:
        raise DescriptorFileError(f"{path}: cannot read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise DescriptorFileError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from e
    try:
        return np.loadtxt(io.StringIO(text), delimiter=delimiter, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DescriptorFileError(f"{path}: not a '{delimiter}'-delimited numeric table ({e})") from e


def _read_csv(path: Path, delimiter: str) -> np.ndarray:
    a = _parse_native(path, delimiter)
    if a is None:
        a = _parse_fast(path, delimiter)
    if a is not None and np.isfinite(a).all():
        return a
    # anything else is read again in float64, which names the row and tells a written inf from an overflow
    a = _read_csv_carefully(path, delimiter)
    if a.size == 0:
        raise DescriptorFileError(f"{path}: no descriptors")
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).any(1).argmax())
        raise DescriptorFileError(f"{path}: row {bad + 1} contains NaN or inf")
    big = np.abs(a) > np.finfo(np.float32).max  # finite in float64, inf once stored as float32
    if big.any():
        bad = int(big.any(1).argmax())
        raise DescriptorFileError(f"{path}: row {bad + 1} holds a value beyond float32's range (±3.4e38)")
    return np.ascontiguousarray(a, dtype=np.float32)


def _read_csvs(paths: list[Path], delimiter: str) -> list[np.ndarray]:
    return [_read_csv(p, delimiter) for p in paths]


def read_descriptor_dir(
    root: str | os.PathLike,
    *,
    sequences: Iterable[str] | None = None,
    delimiter: str = ",",
    threads: int | None = None,
    processes: bool = False,
) -> DescriptorSet:
    """Read ``root/<sequence>/<type>.csv`` for the given sequences (default: every sub-folder), on ``threads``
    threads (default: the cores, at most 4). Plain numeric files go through the compiled reader, which releases the
    GIL; without it (no C compiler at install) ``processes=True`` forks as many worker processes instead (where the
    platform forks: pandas' parser holds the GIL for part of each file, so threads reach only about 1.3× on two
    cores and processes 1.8×; for a process that imported little, such as ``evaluate.py``'s).

    Errors name the file: unreadable, not numeric, NaN/inf, a row count that differs from the sequence's ``ref.csv``,
    or a dimension that differs from the first file read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DescriptorFileError(f"{root}: not a directory")
    seqs = sorted(p.name for p in root.iterdir() if p.is_dir()) if sequences is None else list(sequences)
    for seq in seqs if sequences is not None else ():  # names from a splits file become path components
        if not valid_sequence_name(seq):
            raise DescriptorFileError(f"{root}: {seq!r} is not a valid sequence name")
    for seq in seqs:
        for t in IMAGE_TYPES:
            if not (root / seq / f"{t}.csv").exists():
                raise DescriptorFileError(f"{root / seq / f'{t}.csv'}: missing")
    # parsing is most of the time: the compiled reader and forked processes overlap it fully, pandas on threads partly
    # (it holds the GIL for part of each file)
    paths = [root / seq / f"{t}.csv" for seq in seqs for t in IMAGE_TYPES]
    workers = worker_threads(threads)
    if processes and workers > 1 and _native is None and "fork" in mp.get_all_start_methods():
        groups = [paths[i :: 4 * workers] for i in range(4 * workers)]  # interleaved: big and small files mix
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            parsed = pool.map(_read_csvs, groups, [delimiter] * len(groups))
            arrays = {p: a for g, arrs in zip(groups, parsed) for p, a in zip(g, arrs)}
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            arrays = dict(zip(paths, pool.map(lambda p: _read_csv(p, delimiter), paths)))
    data: dict[str, dict[str, np.ndarray]] = {}
    dim = None
    for seq in seqs:
        per_type = {}
        n = None
        for t in IMAGE_TYPES:
            path = root / seq / f"{t}.csv"
            a = arrays[path]
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise DescriptorFileError(f"{path}: {a.shape[0]} rows, but {root / seq / 'ref.csv'} has {n}")
            if dim is None:
                dim = a.shape[1]
            elif a.shape[1] != dim:
                raise DescriptorFileError(f"{path}: {a.shape[1]} columns, but the descriptors read so far have {dim}")
            per_type[t] = a
        data[seq] = per_type
    return DescriptorSet(data)


def write_descriptor_dir(
    descriptors: Mapping[str, Mapping[str, np.ndarray]],
    root: str | os.PathLike,
    *,
    delimiter: str = ",",
    fmt: str = "%.9g",
) -> None:
    """Write the benchmark layout; ``read_descriptor_dir`` reads it back exactly for float32 values."""
    root = Path(root)
    for seq, per_type in descriptors.items():
        (root / seq).mkdir(parents=True, exist_ok=True)
        for t in IMAGE_TYPES:
            with atomic_open(root / seq / f"{t}.csv", "wb") as f:
                np.savetxt(f, np.asarray(per_type[t], dtype=np.float32), delimiter=delimiter, fmt=fmt)
