"""The study's table and figures from its finished runs: ``study.md``, ``study.json``, ``study.png``,
``study_curves.png`` and ``study_tsne.png`` in the study folder.

Every number is read from a run's own outputs (``results.json``, ``log.csv``, ``map_log.csv``); a run counts only
once the study marked it done (``done.json``). Spread over seeds is the range, max − min.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from tripletkit.training import Plateau, atomic_write_text
from tripletkit_hpatches.config import PRESETS
from tripletkit_hpatches.reports import pyplot, save_figure

__all__ = ["best_validation", "collect", "selected_evaluation", "targets", "write_report"]

TASKS = ("verification", "matching", "retrieval")
OURS = "ours (L2-Net)"
LABELS = {
    "baseline": "baseline",
    "soft-baseline": "soft baseline",
    "bh128": "batch hard 128",
    "bh1024": "batch hard 1024",
    "soft-bh1024": "soft batch hard 1024",
    "hardnet": "HardNet loss 1024",
    "augment-random": "augment random",
    "augment-pair": "augment pair",
}


def selected_evaluation(folder: Path) -> tuple[int, float]:
    """``(step, validation matching mAP)`` of the evaluation whose weights the run's ``descriptor.pt`` holds.

    ``train.py`` saves the weights of an evaluation only when the plateau rule counts it as an improvement: above
    the best so far by more than ``--plateau-delta``. So the selected evaluation is the last such one, replayed here
    with the same rule over ``map_log.csv``; it is not always the maximum, which can beat the selected one by less
    than the delta. (``map_log.csv`` holds 6 decimals: only a gain within 1e-6 of the delta could be judged
    differently.)
    """
    config = json.loads((folder / "config.json").read_text())
    if not config.get("plateau"):
        raise ValueError(
            f"{folder} was trained without a plateau rule (--plateau 0): it tested its last weights, not a selected "
            "evaluation"
        )
    maps = pd.read_csv(folder / "map_log.csv")
    if maps.empty:
        raise ValueError(f"{folder / 'map_log.csv'} has no evaluation: the run selected no weights")
    rule = Plateau(int(config["plateau"]), min_delta=float(config["plateau_delta"]))
    for step, score in zip(maps["step"], maps["matching_map"]):
        rule.update(float(score), int(step))
    assert rule.best_step is not None and rule.best is not None  # the first evaluation always improves
    return rule.best_step, rule.best


def best_validation(folder: Path) -> float:
    """The validation matching mAP of the evaluation the run selected (see `selected_evaluation`)."""
    return selected_evaluation(folder)[1]


def _definition(folder: Path) -> str | None:
    """How the run's margin differs from its preset's: ``"margin 0.1"``, ``"temperature 0.1"`` (None: as the preset)."""
    config = json.loads((folder / "config.json").read_text())
    preset = PRESETS.get(config["experiment"], {})
    changed = []
    if config["margin"] != preset.get("margin", config["margin"]):
        changed.append(f"margin {config['margin']:g}")
    # runs from before the flag existed trained at τ = 1
    temperature = config.get("margin_temperature", 1.0)
    if config["margin_fn"] == "softplus" and temperature != preset.get("margin_temperature", 1.0):
        changed.append(f"temperature {temperature:g}")
    return ", ".join(changed) or None


def _patches_used(folder: Path, log: pd.DataFrame) -> int:
    """Training patches used: the log's batch column is the size after each step, so each step used the previous
    row's (the first step: the first stage's S×K)."""
    s, k = json.loads((folder / "config.json").read_text())["stages_sk"].split(",")[0].split("x")
    return int(s) * int(k) + int(log["batch"].iloc[:-1].sum())


def _run_row(folder: Path) -> dict:
    res = json.loads((folder / "results.json").read_text())
    log = pd.read_csv(folder / "log.csv")
    step, score = selected_evaluation(folder)
    return {
        **{t: res[OURS][t] for t in TASKS},
        "val_matching": score,
        "selected_step": step,
        "definition": _definition(folder),
        "steps": int(log["step"].max()),
        "patches": _patches_used(folder, log),
        "largest_batch": int(log["batch"].max()),
        "largest_batch_at_selection": int(log.loc[log["step"] <= step, "batch"].max()),
        "sift": {t: res["SIFT"][t] for t in TASKS},
        "raw": {t: res["raw pixels"][t] for t in TASKS},
    }


def collect(out: Path) -> dict[str, dict[int, dict]]:
    """``{row: {seed: numbers}}`` for every run of ``out/runs`` marked done (the remedy runs aside)."""
    rows: dict[str, dict[int, dict]] = {}
    for done in sorted((out / "runs").glob("*/done.json")):
        row, seed = done.parent.name.rsplit("-s", 1)
        if not row.startswith("remedy-"):
            rows.setdefault(row, {})[int(seed)] = _run_row(done.parent)
    return rows


def remedy_row(folder: Path) -> dict:
    """What a remedy run's log says about its stages: the largest batch, when each batch size was first reached,
    how often the guard went back, and the loss against the threshold at the end."""
    log = pd.read_csv(folder / "log.csv")
    first = {int(b): int(log.loc[log["batch"] == b, "step"].min()) for b in sorted(log["batch"].unique())}
    return {
        "largest_batch": int(log["batch"].max()),
        "first_step_at_batch": first,
        "steps_back": int((log["batch"].diff() < 0).sum()),
        "steps": int(log["step"].max()),
        "patches": _patches_used(folder, log),
        "final_loss_ema": float(log["loss"].ewm(alpha=0.05).mean().iloc[-1]),
    }


def remedies(out: Path) -> dict[str, dict]:
    return {
        d.parent.name.rsplit("-s", 1)[0].removeprefix("remedy-"): remedy_row(d.parent)
        for d in sorted((out / "runs").glob("remedy-*/done.json"))
    }


def _stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "spread": float(np.ptp(values)), "values": [float(v) for v in values]}


def targets(table: dict[str, dict], chosen: str | None) -> list[dict]:
    """The issue's three targets, each with the numbers it was judged on (None where a row is missing)."""
    out = []
    sift, raw = table.get("SIFT"), table.get("raw pixels")
    best = table.get(chosen) if chosen else None
    if best and sift:
        gains = {t: best[t]["mean"] - sift[t]["mean"] for t in ("matching", "retrieval")}
        out.append(
            {
                "target": f"the best preset by validation ({chosen}) beats SIFT by >= 0.10 on matching and retrieval",
                "numbers": gains,
                "met": all(g >= 0.10 for g in gains.values()),
            }
        )
    if "bh1024" in table and "bh128" in table:
        a, b = table["bh1024"], table["bh128"]
        gaps = {
            t: {"gain": a[t]["mean"] - b[t]["mean"], "spread": max(a[t]["spread"], b[t]["spread"])}
            for t in ("matching", "retrieval")
        }
        out.append(
            {
                "target": "BH1024 beats BH128 on matching and retrieval by more than the seed spread",
                "numbers": gaps,
                "met": all(g["gain"] > g["spread"] for g in gaps.values()),
            }
        )
    if "baseline" in table and raw:
        gains = {t: table["baseline"][t]["mean"] - raw[t]["mean"] for t in TASKS}
        out.append(
            {
                "target": "the baseline beats raw pixels on all three tasks",
                "numbers": gains,
                "met": all(g > 0 for g in gains.values()),
            }
        )
    return out


def _label(row: str, entry: dict, augment_from: str | None = None) -> str:
    """The row's name in the table and plots; a margin other than its preset's is part of what the row is."""
    label = LABELS.get(row, row) + (f" ({augment_from})" if row.startswith("augment") and augment_from else "")
    return label + (f" ({entry['definition']})" if entry.get("definition") else "")


def _rounded(value):
    """Floats to 4 decimals, inside dicts too (``json.dumps`` calls no ``default`` for a float)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4f} ± {s['spread']:.4f}" if len(s["values"]) > 1 else f"{s['mean']:.4f}"


def write_report(out: Path, augment_from: str | None = None) -> str:
    """Writes the table and figures; returns the markdown."""
    runs = collect(out)
    fixes = remedies(out)
    if fixes:
        _remedy_curves(out, list(fixes), out / "study_remedies.png")
    if not runs:
        return f"no finished runs in {out / 'runs'} yet" + _remedy_table(fixes)
    table: dict[str, dict] = {}
    any_run = next(iter(next(iter(runs.values())).values()))
    for name, key in (("SIFT", "sift"), ("raw pixels", "raw")):
        values = {json.dumps(r[key], sort_keys=True) for seeds in runs.values() for r in seeds.values()}
        if len(values) != 1:  # one denoiser, one task set: every run must see the same SIFT and raw-pixel numbers
            raise ValueError(f"{name} differs between the runs of {out}: they did not share the denoiser and tasks")
        table[name] = {t: _stat([any_run[key][t]]) for t in TASKS}
    for row in (r for r in LABELS if r in runs):
        seeds = runs[row]
        definitions = {seeds[s]["definition"] for s in seeds}
        if len(definitions) != 1:  # one row, one definition: its seeds must not be mixed across margins
            raise ValueError(
                f"the runs of {row} in {out / 'runs'} differ in their margin: {sorted(definitions, key=str)}"
            )
        table[row] = {t: _stat([seeds[s][t] for s in sorted(seeds)]) for t in TASKS} | {
            "seeds": sorted(seeds),
            "val_matching": _stat([seeds[s]["val_matching"] for s in sorted(seeds)]),
            "largest_batch": [seeds[s]["largest_batch"] for s in sorted(seeds)],
            "largest_batch_at_selection": [seeds[s]["largest_batch_at_selection"] for s in sorted(seeds)],
            "patches": [seeds[s]["patches"] for s in sorted(seeds)],
            "definition": definitions.pop(),
        }
    # the best batch-hard row by validation (never by the test columns): the augmentation's choice once every
    # batch-hard row is done, else the best of those that are
    candidates = [r for r in ("bh128", "bh1024", "soft-bh1024", "hardnet") if r in table]
    chosen = augment_from or (max(candidates, key=lambda r: table[r]["val_matching"]["mean"]) if candidates else None)
    checks = targets(table, chosen)
    lines = [
        "| | seeds | verification | matching | retrieval | validation matching | largest batch (at selection) | patches trained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("SIFT", "raw pixels"):
        lines.append(f"| {name} | | " + " | ".join(_fmt(table[name][t]) for t in TASKS) + " | | | |")
    for row in (r for r in LABELS if r in table):
        e = table[row]
        label = _label(row, e, augment_from)
        batches = ", ".join(f"{a} ({b})" for a, b in zip(e["largest_batch"], e["largest_batch_at_selection"]))
        lines.append(
            f"| {label} | {', '.join(map(str, e['seeds']))} | "
            + " | ".join(_fmt(e[t]) for t in TASKS)
            + f" | {_fmt(e['val_matching'])} | {batches} | {', '.join(f'{p:,}' for p in e['patches'])} |"
        )
    lines += [
        "",
        f"Best batch-hard row by validation matching mAP: {_label(chosen, table[chosen]) if chosen else 'none yet'}.",
        "",
    ]
    lines += ["Targets (computed from the table above):", ""]
    for c in checks:
        nums = json.dumps(_rounded(c["numbers"]))
        lines.append(f"- {'met' if c['met'] else 'NOT met'}: {c['target']} — {nums}")
    text = "\n".join(lines) + "\n" + _remedy_table(fixes)
    atomic_write_text(out / "study.md", text)
    atomic_write_text(
        out / "study.json",
        json.dumps(
            {"table": table, "augment_from": augment_from, "chosen": chosen, "targets": checks, "remedies": fixes},
            indent=1,
        ),
    )
    _bars(table, out / "study.png", augment_from)
    _curves(out, runs, out / "study_curves.png")
    if chosen and (out / "runs" / f"{chosen}-s0" / "tsne.png").exists():
        shutil.copyfile(out / "runs" / f"{chosen}-s0" / "tsne.png", out / "study_tsne.png")
    return text


def _remedy_table(fixes: dict[str, dict]) -> str:
    if not fixes:
        return ""
    lines = [
        "",
        "Remedies (bh1024 from the baseline, a fixed patch budget):",
        "",
        "| remedy | largest batch | first step at each batch | steps back | loss EMA at the end | patches |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in fixes.items():
        firsts = ", ".join(f"{b}: {s}" for b, s in r["first_step_at_batch"].items())
        lines.append(
            f"| {name} | {r['largest_batch']} | {firsts} | {r['steps_back']} | {r['final_loss_ema']:.4f} | "
            f"{r['patches']:,} |"
        )
    return "\n".join(lines) + "\n"


def _remedy_curves(out: Path, names: list[str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 2.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        folder = out / "runs" / f"remedy-{name}-s0"
        log = pd.read_csv(folder / "log.csv")
        factor = json.loads((folder / "config.json").read_text())["threshold_factor"]
        ax.plot(log["step"], log["loss"], lw=0.3, alpha=0.4, color="C0")
        ax.plot(log["step"], log["loss"].ewm(alpha=0.05).mean(), lw=1.2, color="C0")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        if factor != 1.0:
            ax.axhline(factor, color="C1", lw=0.8, ls="-.")
        for st in log["step"][log["batch"].diff().fillna(0) != 0]:
            ax.axvline(st, color="k", lw=0.5, ls=":")
        twin = ax.twinx()
        twin.step(log["step"], log["batch"], where="post", color="C3", lw=1)
        twin.set_ylabel("batch", color="C3")
        ax.set_title(
            f"remedy: {name} (dashed: the collapse value; dash-dot: the threshold {factor} × it; dotted: stage changes)",
            fontsize=9,
        )
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, path, tight=True)
    plt.close(fig)


def _bars(table: dict, path: Path, augment_from: str | None) -> None:
    plt = pyplot()
    names = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, t in zip(axes, TASKS):
        means = [table[n][t]["mean"] for n in names]
        # whiskers from the lowest seed to the highest: with more than two seeds the mean is not their midpoint
        errs = np.array(
            [[m - min(table[n][t]["values"]), max(table[n][t]["values"]) - m] for n, m in zip(names, means)]
        ).T
        ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=["grey", "lightgrey"] + ["C0"] * (len(names) - 2))
        ax.set_xticks(
            range(len(names)), [_label(n, table[n], augment_from) for n in names], rotation=60, ha="right", fontsize=8
        )
        ax.set_title(f"{t} mAP")
    # one title for the three panels: three long ones overlap at this width
    fig.suptitle("test sequences; bars: mean over the seeds, whiskers: the lowest seed to the highest")
    save_figure(fig, path, tight=True)
    plt.close(fig)


def _curves(out: Path, runs: dict, path: Path) -> None:
    """Per preset (the first seed): the training loss with the batch size of each stage and its stage changes, and
    validation matching mAP over the steps."""
    plt = pyplot()
    rows = [r for r in LABELS if r in runs]
    fig, axes = plt.subplots(len(rows), 2, figsize=(14, 3 * len(rows)), squeeze=False)
    for (ax, ax2), row in zip(axes, rows):
        seed = min(runs[row])
        folder = out / "runs" / f"{row}-s{seed}"
        log, maps = pd.read_csv(folder / "log.csv"), pd.read_csv(folder / "map_log.csv")
        smooth = log["loss"].ewm(alpha=0.05).mean()
        ax.plot(log["step"], log["loss"], lw=0.3, alpha=0.4, color="C0")
        ax.plot(log["step"], smooth, lw=1.2, color="C0", label="loss (EMA)")
        changes = log["step"][log["batch"].diff().fillna(0) != 0]
        for s in changes:
            ax.axvline(s, color="k", lw=0.5, ls=":")
        twin = ax.twinx()
        twin.step(log["step"], log["batch"], where="post", color="C3", lw=1)
        twin.set_ylabel("batch", color="C3")
        ax.set_title(
            f"{_label(row, runs[row][seed])} (seed {seed}): loss and batch size (dotted: stage changes)",
            fontsize=9,
        )
        ax.set_xlabel("step")
        # against the patches used, the axis on which the rows' budgets are equal (steps are not, across batch sizes)
        s0, k0 = json.loads((folder / "config.json").read_text())["stages_sk"].split(",")[0].split("x")
        used = np.concatenate([[int(s0) * int(k0)], log["batch"].to_numpy()[:-1]])
        seen = pd.Series(np.cumsum(used), index=log["step"])
        ax2.plot(seen[maps["step"]].to_numpy(), maps["matching_map"], marker=".", color="C2")
        ax2.axvline(seen[runs[row][seed]["selected_step"]], color="C2", ls="--", lw=0.8)
        ax2.set_title("validation matching mAP (dashed: the selected evaluation)", fontsize=9)
        ax2.set_xlabel("training patches used")
    fig.tight_layout()
    save_figure(fig, path, tight=True)
    plt.close(fig)
