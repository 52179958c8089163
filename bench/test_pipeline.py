"""Pipeline suite: training-step throughput (patches/s) of L2-Net and the U-Nets, per available device, batch size
and memory format; and the study's denoise-epoch table filled from the measured throughput.

A step is `bench.training_steps.step_fn`: forward + loss + backward + optimiser step. CPU rows run on TRIPLETKIT_BENCH_THREADS threads (default 1);
``--bench-profile large`` adds batch 1024 and 4096. CUDA rows appear on a machine with a GPU (bf16 autocast and
bf16 + torch.compile as well); CPU bf16 rows (channels_last) on CPUs with native bf16.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tripletkit_hpatches.runtime import pick_precision

from .cases import threads
from .training_steps import DENOISE_EPOCH_PATCHES, MODELS, step_fn

ROOT = Path(__file__).resolve().parents[1]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# bf16 autocast rows: on a GPU, and on CPUs whose oneDNN runs bf16 natively (AMX / AVX512-BF16; emulated elsewhere)
CPU_BF16 = pick_precision("auto", torch.device("cpu")) == "bf16"
BF16_CASES = ([("cpu", False)] if CPU_BF16 else []) + (
    [("cuda", False), ("cuda", True)] if torch.cuda.is_available() else []
)


def _batches(config) -> list[int]:
    return [64, 256] + ([1024, 4096] if config.getoption("--bench-profile") == "large" else [])


def pytest_generate_tests(metafunc):  # pragma: no cover - collection hook
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", _batches(metafunc.config))
    if "study_batch" in metafunc.fixturenames:
        large = metafunc.config.getoption("--bench-profile") == "large"
        metafunc.parametrize("study_batch", [64, 512, 1024] + ([4096] if large else []))


def _run(benchmark, name, batch, device, channels_last, bf16=False, suite="pipeline", compiled=False):
    torch.set_num_threads(threads())
    step = step_fn(name, batch, device, channels_last, bf16, compiled)
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
