"""Pipeline suite: training-step throughput (patches/s) of L2-Net and the U-Nets, per available device, batch size
and memory format; and the study's denoise-epoch table filled from the measured throughput.

A step is forward + loss + backward + optimiser step: batch-hard (S×K, K = 8… or 2 for tiny batches) for L2-Net,
L1 against a target for the U-Nets, SGD. CPU rows run on TRIPLETKIT_BENCH_THREADS threads (default 1);
``--bench-profile large`` adds batch 1024 and 4096. CUDA rows appear on a machine with a GPU (bf16 autocast and
bf16 + torch.compile as well); CPU bf16 rows (channels_last) on CPUs with native bf16.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tripletkit import BatchHardLoss
from tripletkit_hpatches.models import DeepUNet, L2Net, ShallowUNet
from tripletkit_hpatches.runtime import pick_precision

from .cases import threads

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"l2net": L2Net, "shallow_unet": ShallowUNet, "deep_unet": DeepUNet}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# bf16 autocast rows: on a GPU, and on CPUs whose oneDNN runs bf16 natively (AMX / AVX512-BF16; emulated elsewhere)
CPU_BF16 = pick_precision("auto", torch.device("cpu")) == "bf16"
BF16_CASES = ([("cpu", False)] if CPU_BF16 else []) + (
    [("cuda", False), ("cuda", True)] if torch.cuda.is_available() else []
)
# The coursework's denoiser training set (N-HPatches split a, all 16 images of the 76 train sequences), used to turn a
# measured throughput into the study's "denoise epoch" time.
DENOISE_EPOCH_PATCHES = 1_558_960


def _batches(config) -> list[int]:
    return [64, 256] + ([1024, 4096] if config.getoption("--bench-profile") == "large" else [])


def pytest_generate_tests(metafunc):  # pragma: no cover - collection hook
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", _batches(metafunc.config))
    if "study_batch" in metafunc.fixturenames:
        large = metafunc.config.getoption("--bench-profile") == "large"
        metafunc.parametrize("study_batch", [64, 512, 1024] + ([4096] if large else []))


def _step_fn(name: str, batch: int, device: str, channels_last: bool, bf16: bool, compiled: bool = False):
    torch.manual_seed(0)
    model = MODELS[name]().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compiled:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = (torch.rand(batch, 1, 32, 32, device=device) * 255).contiguous(memory_format=fmt)
    k = 8 if batch >= 64 else 2
    labels = torch.arange(batch // k, device=device).repeat_interleave(k)
    loss_fn = BatchHardLoss()
    target = x.clone()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = loss_fn(out, labels) if name == "l2net" else (out.float() - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _run(benchmark, name, batch, device, channels_last, bf16=False, suite="pipeline", compiled=False):
    torch.set_num_threads(threads())
    step = _step_fn(name, batch, device, channels_last, bf16, compiled)
    rounds = 3 if batch <= 256 else 1
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.group = f"{suite}-{name}"
    benchmark.extra_info.update(
        suite=suite,
        model=name,
        batch=batch,
        device=device,
        channels_last=channels_last,
        bf16=bf16,
        compiled=compiled,
        threads=torch.get_num_threads(),
        patches_per_s=batch / median,
    )
    return median


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["eager", "channels_last"])
@pytest.mark.parametrize("name", list(MODELS))
def test_training_step(benchmark, name, batch, device, channels_last):
    _run(benchmark, name, batch, device, channels_last)


@pytest.mark.skipif(not BF16_CASES, reason="no native bf16 here: neither a GPU nor a CPU with AMX/AVX512-BF16")
@pytest.mark.parametrize(
    "device,compiled",
    BF16_CASES or [("cpu", False)],
    ids=[f"{d}-bf16{'+compile' if c else ''}" for d, c in BF16_CASES or [("cpu", False)]],
)
@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_bf16(benchmark, name, batch, device, compiled):
    _run(benchmark, name, batch, device, True, bf16=True, compiled=compiled)


@pytest.mark.parametrize("device", DEVICES)
def test_study_denoise_epoch(benchmark, study_batch, device):
    """The study's table: shallow U-Net denoise epoch time per device and batch size (from measured steps)."""
    median = _run(benchmark, "shallow_unet", study_batch, device, channels_last=True, suite="study")
    benchmark.extra_info["epoch_s_from_throughput"] = DENOISE_EPOCH_PATCHES / study_batch * median
