"""The run's dataset and train/test split: the embedded default, an extracted ``--sequences`` folder, or ``--data``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tripletkit_hpatches.data import PatchDataset, load_dataset, make_splits
from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.noise import noise_sequence

__all__ = ["extract_sequences", "data_folder", "load_data", "class_labels", "hold_out"]


def extract_sequences(sequences: Path, out: Path, seed: int, progress: bool) -> Path:
    """An hpatches-release dataset extracted once from image sequences into ``out/extracted``."""
    from tripletkit_hpatches.extract import load_sequence
    from tripletkit_hpatches.prepare import _sequence_folders, extract_many

    target = out / "extracted"
    if not (target / "dataset.json").exists():
        extract_many(
            [load_sequence(f) for f in _sequence_folders(sequences)],
            target,
            2000,
            seed,
            synthetic=False,
            progress=progress,
        )
    return target


def data_folder(data: Path | None, sequences: Path | None, out: Path, seed: int, progress: bool) -> Path:
    """The folder the run reads: ``data``, the extraction of ``sequences``, or the embedded default (built once)."""
    if sequences is not None:
        return extract_sequences(sequences, out, seed, progress)
    if data is None:
        from tripletkit_hpatches.prepare import build_default

        return build_default(progress=progress) / "nhpatches"
    return data


def hold_out(train: list[str], n: int) -> tuple[list[str], list[str]]:
    """``n`` validation sequences taken from ``train``: (train, validation).

    The choice depends on the names only, never on the training seed, so every seed and preset of a study selects
    on the same sequences. It is spread over the kinds of sequence (the name's prefix: ``i``, ``v``, ``ef``,
    ``oxford``...): a seeded order of the names, then one of each kind in turn."""
    if n >= len(train):
        raise SystemExit(f"error: --val-sequences {n} leaves no training sequence (the split has {len(train)})")
    names = sorted(train)  # the same choice whatever order the split lists them in
    order = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    kinds: dict[str, list[str]] = {}
    for name in order:
        kinds.setdefault(name.split("_")[0], []).append(name)
    val: list[str] = []
    while len(val) < n:
        for members in kinds.values():
            if members and len(val) < n:
                val.append(members.pop(0))
    return [s for s in train if s not in val], sorted(val)


def load_data(
    data: Path,
    seed: int,
    progress: bool,
    tasks: Path | None = None,
    split_name: str | None = None,
    val_sequences: int = 0,
) -> tuple[PatchDataset, dict[str, list[str]]]:
    """The dataset (noised with our model when it has no noisy patches) and its split: the benchmark's
    ``split_name`` from ``tasks`` when given (every one of its sequences must be in the data), else the data's
    ``default`` (or ``a``) split. With ``val_sequences`` the split also has ``val``, held out of ``train``
    (`hold_out`); otherwise ``val`` is empty."""
    ds, split = _load_split(data, seed, progress, tasks, split_name)
    train, val = hold_out(split["train"], val_sequences) if val_sequences else (split["train"], [])
    return ds, {"train": train, "val": val, "test": split["test"]}


def _load_split(
    data: Path, seed: int, progress: bool, tasks: Path | None, split_name: str | None
) -> tuple[PatchDataset, dict[str, list[str]]]:
    ds = load_dataset(data, progress=progress)
    if not ds.noisy:  # clean release: noise it with our model so the denoiser has something to learn
        ds.noisy = {
            s: np.stack([noise_sequence(ds.patches(s), s, seed=seed)[t] for t in IMAGE_TYPES]) for s in ds.sequences
        }
    if tasks is not None:
        return ds, _benchmark_split(ds, data, tasks, split_name or "a")
    split_file = Path(data) / "splits.json"
    if split_file.exists():
        splits = json.loads(split_file.read_text())
        split = splits.get("default") or splits.get("a")
    else:
        split = make_splits(ds.sequences, seed=seed)["default"]
    split = {"train": [s for s in split["train"] if s in ds.clean], "test": [s for s in split["test"] if s in ds.clean]}
    if not split["train"] or not split["test"]:
        raise SystemExit(f"error: {data}: the split needs training and test sequences, got {split}")
    return ds, split


def _benchmark_split(ds: PatchDataset, data: Path, tasks: Path, name: str) -> dict[str, list[str]]:
    from tripletkit_hpatches.tasks import TaskFileError, load_split

    try:
        sp = load_split(tasks, name)
    except (TaskFileError, ValueError) as e:
        raise SystemExit(f"error: --tasks {tasks}: {e}") from None
    if not sp.train:
        raise SystemExit(f"error: split {name!r} of {tasks} has no training sequences; train on a, b or c")
    missing = [s for s in (*sp.train, *sp.test) if s not in ds.clean]
    if missing:
        raise SystemExit(
            f"error: {data} lacks {len(missing)} sequence(s) of split {name!r}: {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else "")
        )
    return {"train": list(sp.train), "test": list(sp.test)}


def class_labels(ds: PatchDataset, sequences: list[str]) -> np.ndarray:
    """One class per physical patch of ``sequences``, in the order of ``den[s].reshape(-1, ...)`` (image-major)."""
    counts = [ds.num_patches(s) for s in sequences]
    offsets = np.cumsum([0] + counts[:-1])
    return np.concatenate([np.tile(np.arange(n), 16) + o for n, o in zip(counts, offsets)]).astype(np.int64)
