"""Turn pytest-benchmark's JSON into tables (pandas + tabulate), a plot, and docs/benchmarks.md.

    pytest bench/ --benchmark-only --benchmark-json=bench/results.json
    python -m bench.report bench/results.json            # prints the tables, writes docs/benchmarks.md + .png

Times are medians of the measured rounds; ratios are taken within the one run, so they compare like with like.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from tripletkit.training.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

# (description, loss, n values, metric, target, how the ratio is formed)
TARGETS = [
    ("batch-hard ≥ 3× faster than PML", "batch_hard", [1024, 2048, 4096], "pml_over_ours", 3.0, ">="),
    ("batch-all ≥ 10× faster than PML", "batch_all", [1024], "pml_over_ours", 10.0, ">="),
    ("batch-all peak memory growth < 512 MiB", "batch_all", [4096], "ours_mib", 512.0, "<"),
    ("batch-hard ≤ 2.5× the N×N distance floor", "batch_hard", [4096], "ours_over_floor", 2.5, "<="),
    ("batch-hard at least as fast as OML", "batch_hard", [1024, 4096], "oml_over_ours", 1.0, ">="),
    ("batch-all at least as fast as OML", "batch_all", [128, 512], "oml_over_ours", 1.0, ">="),
    ("cross-batch memory at least as fast as PML's", "xbm", [128, 1024], "pml_over_ours", 1.0, ">="),
    ("HardNet's loss at least as fast as its dense form", "hardnet", [512], "naive_over_ours", 1.0, ">="),
    ("semi-hard at least as fast as the dense (TFA-style) form", "semihard", [512], "naive_over_ours", 1.0, ">="),
]


def _read(paths: list[Path]) -> dict:
    """One or more pytest-benchmark JSON files as one (benchmarks concatenated; a later file's row replaces an
    earlier one of the same name, so a suite can be re-run alone)."""
    merged: dict = {}
    by_name: dict = {}
    for path in paths:
        data = json.loads(path.read_text())
        merged = merged or data
        for b in data["benchmarks"]:
            by_name[b["fullname"]] = b
    merged["benchmarks"] = list(by_name.values())
    return merged


def evaluation_table(paths: list[Path]) -> str | None:
    """The HPatches evaluation suite: ours vs the reference algorithm per task, and the split-a-sized run."""
    data = _read(paths)
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("suite") != "evaluation":
            continue
        for task in ("verification", "matching", "retrieval"):
            ours = info.get(f"{task}_ours_s")
            refs = info.get(f"{task}_reference_s")
            rows.append(
                [
                    info["size"],
                    info.get("threads", ""),
                    task,
                    f"{ours:.2f}" if ours is not None else "",
                    f"{refs:.2f}" if refs is not None else "",
                    f"{refs / ours:.1f}×" if refs and ours else "",
                    f"{info[f'{task}_abs_diff']:.1e}" if f"{task}_abs_diff" in info else "",
                ]
            )
        if info["size"] == "reduced":
            total_o = sum(info[f"{t}_ours_s"] for t in ("verification", "matching", "retrieval"))
            total_r = sum(info[f"{t}_reference_s"] for t in ("verification", "matching", "retrieval"))
            rows.append(
                [
                    "reduced",
                    info.get("threads", ""),
                    "all three",
                    f"{total_o:.2f}",
                    f"{total_r:.2f}",
                    f"{total_r / total_o:.1f}×",
                    "",
                ]
            )
    parts = []
    if rows:
        parts.append(
            tabulate(
                rows,
                headers=["split", "threads", "task", "ours s", "reference s", "speed-up", "|Δ mAP|"],
                tablefmt="github",
            )
        )
    e2e = end_to_end_table(data)
    if e2e:
        parts.append(e2e)
    return "\n\n".join(parts) or None


def end_to_end_table(data: dict) -> str | None:
    """Fresh processes, launch to exit: ours (median of its runs) against the reference, and the full-size run."""
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("suite") not in ("evaluation-e2e", "evaluation-full"):
            continue
        ref = info.get("reference_wall_s")
        literal = info.get("literal_wall_s")
        parts = info.get("ours_parts_s", {})
        rows.append(
            [
                info["size"],
                info.get("threads", ""),
                f"{info['ours_wall_s']:.2f}",
                " / ".join(f"{parts[t]:.2f}" for t in ("verification", "matching", "retrieval") if t in parts),
                f"{info['ours_peak_rss_mib']:.0f}",
                f"{ref:.1f}" if ref else "not run",
                f"{ref / info['ours_wall_s']:.1f}×" if ref else "",
                f"{literal:.1f}" if literal else "not run",
                f"{literal / info['ours_wall_s']:.1f}×" if literal else "",
                f"{max(info.get(f'{t}_{k}abs_diff', 0) for t in ('verification', 'matching', 'retrieval') for k in ('', 'literal_')):.1e}"
                if "verification_abs_diff" in info
                else "",
            ]
        )
    if not rows:
        return None
    return tabulate(
        rows,
        headers=[
            "set (end to end, fresh process)",
            "threads",
            "ours s",
            "of which verif. / match. / retr. s",
            "ours peak RSS MiB",
            "restated reference s",
            "speed-up",
            "benchmark's own code s",
            "speed-up",
            "max |Δ mAP|",
        ],
        tablefmt="github",
    )


EVALUATION_INTRO = [
    "## HPatches evaluation",
    "",
    "`reduced`: 8 sequences (split-a patch counts), 100k verification pairs per file, 1,000 queries, 20,000",
    "distractors; `reference`: the benchmark's algorithm at its speed (tripletkit/testing/hpatches_reference.py:",
    "per-pair distance loop, one cdist per image pair, one stable sort per query × level × pool size), task files read",
    "inside the timing on both sides. `split-a`: 40 sequences, 1M pairs per file, 10,000 queries (ours only).",
    "",
    "End to end (the second table): each side is a new process, timed from launch to exit, on descriptor CSVs and task",
    "files on disk, one run of the suite: ours, `examples/hpatches/evaluate.py`, 3 times before the references and 3",
    "times after (the median of the 6); the restated reference, `python -m bench.reference_evaluate` (the benchmark's",
    "`hpatches_eval.py` step by step: pandas reads every CSV on a process pool, then its three task loops), once; the",
    "benchmark's own code (its `python/hpatches_eval.py`, unchanged, in its own interpreter) once, when",
    "`TRIPLETKIT_HPATCHES_BENCHMARK` names a checkout of hpatches/hpatches-benchmark and",
    "`TRIPLETKIT_HPATCHES_BENCHMARK_PYTHON` an interpreter with its requirements (numpy < 2.4, pandas, scipy, joblib,",
    "tqdm, dill, opencv-python-headless); its numbers are read back from the result files it writes and must equal",
    "ours. The full-size row is the `full` split's 116 sequences with their patch counts, 1M pairs per verification",
    "file, 10,000 queries and 20,000 distractors",
    "(`--bench-profile large`).",
]


def replace_section(md: str, title: str, body: list[str]) -> str:
    """``md`` with the section headed ``title`` (up to the next ``## ``) replaced by ``body``; appended if absent."""
    lines = md.splitlines()
    try:
        start = lines.index(title)
    except ValueError:
        return "\n".join(lines + [""] + body) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[:start] + body + lines[end:]) + "\n"


def pipeline_tables(paths: list[Path]) -> tuple[str | None, str | None]:
    """Training-step throughput per model/device/batch/format, and the study's denoise-epoch table."""
    data = _read(paths)
    rows, study = [], []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("suite") == "pipeline":
            fmt = (
                ("bf16 " if info.get("bf16") else "")
                + ("channels_last" if info["channels_last"] else "eager")
                + (" + compile" if info.get("compiled") else "")
            )
            rows.append(
                {
                    "model": info["model"],
                    "device": info["device"],
                    "threads": info["threads"],
                    "batch": info["batch"],
                    "format": fmt,
                    "step_ms": b["stats"]["median"] * 1e3,
                    "patches/s": info["patches_per_s"],
                }
            )
        elif info.get("suite") == "study":
            study.append(
                [
                    info["device"],
                    info["threads"],
                    info["batch"],
                    f"{info['patches_per_s']:.0f}",
                    f"{info['epoch_s_from_throughput']:.0f}",
                ]
            )
    pipe_md = None
    if rows:
        df = pd.DataFrame(rows).sort_values(["model", "device", "batch", "format"])
        pipe_md = tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=".1f")
    study_md = None
    if study:
        study_md = tabulate(
            sorted(study),
            headers=["device", "threads", "batch", "patches/s", "denoise epoch s (1,558,960 patches)"],
            tablefmt="github",
        )
    return pipe_md, study_md


def pipeline_target_rows(paths: list[Path]) -> list[list[str]]:
    """The pipeline issue's throughput targets: L2-Net training ≥ 1,000 patches/s on 2 CPU cores, ≥ 100,000 on one
    GPU. The best measured row per device; a CPU row measured on other than 2 threads is shown but not marked."""
    best: dict[str, dict] = {}
    for b in _read(paths)["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("suite") == "pipeline" and info.get("model") == "l2net":
            dev = info["device"]
            if dev not in best or info["patches_per_s"] > best[dev]["patches_per_s"]:
                best[dev] = info
    rows = []
    for dev, target in (("cpu", 1_000), ("cuda", 100_000)):
        if dev not in best:
            continue
        info = best[dev]
        fmt = (
            ("bf16 " if info.get("bf16") else "")
            + ("channels_last" if info["channels_last"] else "eager")
            + (" + compile" if info.get("compiled") else "")
        )
        measured = f"{info['patches_per_s']:.0f} patches/s ({fmt}, batch {info['batch']}, {info['threads']} threads)"
        if dev == "cpu" and info["threads"] != 2:
            mark = "n/a: target is for 2 threads (TRIPLETKIT_BENCH_THREADS=2)"
        else:
            mark = "pass" if info["patches_per_s"] >= target else "short"
        rows.append([f"L2-Net training on {dev} ≥ {target:,} patches/s", "", "", measured, mark])
    return rows


def load(paths: list[Path]) -> tuple[pd.DataFrame, dict]:
    data = _read(paths)
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "impl" not in info:
            continue
        rows.append(
            {
                "impl": info["impl"],
                "loss": info["loss"],
                "margin": info["margin"],
                "n": info["n"],
                "dtype": info["dtype"],
                "threads": info.get("threads"),
                "median_ms": b["stats"]["median"] * 1e3,
                "peak_mib": info.get("peak_growth_mib"),
            }
        )
    return pd.DataFrame(rows), data.get("machine_info", {}) | {"datetime": data.get("datetime")}


def loss_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (loss, margin, dtype, N), the implementations side by side, with the ratios that matter."""
    keys = ["loss", "margin", "dtype", "n"]
    time = df.pivot_table(index=keys, columns="impl", values="median_ms", aggfunc="first")
    mem = df.pivot_table(index=keys, columns="impl", values="peak_mib", aggfunc="first")
    # the floor is the same N×N matrix for every loss and margin: share it across the group
    floors = df[df.impl == "floor"].groupby(["dtype", "n"])["median_ms"].median()
    out = pd.DataFrame(index=time.index)
    for impl in ("ours", "floor", "naive", "pml", "oml"):
        if impl == "floor":
            out["floor_ms"] = [floors.get((d, n), math.nan) for (_, _, d, n) in time.index]
        else:
            out[f"{impl}_ms"] = time[impl] if impl in time else math.nan
    out["pml_over_ours"] = out["pml_ms"] / out["ours_ms"]
    out["oml_over_ours"] = out["oml_ms"] / out["ours_ms"]
    out["ours_over_floor"] = out["ours_ms"] / out["floor_ms"]
    out["naive_over_ours"] = out["naive_ms"] / out["ours_ms"]
    for impl in ("ours", "pml", "oml"):
        out[f"{impl}_mib"] = mem[impl] if impl in mem else math.nan
    return out.reset_index().sort_values(keys)


def target_rows(table: pd.DataFrame) -> list[list[str]]:
    rows = []
    for desc, loss, ns, metric, target, op in TARGETS:
        for n in ns:
            sel = table[(table.loss == loss) & (table.n == n) & (table.dtype == "float32")]
            if metric.endswith("mib"):
                sel = sel[sel.margin == "hinge"]  # memory is probed on the hinge rows (same temporaries)
            for _, r in sel.iterrows():
                v = r[metric]
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    mark = "not measured"
                    shown = "–"
                else:
                    ok = {">=": v >= target, "<": v < target, "<=": v <= target}[op]
                    mark = "pass" if ok else "short"
                    shown = f"{v:.1f} MiB" if metric.endswith("mib") else f"{v:.2f}×"
                rows.append([desc, r.margin, n, shown, mark])
    return rows


def _fmt(table: pd.DataFrame) -> pd.DataFrame:
    t = table.copy()
    for c in t.columns:
        if c.endswith("_ms"):
            t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
        elif c.endswith("_mib"):
            t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
        elif c.startswith(("pml_over", "oml_over", "ours_over", "naive_over")):
            t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    return t


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = table[(table.margin == "hinge") & (table.dtype == "float32")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for loss, style in (("batch_hard", "-"), ("batch_all", "--")):
        s = sel[sel.loss == loss]
        for impl, color in (("ours", "C0"), ("pml", "C1"), ("oml", "C3"), ("naive", "C2"), ("floor", "C7")):
            col = f"{impl}_ms"
            if col in s and s[col].notna().any():
                axes[0].plot(s.n, s[col], style, color=color, marker="o", label=f"{loss} {impl}")
            mcol = f"{impl}_mib"
            if mcol in s and s[mcol].notna().any():
                axes[1].plot(s.n, s[mcol].clip(lower=0.1), style, color=color, marker="o", label=f"{loss} {impl}")
    axes[0].set(xscale="log", yscale="log", xlabel="N (S×K, K=8, D=128)", ylabel="forward+backward, ms (median)")
    axes[1].set(xscale="log", yscale="log", xlabel="N", ylabel="peak RSS growth, MiB")
    ns = sorted(sel.n.unique())
    for ax in axes:
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle("tripletkit vs pytorch-metric-learning (hinge, float32)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "json", type=Path, nargs="*", default=[ROOT / "bench" / "results.json"], help="pytest-benchmark JSON file(s)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument(
        "--gpu",
        type=Path,
        default=ROOT / "bench" / "results_gpu.json",
        help="the JSON of `python -m bench.gpu` (its tables go in when the file exists)",
    )
    p.add_argument(
        "--only-evaluation",
        action="store_true",
        help="replace only the HPatches evaluation section of --out (the other suites' rows are not needed)",
    )
    a = p.parse_args()
    eval_md = evaluation_table(a.json)
    if a.only_evaluation:
        if not eval_md:
            raise SystemExit(f"{a.json}: no evaluation rows")
        print(eval_md)
        if not a.no_write:
            atomic_write_text(
                a.out, replace_section(a.out.read_text(), EVALUATION_INTRO[0], [*EVALUATION_INTRO, "", eval_md, ""])
            )
        return
    df, machine = load(a.json)
    pipe_md, study_md = pipeline_tables(a.json)
    if df.empty:
        raise SystemExit(
            f"{a.json}: no tripletkit loss benchmark rows (run pytest bench/ --benchmark-only --benchmark-json=...)"
        )
    table = loss_table(df)
    shown = _fmt(table)
    loss_md = tabulate(shown, headers="keys", tablefmt="github", showindex=False)
    targets_md = tabulate(
        target_rows(table) + pipeline_target_rows(a.json),
        headers=["target", "margin", "N", "measured", "mark"],
        tablefmt="github",
    )
    print(loss_md)
    print()
    print(targets_md)
    for extra in (eval_md, pipe_md, study_md):
        if extra:
            print()
            print(extra)
    if a.no_write:
        return
    png = a.out.with_suffix(".png")
    plot(table, png)
    threads = sorted(set(df.threads.dropna().astype(int)))
    header = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench.report` from `pytest bench/ --benchmark-only --benchmark-json=bench/results.json`.",
        "Measured numbers only; ratios are within one run. Times: medians of forward + backward; memory: peak RSS growth",
        "of the same call in a fresh subprocess (sees torch's CPU allocations).",
        "",
        f"- date: {machine.get('datetime')}",
        f"- machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
        f"{machine.get('cpu', {}).get('count', '?')} logical CPUs; threads used: {threads}",
        f"- python {machine.get('python_version')}, {_versions()}",
        "",
        "## Targets (recorded, never asserted in CI)",
        "",
        targets_md,
        "",
        "## Losses (S×K batches, K = 8, D = 128)",
        "",
        "`floor`: one forward computation of the N×N squared-distance matrix; `naive`: dense autograd through all N³",
        "triplets (N ≤ 512; for `hardnet` the dense N×N form, for `semihard` the dense TFA-style N×N×N form);",
        "`pml`: pytorch-metric-learning configured to the same definitions; `oml`: open-metric-learning's",
        "`TripletLossWithMiner` (hard or all triplets). `hardnet` rows take the N inputs as N/2 matching pairs;",
        "`xbm` is batch-hard against a full 2048-row cross-batch memory (PML: `CrossBatchMemory` + `BatchHardMiner`).",
        "",
        loss_md,
        "",
        f"![time and memory against N]({png.name})",
        "",
    ]
    if eval_md:
        header += [*EVALUATION_INTRO, "", eval_md, ""]
    if pipe_md:
        header += [
            "## Pipeline: training steps",
            "",
            "Forward + loss + backward + SGD step on 32×32 patches (L2-Net: batch-hard on S×K labels; U-Nets: L1).",
            "",
            pipe_md,
            "",
        ]
    if study_md:
        header += [
            "## The study's denoise-epoch table, with our numbers",
            "",
            "Shallow U-Net, channels_last; epoch time = 1,558,960 patches (the N-HPatches split-a training set, all 16",
            "images of 76 sequences) ÷ the measured throughput at that batch size. The study reported 125 s (CPU),",
            "41 s (GPU) and 10–43 s (TPU) per epoch on its own hardware; GPU rows appear when a GPU is present.",
            "",
            study_md,
            "",
        ]
    header += accelerator_section(a.gpu)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, "\n".join(header))
    print(f"\nwrote {a.out} and {png}")


def accelerator_section(gpu_json: Path) -> list[str]:
    """What has run on which accelerator: the GPU script's tables when its JSON exists, else that none has run."""
    lines = [
        "## Accelerators",
        "",
        "- **torch-xla (CPU backend)**: the XLA lane of `.ci/run` asserts one graph and at most one transfer per",
        "  steady-state `train.py` step and at most two compiles per stage (docs/testing.md). These are counts, not",
        "  speeds: the CPU backend says nothing about a TPU's time.",
        "- **TPU**: not run (none available).",
    ]
    if not gpu_json.exists():
        return lines + [
            "- **GPU**: not run. No GPU has been lent to this project yet. `python -m bench.gpu --out",
            "  bench/results_gpu.json` is the one prepared script (at most 9 minutes; device correctness, the loss",
            "  table against PML for N = 1024 to 16384, L2-Net and U-Net throughput at batch 1024 to 4096 in fp32, bf16",
            "  and bf16 + compile, the study's denoise-epoch table). Its dry run (`--device cpu --quick`) is tested in",
            "  CI. Targets: ≥ 100,000 L2-Net training patches/s on one H200; batch-hard at N = 16384 under 10 ms.",
            "",
        ]
    from .gpu import markdown  # the script's own table layout

    results = json.loads(gpu_json.read_text())
    if results["info"].get("quick"):
        raise SystemExit(f"{gpu_json}: a --quick dry run, not a measurement; run python -m bench.gpu on the GPU")
    return lines + ["- **GPU**: `python -m bench.gpu`, one run:", "", markdown(results), ""]


def _versions() -> str:
    import importlib.metadata as md

    parts = []
    for pkg in ("torch", "numpy", "pytorch-metric-learning"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            parts.append(f"{pkg} (not installed)")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
