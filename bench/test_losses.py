"""Loss suite: every miner × margin at N = 128 … 4096 (S×K, K = 8, D = 128), forward + backward.

Beside tripletkit, in the same run and with the same thread count: the floor (one forward computation of the N×N
squared-distance matrix), a naive dense reference (N ≤ 512: it materialises N³ triplets) and pytorch-metric-learning
configured to the same definitions when it is installed. Each benchmark records the peak RSS growth of the same call,
measured in a fresh subprocess, in ``extra_info``.

    pytest bench/ --benchmark-only --benchmark-json=bench/results.json
    python -m bench.report bench/results.json
"""

from __future__ import annotations

import pytest
import torch

from . import memory
from .cases import XBM_MEMORY, have_oml, have_pml, make_case, make_inputs, step, threads

PROFILES = {
    "default": [128, 512, 1024, 2048, 4096],
    "large": [128, 512, 1024, 2048, 4096, 8192],
}


def _sizes(config) -> list[int]:
    return PROFILES[config.getoption("--bench-profile")]


def pytest_generate_tests(metafunc):  # pragma: no cover - collection hook
    if "n" in metafunc.fixturenames:
        metafunc.parametrize("n", _sizes(metafunc.config))


_MEMORY: dict[tuple, float | None] = {}


def _memory(impl: str, loss: str, margin: str, n: int, dtype: str) -> float | None:
    key = (impl, loss, margin, n, dtype)
    if key not in _MEMORY:
        _MEMORY[key] = memory.measure(impl, loss, margin, n, dtype)
    return _MEMORY[key]


def _rounds(n: int, impl: str, loss: str) -> int:
    if loss == "xbm":
        return 30  # the queue (XBM_MEMORY rows) is filled before timing (bench.cases); a few ms a call: more rounds
    if impl in ("pml", "naive", "oml") and loss == "batch_all":
        return 1 if n >= 2048 else 3
    return 3 if n >= 2048 else 10


def _run(benchmark, impl: str, loss: str, margin: str, n: int, dtype: torch.dtype = torch.float32) -> None:
    torch.set_num_threads(threads())
    fn = make_case(impl, loss, margin)
    x, y = make_inputs(n, dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    benchmark.group = f"{loss}-{margin}-{dtype_name}-N{n}"
    benchmark.extra_info.update(
        impl=impl, loss=loss, margin=margin, n=n, dtype=dtype_name, threads=torch.get_num_threads()
    )
    # memory is the same for both margins (same temporaries): probe the hinge only, to keep the suite short
    if margin == "hinge":
        benchmark.extra_info["peak_growth_mib"] = _memory(impl, loss, margin, n, dtype_name)
    benchmark.pedantic(step, args=(fn, x, y), rounds=_rounds(n, impl, loss), warmup_rounds=1, iterations=1)


LOSSES = ["batch_hard", "batch_all", "random", "semihard", "hardnet", "xbm"]
# PML's "semihard" miner keeps the whole band (another definition); xbm: PML's CrossBatchMemory + BatchHardMiner
PML_LOSSES = ["batch_hard", "batch_all", "random", "xbm"]
MARGINS = ["hinge", "softplus"]


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("loss", LOSSES)
def test_ours(benchmark, loss, margin, n):
    if loss == "xbm" and n > XBM_MEMORY // 2:
        pytest.skip(f"the cross-batch memory rows use a {XBM_MEMORY}-row queue: N ≤ {XBM_MEMORY // 2}")
    _run(benchmark, "ours", loss, margin, n)


@pytest.mark.parametrize("loss", ["batch_hard", "batch_all"])
def test_floor(benchmark, loss, n):
    # the same floor for every loss; recorded once per group so each table has it beside the losses
    _run(benchmark, "floor", loss, "hinge", n)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("loss", ["batch_hard", "batch_all", "semihard", "hardnet"])
def test_naive(benchmark, loss, margin, n):
    if n > 512:
        pytest.skip("the naive dense reference holds N³ triplets: only N ≤ 512")
    _run(benchmark, "naive", loss, margin, n)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("loss", PML_LOSSES)
def test_pml(benchmark, loss, margin, n):
    if not have_pml():
        pytest.skip("pytorch-metric-learning is not installed")
    if loss == "xbm" and n > XBM_MEMORY // 2:
        pytest.skip(f"the cross-batch memory rows use a {XBM_MEMORY}-row queue: N ≤ {XBM_MEMORY // 2}")
    if loss == "batch_all" and n > 4096:
        pytest.skip("PML batch-all needs ~23 GB at N = 8192")
    if loss == "batch_all" and margin == "softplus" and n > 2048:
        pytest.skip("PML batch-all takes ~10 s a call at N = 4096: the hinge row stands for both margins there")
    _run(benchmark, "pml", loss, margin, n)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("loss", ["batch_hard", "batch_all"])
def test_oml(benchmark, loss, margin, n):
    if not have_oml():
        pytest.skip("open-metric-learning is not installed")
    if loss == "batch_all" and n > 512:
        # 7M triplets at N = 1024, listed by Python loops: minutes per call and 12 GB (measured, then stopped)
        pytest.skip("OML's AllTripletsMiner lists every triplet in Python: N ≤ 512")
    _run(benchmark, "oml", loss, margin, n)


@pytest.mark.parametrize("impl", ["ours", "pml"])
@pytest.mark.parametrize("loss", ["batch_hard", "batch_all"])
@pytest.mark.parametrize("n_bf16", [128, 1024])
def test_bfloat16(benchmark, impl, loss, n_bf16):
    if impl == "pml" and not have_pml():
        pytest.skip("pytorch-metric-learning is not installed")
    _run(benchmark, impl, loss, "hinge", n_bf16, torch.bfloat16)
