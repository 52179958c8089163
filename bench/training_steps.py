"""One training step of the pipeline's networks, as the benchmarks time it (the pytest suite and the GPU script).

A step is forward + loss + backward + optimiser step: batch-hard (S×K, K = 8, or 2 for batches under 64) for
L2-Net, L1 against a target for the U-Nets, SGD with momentum. The inputs stay on the device, so a step measures
the model and the loss, not the host-to-device copy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tripletkit import BatchHardLoss
from tripletkit_hpatches.models import DeepUNet, L2Net, ShallowUNet

__all__ = ["MODELS", "DENOISE_EPOCH_PATCHES", "step_fn"]

MODELS = {"l2net": L2Net, "shallow_unet": ShallowUNet, "deep_unet": DeepUNet}
# The coursework's denoiser training set (N-HPatches split a, all 16 images of the 76 train sequences), used to turn a
# measured throughput into the study's "denoise epoch" time.
DENOISE_EPOCH_PATCHES = 1_558_960


def step_fn(
    name: str, batch: int, device: str, channels_last: bool, bf16: bool, compiled: bool = False
) -> Callable[[], None]:
    """A closure that runs one step (and waits for the device, so a wall-clock timer measures it)."""
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
    loss_fn = BatchHardLoss(max_class_size=k, validate=not compiled)
    target = x.clone()

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = loss_fn(out.float(), labels) if name == "l2net" else (out.float() - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step
