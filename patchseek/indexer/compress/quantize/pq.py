"""``ProductQuantizer``: M sub-spaces × 256 centroids, scored by asymmetric distance look-up tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import Backend, Quantizer
from patchseek.indexer.compress.quantize._common import assign, fit_kmeans
from patchseek.kernels import code_maxsim


class ProductQuantizer(Quantizer):
    """Product quantization: the vector is cut into ``m`` sub-vectors, each coded by its own k-means.

    codes (n, m) uint8, ``m`` bytes per patch. A query is scored by ADC: the look-up table
    ``lut[i, s, c] = q_i[s] · C_s[c]`` (n_q, m, k), ``pair(i, j) = Σ_s lut[i, s, codes[j, s]]``, summed
    over tokens of the per-document maximum by ``code_maxsim`` — exactly MaxSim against the decoded
    vectors.

    Parameters
    ----------
    m : int
        Number of sub-spaces; must divide ``dim``.
    k : int
        Centroids per sub-space (2..256; clamped to the sample size at ``fit``).
    seed : int
        Seed of the sub-space k-means (sub-space ``s`` uses ``seed + s``).
    n_iter : int
        Lloyd iterations.
    """

    kind = "pq"

    def __init__(self, m: int = 16, k: int = 256, *, seed: int = 0, n_iter: int = 20) -> None:
        super().__init__()
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise InvalidInputError(f"pq m must be an integer >= 1, got {m!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 256:
            raise InvalidInputError(f"pq k must be an integer in [2, 256], got {k!r}")
        self.m = m
        self.k = k
        self.seed = seed
        self.n_iter = n_iter
        self.centroids = np.zeros((0, 0, 0), dtype=np.float32)  # (m, k, dim/m)

    @property
    def bytes_per_patch(self) -> int:
        return self.m

    def _check_dim(self, dim: int) -> None:
        if dim % self.m:
            raise InvalidInputError(f"pq m={self.m} must divide dim={dim}")

    def _sub(self, x: np.ndarray, s: int) -> np.ndarray:
        d = x.shape[1] // self.m
        return np.ascontiguousarray(x[:, s * d : (s + 1) * d])  # (n, dim/m)

    def _fit_impl(self, x: np.ndarray) -> None:
        books = [
            fit_kmeans(self._sub(x, s), self.k, seed=self.seed + s, n_iter=self.n_iter) for s in range(self.m)
        ]
        k = min(b.shape[0] for b in books)
        self.centroids = np.stack([b[:k] for b in books]).astype(np.float32)  # (m, k, dim/m)

    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        codes = np.empty((x.shape[0], self.m), dtype=np.uint8)  # (n, m)
        for s in range(self.m):
            codes[:, s] = assign(self._sub(x, s), self.centroids[s])
        return codes

    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        if codes.ndim != 2 or codes.shape[1] != self.m:
            raise InvalidInputError(f"pq codes must be (n, {self.m}), got shape {codes.shape}")
        if codes.size and int(codes.max()) >= self.centroids.shape[1]:
            raise InvalidInputError(f"pq code out of range [0, {self.centroids.shape[1]})")
        parts = [self.centroids[s][codes[:, s].astype(np.int64)] for s in range(self.m)]  # m × (n, dim/m)
        return np.concatenate(parts, axis=1)  # (n, dim)

    def _prepare_impl(self, q: torch.Tensor) -> Any:
        sub = q.reshape(q.shape[0], self.m, -1)  # (n_q, m, dim/m)
        return torch.einsum("qsd,skd->qsk", sub, torch.from_numpy(self.centroids))  # (n_q, m, k)

    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        return code_maxsim(prepared.to(codes.device), codes, offsets, backend=backend)  # (n_docs,)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"m": self.m, "k": self.k, "seed": self.seed, "n_iter": self.n_iter}, {
            "centroids": self.centroids
        }

    @classmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> ProductQuantizer:
        obj = cls(int(params["m"]), int(params["k"]), seed=int(params["seed"]), n_iter=int(params["n_iter"]))
        obj.centroids = arrays["centroids"].astype(np.float32)
        return obj
