"""Build HPatches-style datasets.

    python examples/hpatches/prepare.py extract --sequences DIR --out DIR [--max-patches 2000] [--seed 0]
    python examples/hpatches/prepare.py noise --data DIR --out DIR [--seed 0] [--strength 1.0]
    python examples/hpatches/prepare.py default [--out DIR] [--max-patches 300] [--force]
    python examples/hpatches/prepare.py download patches|sequences|tasks [--out data] [--url MIRROR] [--sha256 HEX]

``extract``: every sequence folder under DIR (``1.png``…``6.png`` + ``H_1_2``…``H_1_6``; DIR may itself be one
sequence) → the ``hpatches-release`` layout (65×65 columns), plus ``splits.json`` (seeded) and ``dataset.json``.
``noise``: an ``hpatches-release`` folder → the N-HPatches layout (32×32 ``<t>.png`` + ``<t>_noise.png``) with our
documented noise model (not the original N-HPatches noise, which was never published).
``download``: an official release (or ``--url`` mirror) with HTTP Range resume, size and digest checks, unpacked
through a temporary folder and one rename (``tripletkit_hpatches.download``).
``default``: the embedded default, built once from scikit-image's photographs (synthetic sequences, labelled so),
both layouts, cached under ``.cache/hpatches-default`` in the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tripletkit.training import atomic_write_text
from tripletkit_hpatches.data import (
    load_dataset,
    make_splits,
    write_hpatches_sequence,
    write_nhpatches_sequence,
    write_splits,
)
from tripletkit_hpatches.download import RELEASES, DownloadError, download_release
from tripletkit_hpatches.extract import SequenceFileError, extract_sequence, load_sequence
from tripletkit_hpatches.noise import noise_sequence
from tripletkit_hpatches.patches import PatchFileError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO / ".cache" / "hpatches-default"


def _sequence_folders(root: Path) -> list[Path]:
    if (root / "1.png").exists() or (root / "1.ppm").exists():
        return [root]
    folders = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and any((p / f"1{e}").exists() for e in (".png", ".ppm", ".pgm", ".jpg"))
    )
    if not folders:
        raise SequenceFileError(f"{root}: no sequence folders (each needs 1.png … 6.png and H_1_2 … H_1_6)")
    return folders


def _summary(rows: list[list], title: str) -> str:
    from tabulate import tabulate

    return (
        title
        + "\n"
        + tabulate(
            rows,
            headers=["sequence", "patches", "detections", "overlap e", "overlap h", "overlap t", "seconds"],
            tablefmt="github",
            floatfmt=".3f",
        )
    )


def extract_many(
    sequences, out: Path, max_patches: int, seed: int, synthetic: bool, progress: bool = True, total: int | None = None
) -> dict:
    """Extract every sequence of ``sequences`` (an iterable: a generator loads one sequence at a time, so the 116 of
    the sequence release are never all in memory)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    rows, overlaps = [], {"e": [], "h": [], "t": []}
    for seq in tqdm(sequences, desc="extracting", disable=not progress, total=total):
        r = extract_sequence(seq, max_patches=max_patches, seed=seed)
        write_hpatches_sequence(out, r.name, r.patches)
        rows.append(
            [r.name, len(r.patches["ref"]), r.detections, r.overlaps["e"], r.overlaps["h"], r.overlaps["t"], r.seconds]
        )
        for lv in overlaps:
            overlaps[lv].append(r.overlaps[lv])
    names = [r[0] for r in rows]
    write_splits(out, make_splits(names, seed=seed))
    meta = {
        "synthetic": synthetic,
        "protocol": "HPatches extraction (examples/hpatches/extract.py)",
        "seed": seed,
        "max_patches": max_patches,
        "median_overlap": {lv: float(sum(v) / len(v)) for lv, v in overlaps.items()},
        "sequences": {r[0]: r[1] for r in rows},
    }
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=1))
    print(_summary(rows, f"{'SYNTHETIC ' if synthetic else ''}dataset written to {out}"))
    return meta


def noise_dataset(data: Path, out: Path, seed: int, strength: float, progress: bool = True) -> None:
    from tqdm import tqdm

    ds = load_dataset(data, fmt="hpatches", size=32, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    for name in tqdm(ds.sequences, desc="noising", disable=not progress):
        clean = ds.patches(name)
        write_nhpatches_sequence(out, name, clean, noise_sequence(clean, name, seed=seed, strength=strength))
    for extra in ("splits.json", "dataset.json"):
        if (data / extra).exists():
            text = (data / extra).read_text()
            if extra == "dataset.json":
                meta = json.loads(text)
                meta["noise"] = {
                    "model": "tripletkit (examples/hpatches/noise.py), not the original N-HPatches",
                    "seed": seed,
                    "strength": strength,
                }
                text = json.dumps(meta, indent=1)
            (out / extra).write_text(text)
    print(f"N-HPatches-layout data written to {out} ({len(ds.sequences)} sequences; noise model: ours, seed {seed})")


def build_default(
    root: Path = DEFAULT_ROOT, max_patches: int = 300, seed: int = 0, force: bool = False, progress: bool = True
) -> Path:
    """Build (once) the embedded default: ``root/hpatches`` and ``root/nhpatches``; returns ``root``."""
    from tripletkit_hpatches.synthetic import load_photos, synthetic_sequences

    done = root / "nhpatches" / "dataset.json"
    if done.exists() and not force:
        return root
    t0 = time.perf_counter()
    photos = load_photos()
    extract_many(
        synthetic_sequences(photos, seed=seed), root / "hpatches", max_patches, seed, synthetic=True, progress=progress
    )
    noise_dataset(root / "hpatches", root / "nhpatches", seed, 1.0, progress=progress)
    print(
        f"embedded default (SYNTHETIC, from {len(photos)} scikit-image photographs) built in {time.perf_counter() - t0:.0f} s"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build HPatches-style patch datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="image sequences with homographies → hpatches-release layout")
    e.add_argument("--sequences", required=True, type=Path)
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--max-patches", type=int, default=2000)
    e.add_argument("--seed", type=int, default=0)
    n = sub.add_parser("noise", help="hpatches-release layout → N-HPatches layout with our noise model")
    n.add_argument("--data", required=True, type=Path)
    n.add_argument("--out", required=True, type=Path)
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--strength", type=float, default=1.0)
    d = sub.add_parser("default", help="build the embedded default from scikit-image's photographs")
    d.add_argument("--out", type=Path, default=DEFAULT_ROOT)
    d.add_argument("--max-patches", type=int, default=300)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true")
    g = sub.add_parser("download", help="fetch and unpack an HPatches release (resumable, size and digest checked)")
    g.add_argument("release", choices=list(RELEASES), help="patches (4.2 GB), sequences (1.3 GB) or tasks")
    g.add_argument("--out", type=Path, default=REPO / "data", help="unpacks to OUT/<release folder> (default: data/)")
    g.add_argument("--url", help="a mirror of the same archive (the known MD5 is still checked)")
    g.add_argument("--sha256", help="the archive's SHA-256, checked before unpacking")
    g.add_argument("--keep-archive", action="store_true", help="keep the .tar.gz after unpacking")
    g.add_argument("--retries", type=int, default=5, help="resumes after a broken connection (default 5)")
    g.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "extract":
            folders = _sequence_folders(a.sequences)
            seqs = (load_sequence(f) for f in folders)
            extract_many(seqs, a.out, a.max_patches, a.seed, synthetic=False, total=len(folders))
        elif a.cmd == "download":
            folder = download_release(
                a.release,
                a.out,
                url=a.url,
                sha256=a.sha256,
                keep_archive=a.keep_archive,
                retries=a.retries,
                quiet=a.quiet,
            )
            print(folder)
        elif a.cmd == "noise":
            noise_dataset(a.data, a.out, a.seed, a.strength)
        else:
            build_default(a.out, a.max_patches, a.seed, a.force)
    except (SequenceFileError, PatchFileError, DownloadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
