"""``ProductQuantizer``: M sub-spaces × 256 centroids (optionally after an OPQ rotation), scored by ADC."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import Backend, Quantizer
from patchseek.indexer.compress.quantize._common import assign, fit_kmeans
from patchseek.kernels import code_maxsim

OPQ_SAMPLE = 32_768  # rows used to learn the rotation (the final codebooks use the whole sample)


class ProductQuantizer(Quantizer):
    """Product quantization: the vector is cut into ``m`` sub-vectors, each coded by its own k-means.

    codes (n, m) uint8, ``m`` bytes per patch. A query is scored by ADC: the look-up table
    ``lut[i, s, c] = q_i[s] · C_s[c]`` (n_q, m, k), ``pair(i, j) = Σ_s lut[i, s, codes[j, s]]``, summed
    over tokens of the per-document maximum by ``code_maxsim`` — exactly MaxSim against the decoded
    vectors.

    With ``opq=True`` (Ge et al., "Optimized Product Quantization", 2013) the vectors are first rotated
    by a fitted orthonormal ``R`` (dim, dim), ``y = x R.T``, so that the sub-spaces carry balanced
    variance and little correlation; anisotropic embeddings otherwise put most of their variance in a
    few sub-spaces and waste the codebooks of the others. ``R`` starts from the parametric solution
    (PCA directions dealt to sub-spaces by eigenvalue allocation, balancing the product of each
    sub-space's variances), then ``opq_iter`` non-parametric rounds alternate a PQ fit with the
    orthogonal Procrustes update ``R = argmin ‖x R.T - decode(encode(x R.T))‖``. Since ``R`` is
    orthonormal, ``q · x_hat = (q R.T) · y_hat``: queries are rotated by the same matrix and the ADC
    tables are built in the rotated space; ``decode`` rotates back.

    Parameters
    ----------
    m : int
        Number of sub-spaces; must divide ``dim``.
    k : int
        Centroids per sub-space (2..256; clamped to the sample size at ``fit``).
    opq : bool
        Learn an OPQ rotation before the sub-space split.
    opq_iter : int
        Procrustes refinement rounds of the rotation (0 = eigenvalue allocation only).
    seed : int
        Seed of the sub-space k-means (sub-space ``s`` uses ``seed + s``) and of the OPQ subsample.
    n_iter : int
        Lloyd iterations.
    """

    kind = "pq"

    def __init__(
        self,
        m: int = 16,
        k: int = 256,
        *,
        opq: bool = False,
        opq_iter: int = 1,
        seed: int = 0,
        n_iter: int = 20,
    ) -> None:
        super().__init__()
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise InvalidInputError(f"pq m must be an integer >= 1, got {m!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 256:
            raise InvalidInputError(f"pq k must be an integer in [2, 256], got {k!r}")
        if isinstance(opq_iter, bool) or not isinstance(opq_iter, int) or opq_iter < 0:
            raise InvalidInputError(f"pq opq_iter must be an integer >= 0, got {opq_iter!r}")
        self.m = m
        self.k = k
        self.opq = bool(opq)
        self.opq_iter = opq_iter
        self.seed = seed
        self.n_iter = n_iter
        self.centroids = np.zeros((0, 0, 0), dtype=np.float32)  # (m, k, dim/m)
        self.rotation = np.zeros((0, 0), dtype=np.float32)  # (dim, dim) orthonormal R, OPQ only

    @property
    def bytes_per_patch(self) -> int:
        return self.m

    def _check_dim(self, dim: int) -> None:
        if dim % self.m:
            raise InvalidInputError(f"pq m={self.m} must divide dim={dim}")

    def _sub(self, x: np.ndarray, s: int) -> np.ndarray:
        d = x.shape[1] // self.m
        return np.ascontiguousarray(x[:, s * d : (s + 1) * d])  # (n, dim/m)

    def _rotate(self, x: np.ndarray) -> np.ndarray:
        return x @ self.rotation.T if self.opq else x  # (n, dim)

    # ------------------------------------------------------------------------------------- fit
    def _fit_books(self, y: np.ndarray, n_iter: int) -> np.ndarray:
        """Sub-space codebooks (m, k', dim/m) of already-rotated vectors y (n, dim)."""
        books = [
            fit_kmeans(self._sub(y, s), self.k, seed=self.seed + s, n_iter=n_iter) for s in range(self.m)
        ]
        k = min(b.shape[0] for b in books)
        return np.stack([b[:k] for b in books]).astype(np.float32)  # (m, k', dim/m)

    def _fit_impl(self, x: np.ndarray) -> None:
        if self.opq:
            self.rotation = self._fit_rotation(x)  # (dim, dim)
        self.centroids = self._fit_books(self._rotate(x), self.n_iter)  # (m, k, dim/m)

    def _fit_rotation(self, x: np.ndarray) -> np.ndarray:
        """OPQ rotation R (dim, dim) float32 with orthonormal rows, learned on x (n, dim)."""
        rng = np.random.default_rng(self.seed)
        if x.shape[0] > OPQ_SAMPLE:
            x = x[np.sort(rng.choice(x.shape[0], OPQ_SAMPLE, replace=False))]  # (n', dim)
        rotation = eigenvalue_allocation(x, self.m)  # (dim, dim)
        for _ in range(self.opq_iter):
            self.rotation = rotation
            y = x @ rotation.T  # (n', dim)
            self.centroids = self._fit_books(y, max(4, self.n_iter // 2))
            y_hat = self._decode_rotated(self._encode_rotated(y))  # (n', dim)
            u, _, vt = np.linalg.svd(
                x.T.astype(np.float64) @ y_hat, full_matrices=False
            )  # x.T y_hat = U S Vt
            rotation = (u @ vt).T.astype(np.float32)  # Procrustes: R.T = U Vt
        return np.ascontiguousarray(rotation, dtype=np.float32)

    # ------------------------------------------------------------------------------ encode/decode
    def _encode_rotated(self, y: np.ndarray) -> np.ndarray:
        codes = np.empty((y.shape[0], self.m), dtype=np.uint8)  # (n, m)
        for s in range(self.m):
            codes[:, s] = assign(self._sub(y, s), self.centroids[s])
        return codes

    def _decode_rotated(self, codes: np.ndarray) -> np.ndarray:
        parts = [self.centroids[s][codes[:, s].astype(np.int64)] for s in range(self.m)]  # m × (n, dim/m)
        return np.concatenate(parts, axis=1)  # (n, dim)

    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        return self._encode_rotated(self._rotate(x))  # (n, m)

    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        if codes.ndim != 2 or codes.shape[1] != self.m:
            raise InvalidInputError(f"pq codes must be (n, {self.m}), got shape {codes.shape}")
        if codes.size and int(codes.max()) >= self.centroids.shape[1]:
            raise InvalidInputError(f"pq code out of range [0, {self.centroids.shape[1]})")
        y_hat = self._decode_rotated(codes)  # (n, dim), rotated space
        return np.ascontiguousarray(y_hat @ self.rotation) if self.opq else y_hat  # R orthonormal: R⁻¹ = R.T

    # ------------------------------------------------------------------------------------ score
    def _prepare_impl(self, q: torch.Tensor) -> Any:
        if self.opq:
            q = q @ torch.from_numpy(self.rotation).T  # (n_q, dim), rotated like the documents
        sub = q.reshape(q.shape[0], self.m, -1)  # (n_q, m, dim/m)
        return torch.einsum("qsd,skd->qsk", sub, torch.from_numpy(self.centroids))  # (n_q, m, k)

    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        return code_maxsim(prepared.to(codes.device), codes, offsets, backend=backend)  # (n_docs,)

    # -------------------------------------------------------------------------------- persist
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {
            "m": self.m,
            "k": self.k,
            "opq": self.opq,
            "opq_iter": self.opq_iter,
            "seed": self.seed,
            "n_iter": self.n_iter,
        }
        arrays: dict[str, np.ndarray] = {"centroids": self.centroids}
        if self.opq:
            arrays["rotation"] = self.rotation
        return params, arrays

    @classmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> ProductQuantizer:
        # indexes written before OPQ existed have no "opq" key: they are unrotated
        obj = cls(
            int(params["m"]),
            int(params["k"]),
            opq=bool(params.get("opq", False)),
            opq_iter=int(params.get("opq_iter", 0)),
            seed=int(params["seed"]),
            n_iter=int(params["n_iter"]),
        )
        obj.centroids = arrays["centroids"].astype(np.float32)
        if obj.opq:
            obj.rotation = arrays["rotation"].astype(np.float32)
        return obj


def eigenvalue_allocation(x: np.ndarray, m: int) -> np.ndarray:
    """Parametric OPQ rotation: principal directions of x (n, dim) dealt to ``m`` equal sub-spaces.

    Directions are taken by decreasing variance; each goes to the sub-space that still has room and
    the least variance so far, which balances the sub-spaces' variance (Ge et al. 2013's eigenvalue
    allocation, in the summed form of faiss's ``PCAMatrix`` balanced bins). Returns R (dim, dim)
    float32 with orthonormal rows: rows ``s·dim/m .. (s+1)·dim/m`` span sub-space ``s``.
    """
    dim = x.shape[1]
    width = dim // m
    centred = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)  # (n, dim)
    evals, evecs = np.linalg.eigh(centred.T @ centred / max(1, x.shape[0]))  # ascending
    order = np.argsort(-evals, kind="stable")  # (dim,) decreasing variance
    buckets: list[list[int]] = [[] for _ in range(m)]
    load = np.zeros(m)
    for direction in order:
        room = [s for s in range(m) if len(buckets[s]) < width]
        s = min(room, key=lambda b: (load[b], b))
        buckets[s].append(int(direction))
        load[s] += max(float(evals[direction]), 0.0)
    rows = [evecs[:, d] for bucket in buckets for d in bucket]  # dim × (dim,)
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)  # (dim, dim)
