"""The study's networks for 32×32 patches: U-Net denoisers and the L2-Net descriptor (HardNet's layout).

* `L2Net`: the HardNet/L2-Net trunk, layer for layer as in DagnyT/hardnet ``HardNet`` (so that the
  ``features.<i>.*`` state-dict keys load HardNet checkpoints): 7 convolutions without bias, BatchNorm without affine
  parameters, ReLU, Dropout(0.3) before the last 8×8 convolution, per-patch input normalisation inside ``forward``
  (detached mean and unbiased std, eps 1e-7) and an L2-normalised 128-D output. Orthogonal init (gain 0.6).
* `ShallowUNet`: the N-HPatches coursework baseline denoiser (conv16 → pool → conv32 → up → conv64 2×2 → concat
  → conv64 → conv1), 59,777 parameters.
* `DeepUNet`: 3 down / 3 up levels (the study's deeper U-Net, after Ronneberger et al. with "same" padding):
  two conv3×3+BN+ReLU per level, max-pool down, transposed-conv up, skip concatenation.

Both denoisers take and return patches on the 0–255 scale and may predict the residual (``residual=True``: output =
input + f(input)), trained with the L1 loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastDropout", "L2Net", "CourseworkDescriptor", "ShallowUNet", "DeepUNet", "DENOISERS", "build_denoiser"]


class FastDropout(nn.Dropout):
    """Element-wise dropout whose CPU mask comes from 16-bit slices of 64-bit random words.

    ``torch.bernoulli_`` draws one generator call per element and was 14 % of an L2-Net training step on CPU (148 ms
    for a 1024×128×8×8 activation on 2 cores); this mask costs 45 ms. The drop probability is rounded to a multiple of
    2⁻¹⁶ (0.3 → 0.300003); kept values are scaled by 1/(1 − p) as in `torch.nn.Dropout`, so eval mode and the
    state dict are unchanged. Other devices (and ``inplace=True``) use the stock implementation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        bits = words.view(torch.int16)[:n].view(x.shape)
        drop = bits < (-32768 + round(self.p * 65536))
        return x.masked_fill(drop, 0).mul(1.0 / (1.0 - self.p))


class L2Net(nn.Module):
    """L2-Net as HardNet defines it; input (B, 1, 32, 32) in any intensity scale, output (B, 128) unit vectors."""

    DIM = 128  # the descriptor's length

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout, affine=False),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            *block(32, 64, 2),
            *block(64, 64),
            *block(64, 128, 2),
            *block(128, 128),
            FastDropout(dropout),
            nn.Conv2d(128, 128, kernel_size=8, bias=False),
            nn.BatchNorm2d(128, affine=False),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight, gain=0.6)

    @staticmethod
    def input_norm(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(1).detach()
        std = flat.std(1).detach()
        return (x - mean[:, None, None, None]) / (std[:, None, None, None] + 1e-7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(self.input_norm(x)).flatten(1)
        return y / torch.sqrt((y * y).sum(1, keepdim=True) + 1e-10)


class CourseworkDescriptor(nn.Module):
    """The N-HPatches coursework's descriptor (the study's starting point): L2-Net's layout, but convolutions with
    bias, BatchNorm *with* affine parameters, raw 0–255 input and no L2 normalisation of the 128-D output. Unlike
    `L2Net` it can collapse: the affine BN can scale every output to the same point."""

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            *block(32, 64, 2),
            *block(64, 64),
            *block(64, 128, 2),
            *block(128, 128),
            FastDropout(dropout),
            nn.Conv2d(128, 128, kernel_size=8),
            nn.BatchNorm2d(128),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # Keras he_normal
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


class ShallowUNet(nn.Module):
    """The coursework's shallow U-Net (one down, one up); 0–255 in, 0–255 out."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.up = nn.Conv2d(32, 64, 2)  # Keras "same" for a 2×2 kernel: pad one row and column after
        self.conv3 = nn.Conv2d(64 + 16, 64, 3, padding=1)
        self.out = nn.Conv2d(64, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x / 255.0
        c1 = F.relu(self.conv1(z))
        c2 = F.relu(self.conv2(F.max_pool2d(c1, 2)))
        u = F.relu(self.up(F.pad(F.interpolate(c2, scale_factor=2, mode="nearest"), (0, 1, 0, 1))))
        c3 = F.relu(self.conv3(torch.cat([u, c1], 1)))
        y = self.out(c3) * 255.0
        return x + y if self.residual else y


class DeepUNet(nn.Module):
    """3-down/3-up U-Net with BN, base width ``width`` (32: 1.93M parameters); 0–255 in, 0–255 out."""

    def __init__(self, width: int = 32, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        w = [width, width * 2, width * 4, width * 8]
        self.down = nn.ModuleList([double(1, w[0]), double(w[0], w[1]), double(w[1], w[2])])
        self.bottom = double(w[2], w[3])
        self.up = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in (2, 1, 0)])
        self.dec = nn.ModuleList([double(w[i] * 2, w[i]) for i in (2, 1, 0)])
        self.out = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x / 255.0
        skips = []
        for block in self.down:
            z = block(z)
            skips.append(z)
            z = F.max_pool2d(z, 2)
        z = self.bottom(z)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            z = dec(torch.cat([up(z), skip], 1))
        y = self.out(z) * 255.0
        return x + y if self.residual else y


DENOISERS = {"shallow": ShallowUNet, "deep": DeepUNet}


def build_denoiser(name: str) -> nn.Module | None:
    """``"shallow"``, ``"deep"`` or ``"none"`` (no denoiser: the descriptor sees the noisy patches)."""
    if name == "none":
        return None
    if name not in DENOISERS:
        raise ValueError(f"unknown denoiser {name!r}; valid: none, {', '.join(DENOISERS)}")
    return DENOISERS[name]()
