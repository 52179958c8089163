"""Descriptors for the results table: normalised raw pixels, SIFT (kornia's implementation), or a trained model.

All take patches as ``{sequence: {type: (N, P, P) uint8}}`` and return a `DescriptorSet`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from tripletkit_hpatches.descriptors import IMAGE_TYPES, DescriptorSet
from tripletkit_hpatches.patches import resize_patches

__all__ = ["raw_pixel_descriptors", "sift_descriptors", "model_descriptors", "describe"]

PatchSet = Mapping[str, Mapping[str, np.ndarray]]


def raw_pixel_descriptors(patches: np.ndarray, size: int = 32) -> np.ndarray:
    """Each patch resized to size×size, flattened, minus its mean, scaled to unit L2 norm (a flat patch → 0)."""
    x = resize_patches(patches, size).reshape(len(patches), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def sift_descriptors(patches: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """128-D SIFT of each whole patch (kornia ``SIFTDescriptor``: 4×4 spatial × 8 orientation bins, Gaussian
    weighting, clipped at 0.2 and L2-normalised, as Lowe's)."""
    from kornia.feature import SIFTDescriptor

    p = patches.shape[-1]
    sift = SIFTDescriptor(patch_size=p, num_ang_bins=8, num_spatial_bins=4, rootsift=False)
    out = []
    with torch.no_grad():
        for b0 in range(0, len(patches), batch_size):
            x = torch.from_numpy(np.asarray(patches[b0 : b0 + batch_size], dtype=np.float32))[:, None] / 255.0
            out.append(sift(x).numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def model_descriptors(
    model: torch.nn.Module, input_size: int = 32, batch_size: int = 1024, device: str | torch.device = "cpu"
) -> Callable[[np.ndarray], np.ndarray]:
    """A describe function for a trained network that takes (B, 1, s, s) float patches in [0, 255].

    On an XLA device the last chunk is padded to ``batch_size`` (zeros, dropped after): every chunk is then one
    shape, and the graph compiles once, not once per remainder."""
    device = torch.device(device)
    pad = device.type == "xla"

    def run(patches: np.ndarray) -> np.ndarray:
        small = resize_patches(patches, input_size) if patches.shape[-1] != input_size else patches
        model.eval()
        out = []
        with torch.no_grad():
            for b0 in range(0, len(small), batch_size):
                chunk = np.asarray(small[b0 : b0 + batch_size], dtype=np.float32)
                n = len(chunk)
                if pad and n < batch_size:
                    chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)])
                x = torch.from_numpy(chunk)[:, None].to(device)
                out.append(model(x).float().cpu().numpy()[:n])
        return np.concatenate(out)

    return run


def describe(patches: PatchSet, fn: Callable[[np.ndarray], np.ndarray]) -> DescriptorSet:
    """Apply a describe function to every (sequence, type); one call per sequence over all 16 types."""
    data = {}
    for seq, per_type in patches.items():
        stacked = np.concatenate([per_type[t] for t in IMAGE_TYPES])
        d = fn(stacked)
        n = len(per_type["ref"])
        data[seq] = {t: d[k * n : (k + 1) * n] for k, t in enumerate(IMAGE_TYPES)}
    return DescriptorSet(data)
