"""Hypothesis strategies for batches of embeddings and labels."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def batches(draw, min_n: int = 2, max_n: int = 14, max_dim: int = 5, max_classes: int = 5, grid: bool = True):
    """(embeddings float64 (N, D), labels int list). ``grid`` draws small integers/halves too, to provoke ties and
    coinciding points; otherwise continuous values."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_dim))
    n_classes = draw(st.integers(1, max_classes))
    labels = draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n))
    if grid and draw(st.booleans()):
        elements = st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    else:
        elements = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, width=64)
    x = draw(hnp.arrays(np.float64, (n, d), elements=elements))
    return x, labels


@st.composite
def generic_batches(draw, min_n: int = 3, max_n: int = 12, max_dim: int = 4, max_classes: int = 4):
    """Continuous Gaussian embeddings from a drawn seed: no ties, almost surely."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_dim))
    n_classes = draw(st.integers(1, max_classes))
    labels = draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31 - 1))
    x = np.random.default_rng(seed).normal(size=(n, d)) * draw(st.sampled_from([0.1, 1.0, 3.0]))
    return x, labels
