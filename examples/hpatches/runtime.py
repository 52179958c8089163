"""Where and how a run executes: device, autocast precision, ``torch.compile``, and the DDP process group."""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

__all__ = ["Runtime", "pick_device", "pick_precision", "setup_runtime", "require_xla"]

T = TypeVar("T")


@dataclass
class Runtime:
    """Device, autocast dtype, compile, and the process group (rank, world)."""

    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def xla(self) -> bool:
        return self.device.type == "xla"

    @property
    def static_shapes(self) -> bool:
        """Compiled and XLA graphs need fixed shapes: no host sync for the class size, no NaN check."""
        return self.compile or self.xla

    def manual_seed(self, seed: int) -> None:
        """Seed torch's generators, the accelerator's included: torch-xla's RNG does not follow ``torch.manual_seed``."""
        torch.manual_seed(seed)
        if self.xla:
            import torch_xla.core.xla_model as xm

            xm.set_rng_state(seed, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def barrier(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            dist.barrier()

    def end_step(self) -> None:
        """The step boundary: on XLA this cuts and runs the traced graph."""
        if self.xla:
            import torch_xla

            torch_xla.sync()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training loop calls: DDP across replicas (compile it with `compiled`)."""
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    def compiled(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` under ``torch.compile`` when ``--compile`` is given, else ``fn``.

        One graph (``fullgraph=True``): a graph break anywhere in it, the loss included, is an error rather than a
        silent slowdown. Under DDP the graph is split at DDP's gradient buckets by design, so there it may break."""
        if not self.compile:
            return fn
        return torch.compile(fn, fullgraph=not self.ddp)

    def close(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            # torch-xla's launcher can run the replicas as threads of one process, which share its default group:
            # the first to close destroys it, and the others must find it gone rather than assert on it
            with _CLOSE_LOCK:
                if dist.is_initialized():
                    dist.destroy_process_group()


_CLOSE_LOCK = threading.Lock()


def pick_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SystemExit("error: --precision bf16 but this GPU does not support bfloat16")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "xla":
        return "bf16"
    # oneDNN runs bf16 convolutions natively only with AMX or AVX512-BF16; elsewhere bf16 is emulated and slower
    native = (
        torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    )
    return "bf16" if native else "fp32"


def require_xla() -> None:
    """A clear error when torch-xla is missing, without touching the XLA runtime (``torch_xla.launch`` must be the
    first to initialise it)."""
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        raise SystemExit(
            "error: --device xla needs torch-xla (pip install '.[tpu]', which requires torch 2.9)"
        ) from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if name == "xla":
        require_xla()
        import torch_xla

        return torch_xla.device()
    return torch.device(name)


def setup_runtime(device: str, precision: str, compile: bool) -> Runtime:
    """One process, or one replica of a ``torchrun`` job (WORLD_SIZE > 1 in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        dev = pick_device(device)
        return Runtime(dev, pick_precision(precision, dev), compile)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(hours=3)  # rank 0 alone prepares data and evaluates while the others wait
    if device == "xla":
        dev = pick_device("xla")
        import torch_xla.distributed.xla_backend  # noqa: F401  registers the "xla" process-group backend

        dist.init_process_group("xla", init_method="xla://", timeout=timeout)
    elif device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if torch.cuda.device_count() <= local:
            raise SystemExit(
                f"error: local rank {local} needs CUDA device {local}, but {torch.cuda.device_count()} are available"
            )
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    # a launcher that gives each process its own world of one would make every process write as rank 0
    if dist.get_world_size() != world:
        got = dist.get_world_size()
        dist.destroy_process_group()
        raise SystemExit(
            f"error: WORLD_SIZE is {world} but the process group has {got} process(es); each would write as rank 0"
        )
    rank = dist.get_rank()
    if device == "xla":
        import torch_xla.runtime as xr

        # on a host whose launcher runs the replicas as threads of one process (torch-xla's CPU backend, and TPU
        # v2/v3), they share the process's default group, so its rank is one thread's; the ordinal is each thread's
        rank = xr.global_ordinal()
    return Runtime(dev, pick_precision(precision, dev), compile, rank, dist.get_world_size())
