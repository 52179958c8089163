"""What a person looks at after a run: ``results.md`` and figures, the t-SNE, the learning curves, the experiments
table. Every number here was computed by a stage; this module only lays it out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tripletkit.training import atomic_write_bytes, atomic_write_text, probe_indices
from tripletkit_hpatches.config import Config
from tripletkit_hpatches.data import PatchDataset
from tripletkit_hpatches.evaluate import results_figure
from tripletkit_hpatches.published import published_table
from tripletkit_hpatches.stages.data import class_labels
from tripletkit_hpatches.stages.evaluate import OURS, Evaluation

__all__ = ["save_figure", "pyplot", "write_results", "comparison_figure", "tsne_figure", "curves", "experiments_table"]

TASKS = ("verification", "matching", "retrieval")


def save_figure(fig, path: Path, tight: bool = False) -> None:
    """A figure as PNG, written atomically (a kill leaves the previous file or none, never half a PNG). ``tight``
    crops to what is drawn (long tick labels outside the axes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png", bbox_inches="tight" if tight else None)
    atomic_write_bytes(path, buf.getvalue())


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display on a training machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_results(cfg: Config, ds: PatchDataset, ev: Evaluation) -> str:
    """``results.md``, ``results.png`` (our descriptor per task and level) and ``tsne.png``; returns the markdown."""
    from tabulate import tabulate

    where = "SYNTHETIC embedded default" if ds.synthetic else cfg.data
    results_figure(
        ev.ours,
        cfg.out / "results.png",
        title=f"{OURS} on {'SYNTHETIC ' if ds.synthetic else ''}data ({len(ev.test)} test sequences)",
    )
    tsne_figure(cfg, ds, ev)
    table = [[name, r["verification"], r["matching"], r["retrieval"]] for name, r in ev.summary.items()]
    md = [
        f"# Results ({where}; {len(ev.test)} test sequences; ties: reference)",
        "",
        tabulate(table, headers=["descriptor", *TASKS], tablefmt="github", floatfmt=".4f"),
        "",
    ]
    if ev.published:
        md += [published_table(ev.published, cfg.split or ""), ""]
        comparison_figure(ev.summary, ev.published, cfg.out / "comparison.png", cfg.split or "")
        md += ["![ours beside published descriptors](comparison.png)", ""]
    text = "\n".join(md)
    atomic_write_text(cfg.out / "results.md", text)
    return text


def comparison_figure(measured: dict[str, dict], published: list[dict], path: Path, split: str) -> None:
    """One panel per task: the descriptors measured in this run (solid) and the published ones (hatched, labelled
    "published"), sorted by score; mAP in %."""
    plt = pyplot()
    rows = [(name, {t: 100 * r[t] for t in TASKS}, False) for name, r in measured.items()]

    def short(name: str) -> str:  # the full names and sources are in results.md
        return name if len(name) <= 30 else name[:29] + "…"

    rows += [(f"{short(p['descriptor'])} (published)", {t: p[t] for t in TASKS}, True) for p in published]
    fig, axes = plt.subplots(1, 3, figsize=(18, 0.35 * len(rows) + 1.6))
    for ax, task in zip(axes, TASKS):
        have = sorted([r for r in rows if r[1][task] is not None], key=lambda r: r[1][task])
        y = np.arange(len(have))
        ax.barh(
            y,
            [r[1][task] for r in have],
            color=["#bbbbbb" if r[2] else "#1f77b4" for r in have],
            hatch=None,
            edgecolor="k",
        )
        for yi, r in zip(y, have):
            if r[2]:
                ax.barh(yi, r[1][task], color="none", hatch="//", edgecolor="#555555")
            ax.text(r[1][task] + 0.5, yi, f"{r[1][task]:.2f}", va="center", fontsize=8)
        ax.set_yticks(y, [r[0] for r in have], fontsize=8)
        ax.set_xlim(0, 105)
        ax.set_title(f"{task} mAP %")
    fig.suptitle(f"HPatches split {split}: this run (solid) beside published results (hatched)")
    fig.tight_layout()
    fig.subplots_adjust(wspace=0.75)
    save_figure(fig, path)
    plt.close(fig)


def tsne_figure(cfg: Config, ds: PatchDataset, ev: Evaluation) -> None:
    """t-SNE of the descriptors of one S×K batch of test patches (S = 16 classes × K = 8 images), as in the study:
    separated clusters for a healthy descriptor, one blob for a collapsed one."""
    from sklearn.manifold import TSNE

    patches = np.concatenate([ev.denoised[s].reshape(-1, ds.size, ds.size) for s in ev.test])
    batch = probe_indices(class_labels(ds, ev.test), S=16, K=8, seed=cfg.seed)
    k = len(batch) // len(set(class_labels(ds, ev.test)[batch]))
    model = ev.model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        emb = model(torch.from_numpy(patches[batch]).float()[:, None].to(device)).cpu().numpy()
    xy = TSNE(n_components=2, perplexity=min(30, len(batch) - 1) / 2, init="pca", random_state=cfg.seed).fit_transform(
        emb
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(xy[:, 0], xy[:, 1], c=np.repeat(np.arange(len(batch) // k), k), cmap="tab20", s=18)
    ax.set_title(f"t-SNE of one {len(batch) // k}×{k} test batch")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, cfg.out / "tsne.png")
    plt.close(fig)


def curves(out: Path) -> None:
    """``curves.png``: the denoiser's L1, the descriptor's loss with its batch size, the matching-mAP curve."""
    import pandas as pd

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    if (out / "denoise_log.csv").exists():
        d = pd.read_csv(out / "denoise_log.csv")
        axes[0].plot(d.step, d.l1, label="denoiser L1")
        axes[0].plot(d.step, d.identity_l1, label="identity L1", alpha=0.6)
        axes[0].set(xlabel="step", ylabel="grey levels", title="denoise")
        axes[0].legend()
    if (out / "log.csv").exists():
        d = pd.read_csv(out / "log.csv")
        axes[1].plot(d.step, d.loss, lw=0.6, label="loss")
        ax2 = axes[1].twinx()
        ax2.step(d.step, d.batch, color="C3", where="post", label="batch size")
        ax2.set_ylabel("batch size")
        axes[1].set(xlabel="step", ylabel="triplet loss", title="descriptor")
    if (out / "map_log.csv").exists():
        d = pd.read_csv(out / "map_log.csv")
        if len(d):
            axes[2].plot(d.step, d.matching_map, marker="o")
        axes[2].set(xlabel="step", ylabel="matching mAP", title="matching mAP (3 test sequences × 500 patches)")
    fig.tight_layout()
    save_figure(fig, out / "curves.png")
    plt.close(fig)


def experiments_table(out: Path, table: dict[str, dict]) -> str:
    """The study's table (``experiments.md``, ``.json``, ``.png``): one row per preset, then the baselines evaluated
    on each denoiser's output. ``table`` maps a preset to its results summary."""
    from tabulate import tabulate

    rows, baselines = [], {}
    for name, res in table.items():
        config = json.loads((out / name / "config.json").read_text())
        start = Path(config["init_descriptor"]).parent.name if config.get("init_descriptor") else "scratch"
        rows.append(
            [name, config["denoiser"], config["miner"], config["margin_fn"], config["stages_sk"], start]
            + [res[OURS][t] for t in TASKS]
        )
        for base in ("SIFT", "raw pixels"):
            baselines.setdefault((base, config["denoiser"]), [res[base][t] for t in TASKS])
    for (base, den), vals in baselines.items():
        rows.append([base, den, "", "", "", ""] + vals)
    config = json.loads((out / next(iter(table)) / "config.json").read_text())
    data = "SYNTHETIC embedded default" if config.get("synthetic_data") else config["data"]
    md = [
        f"# The study's experiments on {data} ({len(config['split_sequences']['test'])} test sequences held out from training)",
        "",
        tabulate(
            rows,
            headers=["experiment", "denoiser", "miner", "margin", "S×K stages", "starts from", *TASKS],
            tablefmt="github",
            floatfmt=".4f",
        ),
        "",
    ]
    text = "\n".join(md)
    atomic_write_text(out / "experiments.md", text)
    atomic_write_text(
        out / "experiments.json",
        json.dumps({r[0] + ("" if r[0] in table else f" ({r[1]})"): dict(zip(TASKS, r[6:])) for r in rows}, indent=1),
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar(np.arange(3) + i * width, r[6:], width, label=r[0] if r[0] in table else f"{r[0]} ({r[1]})")
    ax.set_xticks(np.arange(3) + 0.4 - width / 2)
    ax.set_xticklabels(TASKS)
    ax.set_ylabel("mAP")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, out / "experiments.png")
    plt.close(fig)
    return text
