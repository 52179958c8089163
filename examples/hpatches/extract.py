"""HPatches-style patch extraction from an image sequence with ground-truth homographies.

The published protocol (hpatches-dataset README), as implemented here:

1. **Detections on image 1** with three detectors: difference of Gaussians and determinant of Hessian (strict
   scale-space maxima, the strongest 4000 of each; the scales and thresholds of scikit-image's ``blob_dog`` and
   ``blob_doh`` as we used them before, but linear in the image: no quadratic blob pruning) and Harris corners at
   four integration scales (σ = 1.6, 2.4, 3.6, 5.4).
2. **Measurement region** = detected scale × 5: a square of half-width ``R = 5σ`` around the point, rotated to
   **one dominant orientation** (Lowe's: the peak of a 36-bin gradient-orientation histogram, Gaussian-weighted
   with 1.5σ, refined by a parabola).
3. **Only regions fully inside every image**: the circle circumscribing the square (enlarged by 30 % for the
   jitter) must map inside each target image through its homography.
4. **Overlapping detections clustered**: in a random order, a detection is dropped when its region overlaps an
   already kept one by more than 50 % (intersection over union of the two discs): one per cluster, kept at random.
5. **Cap**: at most ``max_patches`` (2000, as HPatches) per sequence, a seeded random subset.
6. **Patches**: 65×65, bilinear samples of the region; ``ref`` from image 1 without jitter; for each image
   k = 2..6 three re-projections ``e``, ``h``, ``t`` of a *jittered* region through ``H_1_k`` (projectively, pixel
   by pixel). The jitter (rotation, log-scale, translation, anisotropy, uniform in ± bounds) is calibrated so that
   the median overlap of the jittered and the true region is 0.85 (easy), 0.72 (hard) and 0.60 (tough; HPatches
   does not publish this one); the overlaps actually drawn are measured and reported.

Sampling from regions much larger than 65 px uses a blurred copy of the image (σ = 0.5 · the down-sampling factor,
nearest of 0/1/2/4) to avoid aliasing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "JITTER",
    "SequenceImages",
    "Frames",
    "load_sequence",
    "detect",
    "select_frames",
    "extract_sequence",
    "region_overlap",
    "SequenceFileError",
]

PATCH = 65
LEVELS = ("e", "h", "t")
TARGET_OVERLAP = {"e": 0.85, "h": 0.72, "t": 0.60}
# Jitter bounds per level: rotation (degrees), log-scale, translation (fraction of R), anisotropy (log of the
# aspect ratio). Calibrated by `calibrate_jitter` (the multiplier on BASE_JITTER that gives the target median
# overlap); tests check that the medians still hold.
BASE_JITTER = np.array([20.0, 0.25, 0.25, 0.25])
JITTER_SCALE = {"e": 0.4386, "h": 0.8854, "t": 1.3728}  # calibrate_jitter(level, n=2000, seed=0)
JITTER = {lv: BASE_JITTER * s for lv, s in JITTER_SCALE.items()}


class SequenceFileError(ValueError):
    """A sequence folder that cannot be used; the message names the file."""


@dataclass
class SequenceImages:
    name: str
    images: list[np.ndarray]  # grayscale float32 in [0, 255]; images[0] is the reference
    homographies: list[np.ndarray]  # H_1_k for k = 2..n (images[k-1]), normalised so H[2, 2] = 1


@dataclass
class Frames:
    """Detected regions in image 1: centre (x, y), detection scale σ, orientation θ (radians)."""

    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.x)

    @property
    def radius(self) -> np.ndarray:
        return 5.0 * self.sigma

    def subset(self, keep: np.ndarray) -> Frames:
        return Frames(self.x[keep], self.y[keep], self.sigma[keep], self.theta[keep] if len(self.theta) else self.theta)


def _read_gray(path: Path) -> np.ndarray:
    """Grayscale in [0, 255] as float32. 16-bit images are scaled (65535 → 255), never clipped (PIL's
    ``convert("L")`` clips them to 255: a saturated, featureless image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                a = np.asarray(im, dtype=np.float64)
                if im.mode == "F":
                    top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
                else:
                    top = 65535.0 if im.mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
                if not np.isfinite(a).all() or a.min() < 0 or a.max() > top:
                    raise SequenceFileError(f"{path}: {im.mode} image with values outside [0, {top:g}]")
                return (a * (255.0 / top)).astype(np.float32)
            return np.asarray(im.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as e:
        raise SequenceFileError(f"{path}: not a readable image ({e})") from e


def _read_h(path: Path) -> np.ndarray:
    try:
        h = np.array([[float(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()])
    except (OSError, ValueError) as e:
        raise SequenceFileError(f"{path}: not a 3×3 homography ({e})") from e
    if h.shape != (3, 3) or not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        raise SequenceFileError(f"{path}: not a usable 3×3 homography (shape {h.shape})")
    h = h / h[2, 2]
    # a singular (rank < 3) matrix maps the image onto a line or a point: every patch would be constant
    singular = np.linalg.svd(h, compute_uv=False)
    if singular[-1] <= 1e-9 * singular[0]:
        raise SequenceFileError(
            f"{path}: degenerate homography (rank {int((singular > 1e-9 * singular[0]).sum())} of 3, "
            f"singular values {', '.join(f'{v:.3g}' for v in singular)})"
        )
    return h


def load_sequence(folder: str | os.PathLike, max_images: int = 6) -> SequenceImages:
    """``1.png`` (or ``.ppm``/``.pgm``/``.jpg``) … ``n.png`` and ``H_1_2`` … ``H_1_n``; the first ``max_images``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SequenceFileError(f"{folder}: not a directory")
    images, hs = [], []
    for k in range(1, max_images + 1):
        path = next(
            (
                folder / f"{k}{ext}"
                for ext in (".png", ".ppm", ".pgm", ".jpg", ".jpeg")
                if (folder / f"{k}{ext}").exists()
            ),
            None,
        )
        if path is None:
            if k <= 2:
                raise SequenceFileError(f"{folder / f'{k}.png'}: missing")
            break
        images.append(_read_gray(path))
        if k > 1:
            hp = folder / f"H_1_{k}"
            if not hp.exists():
                raise SequenceFileError(f"{hp}: missing")
            hs.append(_read_h(hp))
    return SequenceImages(folder.name, images, hs)


# ------------------------------------------------------------------------------------------------ detection
def _strict_peaks(cube: np.ndarray, sigmas: np.ndarray, threshold: float, cap: int) -> np.ndarray:
    """(row, col, σ) of the scale-space points strictly above their 26 neighbours and above ``threshold``; the
    ``cap`` strongest. Strict maxima: a plateau (a saturated or flat area) gives none, instead of one candidate per
    pixel. Linear in the cube's size (a maximum filter and a partial sort)."""
    from scipy.ndimage import maximum_filter

    footprint = np.ones((3, 3, 3), dtype=bool)
    footprint[1, 1, 1] = False
    neighbours = maximum_filter(cube, footprint=footprint, mode="constant", cval=-np.inf)
    r, c, k = np.nonzero((cube > neighbours) & (cube > threshold))
    if len(r) > cap:
        keep = np.sort(np.argpartition(-cube[r, c, k], cap - 1)[:cap])
        r, c, k = r[keep], c[keep], k[keep]
    return np.column_stack([r.astype(float), c.astype(float), sigmas[k]])


def detect(image: np.ndarray, max_per_detector: int = 4000) -> Frames:
    """DoG, determinant-of-Hessian and multi-scale Harris detections on a grayscale image in [0, 255].

    DoG (σ = 1.6 · 1.6^i up to 12, response ``(G_σi − G_σi+1) / 0.6``, threshold 0.02) and DoH (8 scales from 2 to
    12, scikit-image's box-filter Hessian determinant, threshold 0.002) keep strict 3×3×3 scale-space maxima, the
    ``max_per_detector`` strongest; overlapping detections are reduced later by the region clustering. Every step is
    linear in the image (scikit-image's blob pruning is quadratic in the number of maxima and ran out of memory on
    partly saturated images)."""
    from scipy.ndimage import gaussian_filter
    from skimage.feature import corner_harris, corner_peaks, hessian_matrix_det

    img = np.asarray(image, dtype=np.float64) / 255.0
    found = []
    k = int(np.log(12.0 / 1.6) / np.log(1.6) + 1)
    sigmas = 1.6 * 1.6 ** np.arange(k + 1)
    blurred = [gaussian_filter(img, s, mode="reflect") for s in sigmas]
    dog = np.stack([(blurred[i] - blurred[i + 1]) / 0.6 for i in range(k)], axis=-1)
    found.append(_strict_peaks(dog, sigmas[:k], 0.02, max_per_detector))
    doh_sigmas = np.linspace(2.0, 12.0, 8)
    doh = np.stack([hessian_matrix_det(img, sigma=s, approximate=True) for s in doh_sigmas], axis=-1)
    found.append(_strict_peaks(doh, doh_sigmas, 0.002, max_per_detector))
    for s in (1.6, 2.4, 3.6, 5.4):
        response = corner_harris(img, sigma=s)
        if not response.max() > 0:  # a flat image: no corner anywhere
            continue
        peaks = corner_peaks(
            response,
            min_distance=max(1, int(round(2 * s))),
            threshold_rel=0.02,
            num_peaks=max_per_detector // 4,
        )
        found.append(np.column_stack([peaks.astype(float), np.full(len(peaks), s)]))
    rcs = np.concatenate([f for f in found if len(f)]) if any(len(f) for f in found) else np.zeros((0, 3))
    return Frames(x=rcs[:, 1].astype(np.float64), y=rcs[:, 0].astype(np.float64), sigma=rcs[:, 2].astype(np.float64))


def _inside_all(frames: Frames, seq: SequenceImages, margin: float = 1.3) -> np.ndarray:
    """Whether the circle circumscribing each (enlarged) region lies inside image 1 and maps inside every image."""
    a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    r = frames.radius[:, None] * math.sqrt(2) * margin
    px = frames.x[:, None] + r * np.cos(a)[None]
    py = frames.y[:, None] + r * np.sin(a)[None]
    h0, w0 = seq.images[0].shape
    ok = ((px >= 0) & (px <= w0 - 1) & (py >= 0) & (py <= h0 - 1)).all(1)
    for h, img in zip(seq.homographies, seq.images[1:]):
        den = h[2, 0] * px + h[2, 1] * py + h[2, 2]
        qx = (h[0, 0] * px + h[0, 1] * py + h[0, 2]) / den
        qy = (h[1, 0] * px + h[1, 1] * py + h[1, 2]) / den
        hk, wk = img.shape
        ok &= ((den > 0) & (qx >= 0) & (qx <= wk - 1) & (qy >= 0) & (qy <= hk - 1)).all(1)
    return ok


def _disc_iou(x1, y1, r1, x2, y2, r2) -> np.ndarray:
    d = np.hypot(x1 - x2, y1 - y2)
    a1, a2 = np.pi * r1**2, np.pi * r2**2
    inter = np.zeros_like(d)
    inside = d <= np.abs(r1 - r2)
    inter[inside] = np.minimum(a1, a2)[inside] if np.ndim(a1) else np.minimum(a1, a2[inside])
    part = (d < r1 + r2) & ~inside
    if part.any():
        dd, rr1, rr2 = d[part], np.broadcast_to(r1, d.shape)[part], r2[part]
        c1 = np.clip((dd**2 + rr1**2 - rr2**2) / (2 * dd * rr1), -1, 1)
        c2 = np.clip((dd**2 + rr2**2 - rr1**2) / (2 * dd * rr2), -1, 1)
        inter[part] = (
            rr1**2 * np.arccos(c1)
            + rr2**2 * np.arccos(c2)
            - 0.5
            * np.sqrt(np.clip((-dd + rr1 + rr2) * (dd + rr1 - rr2) * (dd - rr1 + rr2) * (dd + rr1 + rr2), 0, None))
        )
    return inter / (a1 + a2 - inter)


def select_frames(frames: Frames, seq: SequenceImages, max_patches: int, rng: np.random.Generator) -> Frames:
    """Regions inside every image; clusters of > 50 % overlap reduced to one at random; at most ``max_patches``."""
    frames = frames.subset(_inside_all(frames, seq))
    order = rng.permutation(len(frames))
    kept: list[int] = []
    kx, ky, kr = (np.zeros(len(frames)) for _ in range(3))
    for i in order:
        m = len(kept)
        if m:
            near = np.flatnonzero(np.abs(kx[:m] - frames.x[i]) < kr[:m] + frames.radius[i])
            if len(near):
                iou = _disc_iou(frames.x[i], frames.y[i], frames.radius[i], kx[near], ky[near], kr[near])
                if (iou > 0.5).any():
                    continue
        kx[m], ky[m], kr[m] = frames.x[i], frames.y[i], frames.radius[i]
        kept.append(i)
    kept_arr = np.array(kept, dtype=np.int64)
    if len(kept_arr) > max_patches:
        kept_arr = rng.choice(kept_arr, max_patches, replace=False)
    return frames.subset(np.sort(kept_arr))


def dominant_orientation(image: np.ndarray, frames: Frames) -> np.ndarray:
    """Lowe's dominant orientation per frame, from a 36-bin histogram of gradients weighted by a 1.5σ Gaussian."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    sm = gaussian_filter(image.astype(np.float64), 1.0)
    gy, gx = np.gradient(sm)
    grid = np.linspace(-1, 1, 17)
    uu, vv = np.meshgrid(grid, grid)
    theta = np.zeros(len(frames))
    for b0 in range(0, len(frames), 512):
        sl = slice(b0, b0 + 512)
        rad = 4.5 * frames.sigma[sl][:, None, None]
        xs = frames.x[sl][:, None, None] + rad * uu[None]
        ys = frames.y[sl][:, None, None] + rad * vv[None]
        coords = np.stack([ys.ravel(), xs.ravel()])
        dx = map_coordinates(gx, coords, order=1, mode="nearest").reshape(xs.shape)
        dy = map_coordinates(gy, coords, order=1, mode="nearest").reshape(xs.shape)
        w = np.exp(-(uu**2 + vv**2) * 4.5**2 / (2 * 1.5**2))[None] * np.hypot(dx, dy)
        ang = np.arctan2(dy, dx)
        bins = ((ang + np.pi) / (2 * np.pi) * 36).astype(int) % 36
        hist = np.zeros((xs.shape[0], 36))
        np.add.at(
            hist,
            (np.repeat(np.arange(xs.shape[0]), w[0].size), bins.reshape(xs.shape[0], -1).ravel()),
            w.reshape(xs.shape[0], -1).ravel(),
        )
        hist = (np.roll(hist, 1, 1) + 2 * hist + np.roll(hist, -1, 1)) / 4  # smoothing, as Lowe
        k = hist.argmax(1)
        left, mid, right = (
            hist[np.arange(len(k)), (k - 1) % 36],
            hist[np.arange(len(k)), k],
            hist[np.arange(len(k)), (k + 1) % 36],
        )
        den = left - 2 * mid + right
        offset = np.where(np.abs(den) > 1e-12, 0.5 * (left - right) / np.where(den == 0, 1, den), 0.0)
        theta[sl] = (k + 0.5 + offset) / 36 * 2 * np.pi - np.pi
    return theta


# ------------------------------------------------------------------------------------------------ jitter
def draw_jitter(n: int, level: str, rng: np.random.Generator) -> np.ndarray:
    """(n, 2, 3) affine maps in normalised region coordinates: ``u ↦ M u + t``."""
    rot_deg, log_s, trans, aniso = JITTER[level]
    th = np.deg2rad(rng.uniform(-rot_deg, rot_deg, n))
    s = np.exp(rng.uniform(-log_s, log_s, n))
    a = np.exp(rng.uniform(-aniso, aniso, n))
    t = rng.uniform(-trans, trans, (n, 2))
    c, si = np.cos(th), np.sin(th)
    m = np.empty((n, 2, 3))
    m[:, 0, 0], m[:, 0, 1] = c * s * a, -si * s / a
    m[:, 1, 0], m[:, 1, 1] = si * s * a, c * s / a
    m[:, :, 2] = t
    return m


_GRID = np.stack(np.meshgrid(np.linspace(-2, 2, 96), np.linspace(-2, 2, 96)), -1).reshape(-1, 2)


def region_overlap(jitter: np.ndarray) -> np.ndarray:
    """Intersection over union of the unit disc (the true region) and its image under each jitter map, by
    rasterising both on a 96×96 grid over [−2, 2]²."""
    inside_true = (_GRID**2).sum(1) <= 1.0
    out = np.empty(len(jitter))
    for i, m in enumerate(jitter):
        a = m[:, :2]
        inv = np.linalg.inv(a)
        pre = (_GRID - m[:, 2]) @ inv.T  # the point's pre-image under the jitter
        inside_j = (pre**2).sum(1) <= 1.0
        inter = (inside_true & inside_j).sum()
        out[i] = inter / max((inside_true | inside_j).sum(), 1)
    return out


def calibrate_jitter(level: str, n: int = 3000, seed: int = 0) -> float:
    """The multiplier on BASE_JITTER whose median overlap is TARGET_OVERLAP[level] (bisection)."""
    global JITTER
    lo, hi = 0.01, 4.0
    saved = JITTER[level].copy()
    try:
        for _ in range(30):
            mid = (lo + hi) / 2
            JITTER[level] = BASE_JITTER * mid
            med = float(np.median(region_overlap(draw_jitter(n, level, np.random.default_rng(seed)))))
            lo, hi = (mid, hi) if med > TARGET_OVERLAP[level] else (lo, mid)
        return (lo + hi) / 2
    finally:
        JITTER[level] = saved


# ------------------------------------------------------------------------------------------------ sampling
_BLUR_SIGMAS = (0.0, 1.0, 2.0, 4.0)


def _blurred(image: np.ndarray) -> list[torch.Tensor]:
    from scipy.ndimage import gaussian_filter

    return [torch.from_numpy(image if s == 0 else gaussian_filter(image, s).astype(np.float32)) for s in _BLUR_SIGMAS]


def _sample(stack: list[torch.Tensor], level_of: np.ndarray, xs: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
    """Bilinear samples at pixel coordinates (n, P, P) from the blur level chosen per patch."""
    h, w = stack[0].shape
    out = np.zeros(tuple(xs.shape), dtype=np.float32)
    for lv, img in enumerate(stack):
        sel = torch.from_numpy(np.flatnonzero(level_of == lv))
        if not len(sel):
            continue
        gx = xs[sel] * (2.0 / (w - 1)) - 1
        gy = ys[sel] * (2.0 / (h - 1)) - 1
        grid = torch.stack([gx, gy], -1).reshape(1, -1, xs.shape[-1], 2)
        s = F.grid_sample(img[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        out[sel.numpy()] = s.reshape(len(sel), *xs.shape[1:]).numpy()
    return out


def _patch_coordinates(frames: Frames, jitter: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-1 coordinates (n, P, P) of each patch pixel: the affine map u ↦ c + R·Rot(θ)·(M u + t), u on [−1, 1]²
    (M, t: the jitter; identity for the reference patch)."""
    n = len(frames)
    c, s = np.cos(frames.theta), np.sin(frames.theta)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2) * frames.radius[:, None, None]  # (n, 2, 2)
    if jitter is None:
        a, t = rot, np.zeros((n, 2))
    else:
        a, t = rot @ jitter[:, :, :2], np.einsum("nij,nj->ni", rot, jitter[:, :, 2])
    b = np.stack([frames.x, frames.y], -1) + t
    a_t = torch.from_numpy(a).float()
    b_t = torch.from_numpy(b).float()
    g = torch.linspace(-1, 1, PATCH)
    uy, ux = torch.meshgrid(g, g, indexing="ij")
    x = a_t[:, 0, 0, None, None] * ux + a_t[:, 0, 1, None, None] * uy + b_t[:, 0, None, None]
    y = a_t[:, 1, 0, None, None] * ux + a_t[:, 1, 1, None, None] * uy + b_t[:, 1, None, None]
    return x, y


def _project(h: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = h.astype(np.float64)
    den = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    return (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / den, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / den


@dataclass
class ExtractionResult:
    name: str
    patches: dict[str, np.ndarray]  # type -> (N, 65, 65) uint8
    overlaps: dict[str, float]  # level -> median overlap of the jittered regions drawn
    detections: int
    seconds: float


def extract_sequence(seq: SequenceImages, max_patches: int = 2000, seed: int = 0) -> ExtractionResult:
    """The whole protocol for one sequence (images 2..6 → types 1..5)."""
    t0 = time.perf_counter()
    if len(seq.images) < 6:
        raise SequenceFileError(f"{seq.name}: {len(seq.images)} images, the protocol needs 6 (1 reference + 5 targets)")
    rng = np.random.default_rng([seed, sum(map(ord, seq.name))])
    found = detect(seq.images[0])
    if len(found) == 0:
        raise SequenceFileError(f"{seq.name}: image 1 gives no detections (a flat or saturated image?)")
    frames = select_frames(found, seq, max_patches, rng)
    if len(frames) == 0:
        raise SequenceFileError(f"{seq.name}: no region lies inside all images")
    frames.theta = dominant_orientation(seq.images[0], frames)
    factor = 2 * frames.radius / (PATCH - 1)
    level_of = np.searchsorted(np.array(_BLUR_SIGMAS[1:]) * 2, factor, side="right")  # σ ≈ factor / 2
    patches: dict[str, np.ndarray] = {}
    stacks = [_blurred(img) for img in seq.images[:6]]
    x, y = _patch_coordinates(frames, None)
    patches["ref"] = np.clip(np.rint(_sample(stacks[0], level_of, x, y)), 0, 255).astype(np.uint8)
    overlaps: dict[str, list[float]] = {lv: [] for lv in LEVELS}
    for k in range(1, 6):
        for lv in LEVELS:
            jit = draw_jitter(len(frames), lv, rng)
            overlaps[lv].append(region_overlap(jit[: min(300, len(jit))]))
            x, y = _patch_coordinates(frames, jit)
            xk, yk = _project(seq.homographies[k - 1], x, y)
            patches[f"{lv}{k}"] = np.clip(np.rint(_sample(stacks[k], level_of, xk, yk)), 0, 255).astype(np.uint8)
    med = {lv: float(np.median(np.concatenate(v))) for lv, v in overlaps.items()}
    return ExtractionResult(seq.name, patches, med, len(found), time.perf_counter() - t0)
