"""Published HPatches results of other descriptors, with where each number comes from.

The numbers (mAP in %, as the benchmark prints them) and their provenance were gathered into
``../shared/data/hpatches-reference-results/published_numbers.csv`` from the benchmark's result pickles, its results
PDF, HardNet's figures and the N-HPatches coursework; this module holds them as data (the file is not read at run
time). A blank cell there is ``None`` here: that task was not published for that descriptor and split.

The python benchmark's numbers are on the **clean** patches of the release. Rows whose ``split`` is
``a (N-HPatches noisy)`` are on N-HPatches' noisy test patches (a noise we cannot reproduce: it was never published).
Ours are on our own noise model after our denoiser, so the rows sit side by side for orientation, not as a like-for-like
comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Published", "PUBLISHED", "OFFICIAL_SPLITS", "published_for", "is_official_split", "published_table"]


@dataclass(frozen=True)
class Published:
    descriptor: str
    training_data: str
    split: str
    implementation: str
    verification: float | None  # mAP, %
    matching: float | None
    retrieval: float | None
    source: str
    how_obtained: str

    def as_dict(self) -> dict:
        return asdict(self) | {"published": True}


PUBLISHED: tuple[Published, ...] = (
    Published(
        "SIFT",
        "none",
        "full",
        "python(iago-suarez fork)",
        65.12,
        25.47,
        None,
        "iago-suarez/hpatches-benchmark@e13464a python/results/sift_{verification|matching}_full.p",
        "computed here from stored result pickles",
    ),
    Published(
        "SIFT",
        "none",
        "a",
        "python(iago-suarez fork)",
        63.35,
        24.42,
        42.10,
        "iago-suarez/hpatches-benchmark@e13464a python/hpatches_results.pdf + sift_*_a.p",
        "pickles + text of results PDF",
    ),
    Published(
        "RootSIFT",
        "none",
        "full",
        "python(iago-suarez fork)",
        58.53,
        27.22,
        None,
        "iago-suarez/hpatches-benchmark@e13464a python/results/rootsift_*_full.p",
        "computed here from pickles (matching 27.22 equals DagnyT/hardnet figure rSIFT)",
    ),
    Published(
        "rSIFT",
        "none",
        "full",
        "python",
        None,
        27.22,
        42.49,
        "DagnyT/hardnet@35bc1d7 img/hardnet_hpatches.png",
        "transcribed from figure",
    ),
    Published(
        "TFeat-M*",
        "Liberty",
        "full",
        "python",
        81.90,
        32.64,
        52.03,
        "verification: iago pickle tfeat-margin-star_verification_full.p; matching/retrieval: DagnyT/hardnet img/hardnet_hpatches.png",
        "pickle + figure (pickle matching = 32.68)",
    ),
    Published(
        "HardTFeat",
        "Liberty",
        "full",
        "python",
        None,
        38.07,
        55.12,
        "DagnyT/hardnet img/hardnet_hpatches.png",
        "transcribed from figure",
    ),
    Published(
        "L2Net",
        "Liberty",
        "full",
        "python",
        None,
        40.82,
        59.64,
        "DagnyT/hardnet img/hardnet_hpatches.png",
        "transcribed from figure",
    ),
    Published(
        "L2Net+",
        "Liberty(+aug)",
        "full",
        "python",
        None,
        45.04,
        63.37,
        "DagnyT/hardnet img/hardnet_hpatches.png",
        "transcribed from figure",
    ),
    Published(
        "HardNetNIPS",
        "Liberty",
        "full",
        "python",
        None,
        48.24,
        65.26,
        "DagnyT/hardnet img/hardnet_hpatches.png",
        "transcribed from figure",
    ),
    Published(
        "HardNet+NIPS",
        "Liberty(+aug)",
        "full",
        "python",
        87.12,
        50.38,
        66.82,
        "DagnyT/hardnet img/hardnet-datasets.png (LibertyNIPS) + img/hardnet_hpatches.png",
        "transcribed from figures",
    ),
    Published(
        "HardNet",
        "Liberty",
        "full",
        "python",
        None,
        52.18,
        69.44,
        "DagnyT/hardnet img/hardnet_hpatches.png",
        "transcribed from figure",
    ),
    Published(
        "HardNet+",
        "Liberty(+aug)",
        "full",
        "python",
        88.43,
        52.76,
        69.66,
        "DagnyT/hardnet img/hardnet-datasets.png (Liberty) and img/hardnet_hpatches.png; iago pickle hardnet+ gives 88.43/52.79",
        "figures + pickles",
    ),
    Published(
        "HardNet+",
        "Liberty(+aug)",
        "a",
        "python(iago-suarez fork)",
        87.77,
        50.66,
        69.27,
        "iago-suarez/hpatches-benchmark python/hpatches_results.pdf",
        "text of results PDF",
    ),
    Published(
        "HardNet (6Brown)",
        "Liberty+NotreDame+Yosemite",
        "full",
        "python",
        89.29,
        54.64,
        72.66,
        "DagnyT/hardnet img/hardnet-datasets.png (FullBrown6)",
        "transcribed from figure",
    ),
    Published(
        "HardNetPS",
        "PS dataset (Mitra et al.)",
        "full",
        "python",
        91.81,
        58.01,
        75.16,
        "DagnyT/hardnet img/hardnet-datasets.png (PhotoSync)",
        "transcribed from figure",
    ),
    Published(
        "HardNet+ (matlab retrieval)",
        "Liberty(+aug)",
        "full",
        "matlab",
        None,
        None,
        60.64,
        "hpatches/hpatches-benchmark issue #32 and DagnyT/hardnet issue #36",
        "user report: python 69.66 vs matlab 60.64 for the same descriptor files",
    ),
    Published(
        "SOSNet",
        "see note (released weights: liberty/notredame/yosemite/hpatches_a)",
        "full",
        "python(iago-suarez fork)",
        88.48,
        53.75,
        None,
        "iago-suarez/hpatches-benchmark@e13464a python/results/SOSNet_*_full.p",
        "computed here from pickles; training set of that SOSNet run not recorded",
    ),
    Published(
        "DOAP-Lib-128f",
        "Liberty",
        "full",
        "python(iago-suarez fork)",
        88.37,
        51.39,
        None,
        "iago-suarez pickles",
        "computed here",
    ),
    Published(
        "CDbin-256b (64x64)",
        "?",
        "full",
        "python(iago-suarez fork)",
        85.32,
        44.62,
        None,
        "iago-suarez pickles",
        "computed here",
    ),
    Published(
        "BinBoost", "", "full", "python(iago-suarez fork)", 65.62, 14.76, None, "iago-suarez pickles", "computed here"
    ),
    Published(
        "BinBoost",
        "",
        "a",
        "python(iago-suarez fork)",
        64.72,
        13.19,
        32.64,
        "iago-suarez results PDF",
        "text of results PDF",
    ),
    Published(
        "ORB", "none", "full", "python(iago-suarez fork)", 59.11, 15.33, None, "iago-suarez pickles", "computed here"
    ),
    Published(
        "ORB",
        "none",
        "a",
        "python(iago-suarez fork)",
        58.21,
        13.86,
        28.27,
        "iago-suarez results PDF",
        "text of results PDF",
    ),
    Published(
        "BRIEF", "none", "full", "python(iago-suarez fork)", 56.88, 10.48, None, "iago-suarez pickles", "computed here"
    ),
    Published(
        "BRIEF",
        "none",
        "a",
        "python(iago-suarez fork)",
        56.56,
        9.21,
        24.96,
        "iago-suarez results PDF",
        "text of results PDF",
    ),
    Published(
        "N-HPatches baseline (shallow U-Net + L2-Net/HardNet-arch triplet; 1 epoch; noisy test)",
        "N-HPatches split a train",
        "a (N-HPatches noisy)",
        "python (coursework copy)",
        71.49,
        10.43,
        35.90,
        "MatchLab-Imperial/keras_triplet_descriptor@cc89265 Baseline_code.ipynb outputs",
        "notebook outputs (fractions x100)",
    ),
    Published(
        "N-HPatches baseline 20 epochs (student report)",
        "N-HPatches split a train",
        "a (N-HPatches noisy)",
        "python (coursework copy)",
        78.65,
        19.08,
        48.91,
        "desmondsy/ee3-25 report.pdf Table 2",
        "report text",
    ),
    Published(
        "N-HPatches baseline 20 epochs (student report)",
        "N-HPatches split a train",
        "a (N-HPatches noisy)",
        "python (coursework copy)",
        80.2,
        19.6,
        48.9,
        "CliveWongTohSoon/EE3-25-...-CW3915 cw3915_report.pdf abstract",
        "report text",
    ),
)


def published_for(split: str) -> list[Published]:
    """The rows for benchmark split ``split`` (``a``, ``full``…), plus N-HPatches' noisy split-a rows for ``a``."""
    return [p for p in PUBLISHED if p.split == split or (split == "a" and p.split.startswith("a (N-HPatches"))]


# the benchmark's split names, and how many test sequences each has (tasks/splits/splits.json)
OFFICIAL_SPLITS = {"a": 40, "b": 40, "c": 40, "full": 116, "illum": 57, "view": 59}


def is_official_split(tasks_dir, split: str, test: list[str]) -> bool:
    """Whether an evaluation ran on one of the benchmark's own splits: its name and test-set size, and the
    sequence names of the release (``i_*``/``v_*``). Only then do published numbers belong beside ours."""
    return (
        OFFICIAL_SPLITS.get(split) == len(test) and all(s[:2] in ("i_", "v_") for s in test) and tasks_dir is not None
    )


def published_table(rows: list[dict], split: str) -> str:
    """A markdown table of published rows (mAP %), each marked published, with its source."""
    from tabulate import tabulate

    def cell(v):
        return "" if v is None else f"{v:.2f}"

    table = [
        [r["descriptor"], r["split"], cell(r["verification"]), cell(r["matching"]), cell(r["retrieval"]), r["source"]]
        for r in rows
    ]
    return (
        f"Published results, split {split} (mAP %; published, not measured here; the benchmark's are on the clean "
        "release):\n\n"
        + tabulate(
            table, headers=["descriptor", "split", "verification", "matching", "retrieval", "source"], tablefmt="github"
        )
    )
