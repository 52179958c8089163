"""Reading HPatches patch images: N patches of P×P stacked in one column (``hpatches-release``: P = 65)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["PatchFileError", "read_patch_column", "resize_patches"]


class PatchFileError(ValueError):
    """A patch image that cannot be used; the message names the file."""


def read_patch_column(path: str | os.PathLike, patch_size: int = 65) -> np.ndarray:
    """(N, P, P) uint8 patches from a grayscale PNG of width P and height N·P. Errors name the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise PatchFileError(f"{path}: missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "I;16", "I"):
                im = im.convert("L")
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise PatchFileError(f"{path}: not a readable image ({e})") from e
    if a.ndim != 2:
        raise PatchFileError(f"{path}: expected a grayscale image, got shape {a.shape}")
    h, w = a.shape
    if w != patch_size:
        raise PatchFileError(
            f"{path}: width {w}, expected {patch_size} (one column of {patch_size}×{patch_size} patches)"
        )
    if h == 0 or h % patch_size:
        raise PatchFileError(f"{path}: height {h} is not a multiple of {patch_size}")
    if a.dtype != np.uint8:
        # 16-bit (or 32-bit) columns are scaled to 8 bits (65535 → 255), never wrapped modulo 256
        top = 65535.0 if a.dtype == np.uint16 or a.max() > 255 else 255.0
        if a.min() < 0 or a.max() > 65535:
            raise PatchFileError(f"{path}: values outside [0, 65535] in a {a.dtype} image")
        a = np.rint(a.astype(np.float64) * (255.0 / top))
    return np.ascontiguousarray(a.astype(np.uint8).reshape(h // patch_size, patch_size, patch_size))


def resize_patches(patches: np.ndarray, size: int = 32) -> np.ndarray:
    """Resize (N, P, P) uint8 patches to (N, size, size) with area interpolation (the mean over each output
    pixel's footprint, anti-aliased; what the N-HPatches 32×32 patches were made with is not documented)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.asarray(patches, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=(size, size), mode="area")[:, 0]
    return out.round().clamp(0, 255).to(torch.uint8).numpy()
