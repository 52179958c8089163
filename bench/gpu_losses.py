"""Loss benchmark on a CUDA device: tripletkit vs pytorch-metric-learning (when importable) and the N×N floor,
forward + backward, CUDA-event timing, peak device memory; plus a correctness check of every loss on the device
against float64 on the CPU, and torch.compile parity.

    python bench/gpu_losses.py --out results_gpu.json          # on a machine with a GPU
    python bench/gpu_losses.py --device cpu --quick            # a dry run of the same script

Writes the JSON and prints a markdown table; docs/benchmarks.md quotes the numbers of the run on record.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tripletkit import BatchAllLoss, BatchHardLoss, TripletLoss
from tripletkit.functional import squared_euclidean_matrix

D, K = 128, 8
MARGINS = {"hinge": 0.2, "softplus": 0.0}


def pml_case(loss: str, margin_fn: str):
    try:
        from pytorch_metric_learning import distances, losses, miners, reducers
    except ImportError:
        return None
    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    fn = losses.TripletMarginLoss(
        margin=MARGINS[margin_fn], distance=dist, reducer=reducers.MeanReducer(), smooth_loss=margin_fn == "softplus"
    )
    if loss == "batch_hard":
        miner = miners.BatchHardMiner(distance=dist)
        return lambda x, y: fn(x, y, miner(x, y))
    return lambda x, y: fn(x, y)


def ours_case(loss: str, margin_fn: str, compiled: bool = False):
    m = MARGINS[margin_fn]
    if loss == "batch_hard":
        fn = BatchHardLoss(margin=m, margin_fn=margin_fn, max_class_size=K, validate=not compiled)
    elif loss == "batch_all":
        fn = BatchAllLoss(margin=m, margin_fn=margin_fn, max_class_size=K, validate=not compiled)
    else:
        fn = TripletLoss(margin=m, margin_fn=margin_fn, miner={"name": "random", "seed": 0})
    return torch.compile(fn) if compiled else fn


def timed(fn, x, y, device, reps):
    def step():
        leaf = x.detach().requires_grad_(True)
        out = fn(leaf, y)
        if out is not None:
            out.backward()

    step()
    step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def floor_case(x, y):
    with torch.no_grad():
        squared_euclidean_matrix(x)


def correctness(device) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(512, D, generator=g, dtype=torch.float64)
    y = torch.arange(512 // K).repeat_interleave(K)
    for loss in ("batch_hard", "batch_all"):
        for margin_fn in MARGINS:
            ref = ours_case(loss, margin_fn)(x64, y).item()
            dev = ours_case(loss, margin_fn)(x64.float().to(device), y.to(device)).item()
            rows.append(
                {"check": f"{loss}/{margin_fn} {device.type} float32 vs cpu float64", "abs_diff": abs(dev - ref)}
            )
    # torch.compile parity on the device (inductor), forward and gradient
    for loss in ("batch_hard", "batch_all"):
        eager, comp = ours_case(loss, "hinge"), ours_case(loss, "hinge", compiled=True)
        x = torch.randn(1024, D, device=device)
        yy = torch.arange(1024 // K, device=device).repeat_interleave(K)
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, lb = eager(a, yy), comp(b, yy)
        la.backward()
        lb.backward()
        rows.append(
            {
                "check": f"{loss} torch.compile vs eager on {device.type}",
                "abs_diff": abs(la.item() - lb.item()),
                "grad_max_abs_diff": (a.grad - b.grad).abs().max().item(),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small sizes (a dry run)")
    p.add_argument("--out", type=Path, default=Path("results_gpu.json"))
    a = p.parse_args()
    device = torch.device(a.device)
    sizes_bh = [256, 1024] if a.quick else [1024, 4096, 16384, 32768]
    sizes_ba = [256, 1024] if a.quick else [1024, 4096, 8192]
    pml_ba_max = 1024 if a.quick else 4096
    reps = 3 if a.quick else 20
    info = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import pytorch_metric_learning

        info["pml"] = pytorch_metric_learning.__version__
    except ImportError:
        info["pml"] = None
    results = {"info": info, "correctness": correctness(device), "timing": []}
    for loss, sizes in (("batch_hard", sizes_bh), ("batch_all", sizes_ba), ("random", sizes_bh)):
        for n in sizes:
            g = torch.Generator().manual_seed(n)
            y = torch.arange(n // K).repeat_interleave(K).to(device)
            for dtype in (torch.float32, torch.bfloat16):
                if dtype == torch.bfloat16 and loss != "batch_hard":
                    continue
                x = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
                for margin_fn in ("hinge", "softplus") if dtype == torch.float32 else ("hinge",):
                    row = {"loss": loss, "margin": margin_fn, "n": n, "dtype": str(dtype).removeprefix("torch.")}
                    row["ours_ms"], row["ours_mib"] = timed(ours_case(loss, margin_fn), x, y, device, reps)
                    pml = pml_case(loss, margin_fn) if loss != "random" else None
                    if pml is not None and dtype == torch.float32 and not (loss == "batch_all" and n > pml_ba_max):
                        try:
                            row["pml_ms"], row["pml_mib"] = timed(
                                pml, x, y, device, max(3, reps // 4) if loss == "batch_all" else reps
                            )
                        except torch.OutOfMemoryError:
                            row["pml_ms"] = "OOM"
                            torch.cuda.empty_cache()
                    if margin_fn == "hinge" and dtype == torch.float32:
                        row["floor_ms"], _ = timed(floor_case, x, y, device, reps)
                    results["timing"].append(row)
                    print(json.dumps(row), flush=True)
    a.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["correctness"], indent=1))


if __name__ == "__main__":
    main()
