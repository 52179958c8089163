from __future__ import annotations

import platform

import torch

from .cases import have_pml, threads


def pytest_addoption(parser):
    parser.addoption(
        "--bench-profile",
        default="default",
        choices=["default", "large"],
        help="sizes for the loss suite: default N = 128…4096; large adds N = 8192",
    )


def pytest_report_header(config):
    pml = "installed" if have_pml() else "not installed (PML rows skipped)"
    return [
        f"tripletkit bench: torch {torch.__version__}, {threads()} thread(s) (TRIPLETKIT_BENCH_THREADS), "
        f"{platform.processor() or platform.machine()}, pytorch-metric-learning {pml}",
    ]
