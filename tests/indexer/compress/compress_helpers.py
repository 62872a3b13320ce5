"""Tiny hand-built patch bags for the compression tests."""

from __future__ import annotations

import numpy as np
import torch

from patchseek.types import PatchBag


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of x (n, dim) scaled to unit L2 norm."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_bag(vectors: np.ndarray, salience: np.ndarray | None = None, cols: int = 8) -> PatchBag:
    """A bag of vectors (n, dim) laid out row-major on a grid ``cols`` wide."""
    n = vectors.shape[0]
    sal = np.arange(n, dtype=np.float32) if salience is None else salience.astype(np.float32)
    pos = np.stack([np.arange(n) // cols, np.arange(n) % cols], axis=1).astype(np.int64)  # (n, 2)
    return PatchBag(
        vectors=torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
        salience=torch.from_numpy(sal),
        positions=torch.from_numpy(pos),
        grid=(max(1, (n + cols - 1) // cols), cols),
    )


def random_bags(n_bags: int, dim: int = 32, lo: int = 5, hi: int = 40, seed: int = 0) -> list[PatchBag]:
    """Bags of random unit vectors with random lengths in [lo, hi) and random salience."""
    rng = np.random.default_rng(seed)
    bags = []
    for _ in range(n_bags):
        n = int(rng.integers(lo, hi))
        bags.append(make_bag(unit_rows(rng.standard_normal((n, dim))), rng.random(n)))
    return bags
