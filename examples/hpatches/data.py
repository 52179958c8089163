"""HPatches patch data on disk and in memory.

Formats (``docs/hpatches-data.md``):

* ``hpatches-release``: ``<root>/<sequence>/<type>.png`` for the 16 types (``ref``, ``e1..e5``, ``h1..h5``,
  ``t1..t5``), each N patches of 65×65 stacked in one column; row i is the same physical patch in all 16.
* N-HPatches: ``<root>/<sequence>/<type>.png`` (clean) and ``<type>_noise.png`` (noisy), 32×32 patches.

In memory a `PatchDataset` holds, per sequence, one uint8 array (16, N, s, s) of clean patches (and one of
noisy patches for N-HPatches), at the network's size s = 32: 65×65 patches are resized with area interpolation
(the mean over each output pixel's footprint). Loading keeps an on-disk cache (one ``.npz`` per sequence, keyed by
the source files' sizes and modification times), so a second load of the 4.2 GB release takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.patches import PatchFileError, read_patch_column, resize_patches

__all__ = [
    "PatchDataset",
    "write_hpatches_sequence",
    "write_nhpatches_sequence",
    "load_dataset",
    "detect_format",
    "make_splits",
    "write_splits",
]


@dataclass
class PatchDataset:
    """Per sequence: ``clean[seq]`` (16, N, s, s) uint8 in IMAGE_TYPES order; ``noisy[seq]`` likewise or absent."""

    clean: dict[str, np.ndarray]
    noisy: dict[str, np.ndarray] = field(default_factory=dict)
    size: int = 32
    source: str = ""
    synthetic: bool = False

    @property
    def sequences(self) -> list[str]:
        return sorted(self.clean)

    def num_patches(self, seq: str) -> int:
        return self.clean[seq].shape[1]

    def patches(self, seq: str, noisy: bool = False) -> dict[str, np.ndarray]:
        arr = (self.noisy if noisy else self.clean)[seq]
        return {t: arr[k] for k, t in enumerate(IMAGE_TYPES)}

    def training_arrays(self, sequences: list[str], noisy: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(patches (M, s, s) uint8, labels (M,) int64, clean targets (M, s, s) uint8): every physical patch of the
        given sequences is one class whose 16 members are its images."""
        xs, ys, cs = [], [], []
        offset = 0
        for seq in sequences:
            src = (self.noisy if noisy else self.clean)[seq]
            n = src.shape[1]
            xs.append(src.reshape(-1, self.size, self.size))
            cs.append(self.clean[seq].reshape(-1, self.size, self.size))
            ys.append(np.tile(np.arange(n), 16) + offset)
            offset += n
        return np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(cs)


def _write_column(path: Path, patches: np.ndarray) -> None:
    from PIL import Image

    n, p, _ = patches.shape
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(np.ascontiguousarray(patches.reshape(n * p, p))).save(tmp)
    os.replace(tmp, path)


def write_hpatches_sequence(root: str | os.PathLike, name: str, patches: dict[str, np.ndarray]) -> Path:
    """Write the 16 column PNGs of one sequence (``hpatches-release`` layout)."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    n = None
    for t in IMAGE_TYPES:
        a = np.asarray(patches[t], dtype=np.uint8)
        if n is not None and len(a) != n:
            raise ValueError(f"{name}/{t}: {len(a)} patches, ref has {n}")
        n = len(a)
        _write_column(folder / f"{t}.png", a)
    return folder


def write_nhpatches_sequence(
    root: str | os.PathLike, name: str, clean: dict[str, np.ndarray], noisy: dict[str, np.ndarray]
) -> Path:
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    for t in IMAGE_TYPES:
        _write_column(folder / f"{t}.png", np.asarray(clean[t], dtype=np.uint8))
        _write_column(folder / f"{t}_noise.png", np.asarray(noisy[t], dtype=np.uint8))
    return folder


def detect_format(root: str | os.PathLike) -> str:
    """``"nhpatches"`` when the sequences have ``ref_noise.png``, ``"hpatches"`` when they have ``ref.png``."""
    root = Path(root)
    if not root.is_dir():
        raise PatchFileError(f"{root}: not a directory")
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / "ref_noise.png").exists():
            return "nhpatches"
        if (sub / "ref.png").exists():
            return "hpatches"
    raise PatchFileError(f"{root}: no sequence folder with ref.png (hpatches-release) or ref_noise.png (N-HPatches)")


def _read_sequence(folder: Path, fmt: str, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    patch = 65 if fmt == "hpatches" else 32
    clean, noisy, n = [], [], None
    for t in IMAGE_TYPES:
        for kind, store in (("", clean), ("_noise", noisy)) if fmt == "nhpatches" else (("", clean),):
            path = folder / f"{t}{kind}.png"
            a = read_patch_column(path, patch)
            if n is None:
                n = len(a)
            elif len(a) != n:
                raise PatchFileError(f"{path}: {len(a)} patches, but {folder / 'ref.png'} has {n}")
            store.append(resize_patches(a, size) if patch != size else a)
    return np.stack(clean), (np.stack(noisy) if noisy else None)


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.glob("*.png")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_dataset(
    root: str | os.PathLike,
    *,
    fmt: str = "auto",
    size: int = 32,
    sequences: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> PatchDataset:
    """Load an ``hpatches-release`` or N-HPatches folder (``fmt="auto"`` tells them apart) at ``size``×``size``."""
    from tqdm import tqdm

    root = Path(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt not in ("hpatches", "nhpatches"):
        raise ValueError(f"fmt must be 'auto', 'hpatches' or 'nhpatches', got {fmt!r}")
    names = sequences or sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "ref.png").exists())
    if not names:
        raise PatchFileError(f"{root}: no sequences")
    cache = Path(cache_dir) if cache_dir else root / ".tripletkit-cache"
    clean, noisy = {}, {}
    meta = {}
    if (root / "dataset.json").exists():
        meta = json.loads((root / "dataset.json").read_text())
    for name in tqdm(names, desc=f"loading {root.name}", disable=not progress):
        folder = root / name
        if not folder.is_dir():
            raise PatchFileError(f"{folder}: missing")
        key = cache / f"{name}-{fmt}-{size}-{_fingerprint(folder)}.npz"
        if key.exists():
            with np.load(key) as z:
                clean[name] = z["clean"]
                if "noisy" in z:
                    noisy[name] = z["noisy"]
            continue
        c, nz = _read_sequence(folder, fmt, size)
        clean[name] = c
        if nz is not None:
            noisy[name] = nz
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = key.with_suffix(".tmp.npz")
            np.savez(tmp, clean=c, **({"noisy": nz} if nz is not None else {}))
            os.replace(tmp, key)
        except OSError:
            pass  # a read-only dataset folder: no cache, still correct
    return PatchDataset(clean, noisy, size, str(root), bool(meta.get("synthetic", False)))


def make_splits(names: list[str], test_fraction: float = 0.3, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """Train/test split of the sequences we build, stratified by kind (``i_``/``v_``/other), with a seeded shuffle
    (numpy ``default_rng(seed)``); every kind with at least two sequences has one in each part."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(n[:2] if n[:2] in ("i_", "v_") else "other", []).append(n)
    for group in groups.values():
        order = [group[i] for i in rng.permutation(len(group))]
        k = int(round(len(order) * test_fraction))
        if len(order) >= 2:
            k = min(max(k, 1), len(order) - 1)
        test += order[:k]
        train += order[k:]
    return {"default": {"train": sorted(train), "test": sorted(test)}}


def write_splits(root: str | os.PathLike, splits: dict) -> Path:
    path = Path(root) / "splits.json"
    path.write_text(json.dumps(splits, indent=1))
    return path
