"""The embedded default dataset: synthetic sequences from the photographs inside scikit-image's wheel.

**Synthetic** (and labelled so wherever it is reported): each photograph becomes a viewpoint sequence ``v_<name>``
(images 2–6 are the photograph warped by random homographies of growing strength, with mild photometric changes)
and an illumination sequence ``i_<name>`` (identity homographies, strong photometric changes: gamma, gain, offset,
a smooth shading ramp and sensor noise). The sequences then go through exactly the HPatches extraction protocol
(`tripletkit_hpatches.extract`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tripletkit_hpatches.extract import SequenceImages

__all__ = ["PHOTOS", "load_photos", "synthetic_sequences"]

# Photographs bundled in scikit-image's wheel (no download needed); binary and drawn images are left out.
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "gravel",
    "grass",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
    "clock",
    "motorcycle_left",
)


def load_photos(names=PHOTOS, max_side: int = 640) -> dict[str, np.ndarray]:
    """Grayscale float32 [0, 255] photographs that load offline (those that need a download are skipped)."""
    from skimage import color, data, transform

    out = {}
    for name in names:
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a missing or download-only image is simply not used
            continue
        if img.ndim == 3:
            img = color.rgb2gray(img[..., :3]) * 255.0
        elif img.dtype != np.uint8:
            img = (img - img.min()) / max(float(img.max() - img.min()), 1e-9) * 255.0
        img = img.astype(np.float32)
        scale = max_side / max(img.shape)
        if scale < 1:
            img = (transform.rescale(img / 255.0, scale, anti_aliasing=True) * 255.0).astype(np.float32)
        if min(img.shape) >= 200 and img.std() > 15:
            out[name] = img
    return out


def _random_homography(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Moves the image corners by up to ``strength`` × the image size and solves for H (image 1 → image k)."""
    h, w = shape
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)
    dst = src + rng.uniform(-strength, strength, (4, 2)) * np.array([w, h])
    ang = rng.uniform(-strength, strength) * 0.8
    c = np.array([w / 2, h / 2])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = (dst - c) @ rot.T + c
    a = []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.array(a))
    hm = vt[-1].reshape(3, 3)
    return hm / hm[2, 2]


def _warp(image: np.ndarray, hm: np.ndarray) -> np.ndarray:
    """Image k from image 1: each pixel of k looks up H⁻¹·x in image 1 (bilinear; outside → 0)."""
    h, w = image.shape
    inv = np.linalg.inv(hm)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    den = inv[2, 0] * xs + inv[2, 1] * ys + inv[2, 2]
    sx = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]) / den
    sy = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]) / den
    grid = torch.from_numpy(np.stack([sx / (w - 1) * 2 - 1, sy / (h - 1) * 2 - 1], -1)).float()[None]
    out = F.grid_sample(
        torch.from_numpy(image)[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[0, 0].numpy()


def _photometric(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    x = image / 255.0
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.5, 0.5) * strength)
    ramp = np.linspace(-1, 1, w)[None, :] * rng.uniform(-1, 1) + np.linspace(-1, 1, h)[:, None] * rng.uniform(-1, 1)
    x = x * (1 + 0.3 * strength * rng.uniform(-1, 1)) * (1 + 0.25 * strength * ramp) + 0.1 * strength * rng.uniform(
        -1, 1
    )
    x = x + rng.normal(0, 0.01 + 0.01 * strength, x.shape)
    return (np.clip(x, 0, 1) * 255.0).astype(np.float32)


def synthetic_sequences(photos: dict[str, np.ndarray], seed: int = 0) -> list[SequenceImages]:
    """A ``v_`` and an ``i_`` sequence (6 images each) per photograph, deterministic for ``seed``."""
    out = []
    for name, img in photos.items():
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        hs = [_random_homography(img.shape, 0.03 + 0.025 * k, rng) for k in range(1, 6)]
        v_images = [img] + [_photometric(_warp(img, hm), 0.2, rng) for hm in hs]
        out.append(SequenceImages(f"v_{name}", v_images, hs))
        eye = np.eye(3)
        i_images = [img] + [_photometric(img, 0.4 + 0.3 * k, rng) for k in range(1, 6)]
        out.append(SequenceImages(f"i_{name}", i_images, [eye] * 5))
    return out
