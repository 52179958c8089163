"""A documented, seeded noise model in the spirit of N-HPatches. **It is ours, not the original**: N-HPatches'
generator was never published ("random non-smooth perturbations ... from low to high noises" is all its README
says), so numbers on data noised here are not N-HPatches numbers.

Per patch, independently per pixel, on 32×32 uint8 patches:

1. additive Gaussian noise with standard deviation ``σ_level``;
2. impulse (salt-and-pepper) noise: each pixel with probability ``p_level`` becomes 0 or 255;
3. rounding and clipping to [0, 255].

Both are non-smooth (no spatial correlation) and grow from ``ref`` to ``e`` to ``h`` to ``t`` (table below, scaled by
``strength``). With the defaults the identity "denoiser" has a mean absolute error of about 10 grey levels on
natural patches (measured on the real HPatches ``v_graffiti/ref.png`` patches: see the tests), the order of
magnitude reported for N-HPatches (untrained U-Net ≈ 10).
"""

from __future__ import annotations

import numpy as np

from tripletkit_hpatches.descriptors import IMAGE_TYPES

__all__ = ["NOISE_LEVELS", "add_noise", "noise_sequence"]

#: level -> (Gaussian σ, impulse probability)
NOISE_LEVELS = {"ref": (7.0, 0.004), "e": (9.0, 0.008), "h": (11.5, 0.012), "t": (14.0, 0.016)}


def add_noise(patches: np.ndarray, level: str, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    sigma, p = NOISE_LEVELS[level]
    x = patches.astype(np.float32) + rng.normal(0.0, sigma * strength, patches.shape).astype(np.float32)
    impulse = rng.random(patches.shape) < p * strength
    x = np.where(impulse, np.where(rng.random(patches.shape) < 0.5, 0.0, 255.0), x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def noise_sequence(
    clean: dict[str, np.ndarray], name: str, seed: int = 0, strength: float = 1.0
) -> dict[str, np.ndarray]:
    """Noisy versions of the 16 types of one sequence; deterministic for (seed, sequence name, type)."""
    out = {}
    for t in IMAGE_TYPES:
        rng = np.random.default_rng([seed, sum(map(ord, name)), IMAGE_TYPES.index(t)])
        out[t] = add_noise(clean[t], "ref" if t == "ref" else t[0], rng, strength)
    return out
