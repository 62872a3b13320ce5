"""Helpers shared by the quantizers: k-means fitting (faiss, else scikit-learn), assignment, bit packing."""

from __future__ import annotations

import numpy as np

ASSIGN_CHUNK = 16384


def fit_kmeans(x: np.ndarray, k: int, *, seed: int, n_iter: int = 20) -> np.ndarray:
    """Lloyd k-means centroids of ``x``.

    Uses ``faiss.Kmeans`` when faiss is installed (fast, multi-threaded), else scikit-learn's
    ``KMeans``. ``k`` is clamped to the number of sample rows.

    Parameters
    ----------
    x : np.ndarray (n, dim) float32
    k : int
        Requested number of centroids.
    seed : int
        Seed of the initialisation (and of faiss's subsampling).
    n_iter : int
        Lloyd iterations.

    Returns
    -------
    np.ndarray
        (min(k, n), dim) float32 centroids.
    """
    k = min(k, x.shape[0])
    x = np.ascontiguousarray(x, dtype=np.float32)
    try:
        import faiss
    except ImportError:  # faiss is the optional [cpu] extra: scikit-learn always works
        return _sklearn_kmeans(x, k, seed=seed, n_iter=n_iter)
    km = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)  # (k, dim)


def _sklearn_kmeans(x: np.ndarray, k: int, *, seed: int, n_iter: int) -> np.ndarray:
    """scikit-learn k-means centroids (k, dim) float32 of x (n, dim)."""
    from sklearn.cluster import KMeans

    fitted = KMeans(n_clusters=k, n_init=1, max_iter=n_iter, random_state=seed).fit(x)
    return np.ascontiguousarray(fitted.cluster_centers_, dtype=np.float32)  # (k, dim)


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """Index (n,) int64 of the nearest centroid (Euclidean) of each row of x (n, dim)."""
    c_sq = np.einsum("kd,kd->k", centroids, centroids)  # (k,)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]  # (b, dim)
        dist = c_sq[None, :] - 2.0 * (block @ centroids.T)  # (b, k), ‖x‖² dropped
        out[start : start + chunk] = np.argmin(dist, axis=1)
    return out


def pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack small unsigned integers (n, dim) of ``bits`` ∈ {1, 2, 4, 8} bits each into bytes.

    The first value of each byte goes to its high bits, so with ``bits`` ≤ 4 the high nibble of byte
    ``j`` holds values ``[j·8/bits, j·8/bits + 4/bits)``: every nibble is a fixed group of columns.

    values (n, dim) uint8 with dim·bits % 8 == 0 -> (n, dim·bits/8) uint8
    """
    n, dim = values.shape
    per = 8 // bits
    groups = values.astype(np.uint8).reshape(n, dim // per, per)  # (n, bytes, per)
    shifts = (8 - bits * (np.arange(per) + 1)).astype(np.uint8)  # (per,)
    return np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint8)  # (n, bytes)


def unpack_uint(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """Inverse of ``pack_uint``: packed (n, dim·bits/8) uint8 -> (n, dim) uint8."""
    n = packed.shape[0]
    per = 8 // bits
    shifts = (8 - bits * (np.arange(per) + 1)).astype(np.uint8)  # (per,)
    mask = np.uint8((1 << bits) - 1)
    vals = (packed[:, :, None] >> shifts) & mask  # (n, bytes, per)
    return vals.reshape(n, dim)
