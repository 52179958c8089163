"""Everything the GPU section of docs/benchmarks.md needs, in one run of at most ``--budget`` seconds (default 540):

1. correctness on the device: every loss against float64 on the CPU, and torch.compile (inductor) parity;
2. the loss table against pytorch-metric-learning and the N×N floor, N = 1024 to 16384 (forward + backward);
3. L2-Net and U-Net training throughput at batch 1024, 2048 and 4096: channels_last in fp32, bf16, bf16 + compile;
4. the study's denoise-epoch table (shallow U-Net, batch 64 to 4096), from measured steps.

    python -m bench.gpu --out bench/results_gpu.json        # on a CUDA machine
    python -m bench.gpu --device cpu --quick                # the dry run: same code, small sizes

Cases run in that order; once the budget is spent the rest are recorded as skipped, never estimated. The JSON is
written atomically after every part, so a run cut short keeps what it measured. The targets it reports: at least
100,000 L2-Net training patches/s, and batch-hard at N = 16384 (fp32, forward + backward) under 10 ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from tripletkit.training import atomic_write_text

from . import gpu_losses
from .training_steps import DENOISE_EPOCH_PATCHES, step_fn

TARGET_PATCHES_PER_S = 100_000
TARGET_BH16384_MS = 10.0


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _median_ms(step, reps: int, device: torch.device) -> float:
    step()
    step()  # warm-up: allocator, cuDNN autotune, compile
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def loss_table(device: torch.device, quick: bool, budget: Budget, reps: int) -> list[dict]:
    rows = []
    sizes = {"batch_hard": [256, 1024] if quick else [1024, 4096, 16384], "batch_all": [256] if quick else [1024, 4096]}
    sizes["random"] = sizes["batch_hard"]
    for loss, ns in sizes.items():
        for n in ns:
            for margin_fn in gpu_losses.MARGINS:
                row: dict = {"loss": loss, "margin": margin_fn, "n": n, "dtype": "float32"}
                if budget.left() < 10:
                    rows.append(row | {"skipped": "time budget"})
                    continue
                g = torch.Generator().manual_seed(n)
                y = torch.arange(n // gpu_losses.K).repeat_interleave(gpu_losses.K).to(device)
                x = torch.randn(n, gpu_losses.D, generator=g).to(device)
                row["ours_ms"], row["ours_mib"] = gpu_losses.timed(
                    gpu_losses.ours_case(loss, margin_fn), x, y, device, reps
                )
                pml = gpu_losses.pml_case(loss, margin_fn) if loss != "random" else None
                if pml is not None and not (loss == "batch_all" and n > 4096):
                    try:
                        row["pml_ms"], row["pml_mib"] = gpu_losses.timed(pml, x, y, device, max(3, reps // 4))
                        row["speedup_vs_pml"] = row["pml_ms"] / row["ours_ms"]
                    except torch.OutOfMemoryError:
                        row["pml_ms"] = "OOM"
                        torch.cuda.empty_cache()
                if margin_fn == "hinge":
                    row["floor_ms"], _ = gpu_losses.timed(gpu_losses.floor_case, x, y, device, reps)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def throughput(device: torch.device, quick: bool, budget: Budget, reps: int) -> list[dict]:
    rows = []
    batches = [64, 128] if quick else [1024, 2048, 4096]
    variants = [("fp32", False, False), ("bf16", True, False), ("bf16+compile", True, True)]
    # the compiled variants last: each compiles anew, and a spent budget should cost those rows first
    for label, bf16, compiled in variants:
        for name in ("l2net", "shallow_unet", "deep_unet"):
            for batch in batches:
                row: dict = {"model": name, "batch": batch, "precision": label, "channels_last": True}
                if budget.left() < (60 if compiled else 10):
                    rows.append(row | {"skipped": "time budget"})
                    continue
                try:
                    ms = _median_ms(step_fn(name, batch, device.type, True, bf16, compiled), reps, device)
                except torch.OutOfMemoryError:
                    rows.append(row | {"skipped": "out of memory"})
                    torch.cuda.empty_cache()
                    continue
                row.update(step_ms=ms, patches_per_s=batch / ms * 1e3)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def denoise_epochs(device: torch.device, quick: bool, budget: Budget, reps: int) -> list[dict]:
    rows = []
    for batch in [64, 128] if quick else [64, 512, 1024, 4096]:
        row: dict = {"model": "shallow_unet", "batch": batch, "epoch_patches": DENOISE_EPOCH_PATCHES}
        if budget.left() < 10:
            rows.append(row | {"skipped": "time budget"})
            continue
        ms = _median_ms(step_fn("shallow_unet", batch, device.type, True, False), reps, device)
        row.update(step_ms=ms, epoch_s=DENOISE_EPOCH_PATCHES / batch * ms / 1e3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def targets(results: dict) -> dict:
    l2 = [r["patches_per_s"] for r in results["throughput"] if r["model"] == "l2net" and "patches_per_s" in r]
    bh = [
        r["ours_ms"]
        for r in results["losses"]
        if r["loss"] == "batch_hard" and r["n"] == 16384 and r["margin"] == "hinge" and "ours_ms" in r
    ]
    return {
        "l2net_patches_per_s_best": max(l2) if l2 else None,
        "l2net_target_met": bool(l2) and max(l2) >= TARGET_PATCHES_PER_S,
        "batch_hard_16384_ms": bh[0] if bh else None,
        "batch_hard_target_met": bool(bh) and bh[0] < TARGET_BH16384_MS,
    }


def markdown(results: dict) -> str:
    lines = [f"GPU run: {results['info']}", "", "| loss | margin | N | ours ms | PML ms | ×PML | floor ms |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in results["losses"]:
        if "ours_ms" in r:
            pml = r.get("pml_ms", "")
            x = f"{r['speedup_vs_pml']:.1f}" if "speedup_vs_pml" in r else ""
            pml_text = f"{pml:.2f}" if isinstance(pml, float) else str(pml)
            floor = f"{r['floor_ms']:.2f}" if "floor_ms" in r else ""
            lines.append(
                f"| {r['loss']} | {r['margin']} | {r['n']} | {r['ours_ms']:.2f} | {pml_text} | {x} | {floor} |"
            )
    lines += ["", "| model | batch | precision | step ms | patches/s |", "|---|---|---|---|---|"]
    for r in results["throughput"]:
        value = f"{r['step_ms']:.1f} | {r['patches_per_s']:,.0f}" if "step_ms" in r else f"{r['skipped']} | "
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {value} |")
    lines += ["", "| denoise batch | step ms | epoch s |", "|---|---|---|"]
    for r in results["denoise_epoch"]:
        value = f"{r['step_ms']:.1f} | {r['epoch_s']:.1f}" if "step_ms" in r else f"{r['skipped']} | "
        lines.append(f"| {r['batch']} | {value} |")
    lines += ["", f"targets: {json.dumps(results['targets'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes: the CPU dry run")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run (default 540)")
    p.add_argument("--out", type=Path, default=Path("bench/results_gpu.json"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available (dry run: --device cpu --quick)")
    budget = Budget(a.budget)
    reps = 3 if a.quick else 10
    info = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "quick": a.quick,
        "budget_s": a.budget,
    }
    results: dict = {"info": info, "correctness": [], "losses": [], "throughput": [], "denoise_epoch": []}

    def save() -> None:
        results["targets"] = targets(results)
        results["elapsed_s"] = a.budget - budget.left()
        atomic_write_text(a.out, json.dumps(results, indent=1))

    results["correctness"] = gpu_losses.correctness(device)
    save()
    results["losses"] = loss_table(device, a.quick, budget, reps)
    save()
    results["throughput"] = throughput(device, a.quick, budget, reps)
    save()
    results["denoise_epoch"] = denoise_epochs(device, a.quick, budget, reps)
    save()
    text = markdown(results)
    atomic_write_text(a.out.with_suffix(".md"), text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
