"""``KMeansQuantizer``: centroid codes (HPC-ColPali) with optional PLAID-style residual bits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import ArrayLike, Backend, Quantizer, as_code_tensor, as_offsets
from patchseek.indexer.compress.quantize._common import assign, fit_kmeans, pack_uint, unpack_uint
from patchseek.kernels import code_maxsim, maxsim

RESIDUAL_CHUNK = 8192


class KMeansQuantizer(Quantizer):
    """Each patch becomes the id of its nearest k-means centroid, plus optional residual bits.

    Without residuals, codes are (n,) uint8 for ``k`` ≤ 256, (n,) uint16 otherwise, and a query is
    scored asymmetrically: ``T = Q @ C.T`` (n_q, k), ``score = Σ_i max_j T[i, code_j]`` through
    ``code_maxsim`` — exactly MaxSim against the decoded vectors (the centroids).

    With ``residual_bits = b`` (PLAID), the residual ``x - C[code]`` is quantised per dimension into
    ``2^b`` buckets whose cutoffs are the per-dimension quantiles of the sample's residuals and whose
    weights are the per-bucket mean residual (Lloyd's reconstruction). Codes are then (n, id_bytes +
    dim·b/8) uint8: the centroid id (little-endian) followed by the packed bucket indices. With
    ``k`` ≤ 256 the whole code is a row of bytes and ``q · x_hat`` is additive over them, so scoring is
    ADC through ``code_maxsim`` with a (n_q, 1 + dim·b/8, 256) table: byte 0 looks up ``q · C[id]``,
    residual byte ``s`` looks up ``Σ_{t in byte s} q_t · weights[t, bucket_t]``. With 2-byte ids the
    id is not additive over its bytes: those codes are decoded and scored by the float ``maxsim``
    kernel (``score_many`` decodes once per batch).

    Parameters
    ----------
    k : int
        Number of centroids (2..65536; clamped to the sample size at ``fit``).
    residual_bits : {0, 1, 2, 4}
        Residual bits per dimension.
    seed : int
        k-means seed.
    n_iter : int
        Lloyd iterations.
    """

    kind = "kmeans"

    def __init__(self, k: int = 256, residual_bits: int = 0, *, seed: int = 0, n_iter: int = 20) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 65536:
            raise InvalidInputError(f"kmeans k must be an integer in [2, 65536], got {k!r}")
        if residual_bits not in (0, 1, 2, 4):
            raise InvalidInputError(f"residual_bits must be 0, 1, 2 or 4, got {residual_bits!r}")
        self.k = k
        self.residual_bits = residual_bits
        self.seed = seed
        self.n_iter = n_iter
        self.centroids = np.zeros((0, 0), dtype=np.float32)  # (k, dim)
        self.cutoffs = np.zeros((0, 0), dtype=np.float32)  # (dim, 2^b - 1)
        self.weights = np.zeros((0, 0), dtype=np.float32)  # (dim, 2^b)

    @property
    def id_bytes(self) -> int:
        return 1 if self.k <= 256 else 2

    @property
    def bytes_per_patch(self) -> int:
        return self.id_bytes + self.fitted_dim * self.residual_bits // 8

    def _check_dim(self, dim: int) -> None:
        if self.residual_bits and (dim * self.residual_bits) % 8:
            raise InvalidInputError(
                f"{self.residual_bits}-bit residuals need dim·bits % 8 == 0, got dim={dim}"
            )

    # ------------------------------------------------------------------------------------- fit
    def _fit_impl(self, x: np.ndarray) -> None:
        self.centroids = fit_kmeans(x, self.k, seed=self.seed, n_iter=self.n_iter)  # (k', dim)
        if not self.residual_bits:
            return
        res = x - self.centroids[assign(x, self.centroids)]  # (n, dim)
        levels = 1 << self.residual_bits
        cut_q = np.arange(1, levels) / levels  # (levels - 1,)
        self.cutoffs = np.quantile(res, cut_q, axis=0).T.astype(np.float32)  # (dim, levels - 1)
        mid_q = (np.arange(levels) + 0.5) / levels
        weights = np.quantile(res, mid_q, axis=0).T.astype(np.float64)  # (dim, levels) fallback
        buckets = self._bucketize(res)  # (n, dim)
        for level in range(levels):
            mask = buckets == level  # (n, dim)
            count = mask.sum(axis=0)  # (dim,)
            total = np.where(mask, res, 0.0).sum(axis=0)  # (dim,)
            weights[:, level] = np.where(count > 0, total / np.maximum(count, 1), weights[:, level])
        self.weights = weights.astype(np.float32)

    def _bucketize(self, res: np.ndarray) -> np.ndarray:
        """Bucket index (n, dim) uint8 of each residual coordinate res (n, dim)."""
        out = np.empty(res.shape, dtype=np.uint8)
        for start in range(0, res.shape[0], RESIDUAL_CHUNK):
            block = res[start : start + RESIDUAL_CHUNK]  # (b, dim)
            out[start : start + RESIDUAL_CHUNK] = (block[:, :, None] > self.cutoffs[None]).sum(axis=2)
        return out

    # ------------------------------------------------------------------------------ encode/decode
    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        ids = assign(x, self.centroids)  # (n,)
        id_dtype = np.uint8 if self.id_bytes == 1 else np.dtype("<u2")
        if not self.residual_bits:
            return ids.astype(id_dtype)  # (n,)
        id_cols = ids.astype(id_dtype).view(np.uint8).reshape(-1, self.id_bytes)  # (n, id_bytes)
        buckets = self._bucketize(x - self.centroids[ids])  # (n, dim)
        packed = pack_uint(buckets, self.residual_bits)  # (n, dim·b/8)
        return np.ascontiguousarray(np.concatenate([id_cols, packed], axis=1))  # (n, bytes_per_patch)

    def _split(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Centroid ids (n,) int64 and packed residual bytes (n, dim·b/8) or None."""
        if not self.residual_bits:
            if codes.ndim != 1:
                raise InvalidInputError(f"kmeans codes must be (n,), got shape {codes.shape}")
            if codes.dtype == np.int16:  # the kernels' view of uint16 codes
                codes = codes.view(np.uint16)
            return codes.astype(np.int64), None
        if codes.ndim != 2 or codes.shape[1] != self.bytes_per_patch or codes.dtype != np.uint8:
            raise InvalidInputError(f"residual kmeans codes must be (n, {self.bytes_per_patch}) uint8")
        id_part = np.ascontiguousarray(codes[:, : self.id_bytes])  # (n, id_bytes)
        ids = (
            id_part[:, 0].astype(np.int64)
            if self.id_bytes == 1
            else id_part.view("<u2")[:, 0].astype(np.int64)
        )
        return ids, codes[:, self.id_bytes :]

    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        ids, packed = self._split(codes)
        if ids.size and (ids.min() < 0 or ids.max() >= self.centroids.shape[0]):
            raise InvalidInputError(f"kmeans code out of range [0, {self.centroids.shape[0]})")
        out = self.centroids[ids]  # (n, dim)
        if packed is None:
            return out
        dim = self.fitted_dim
        for start in range(0, out.shape[0], RESIDUAL_CHUNK):
            buckets = unpack_uint(packed[start : start + RESIDUAL_CHUNK], self.residual_bits, dim)  # (b, dim)
            out[start : start + RESIDUAL_CHUNK] += self.weights[np.arange(dim)[None, :], buckets]
        return out

    # ------------------------------------------------------------------------------------ score
    @property
    def _decodes_to_score(self) -> bool:
        """Residual codes with 2-byte ids are scored on decoded vectors (see the class docstring)."""
        return bool(self.residual_bits) and self.id_bytes == 2

    def lut(self, q: torch.Tensor) -> torch.Tensor:
        """ADC table of a float query for 1-byte-id residual codes: q (n_q, dim) -> (n_q, 1 + dim·b/8, 256).

        ``Σ_s lut[i, s, codes[j, s]] = q_i · decode(codes[j])``.
        """
        n_q, dim = q.shape
        centroids = torch.from_numpy(self.centroids)  # (k', dim)
        id_part = torch.zeros(n_q, 1, 256)  # ids ≥ k' never occur
        id_part[:, 0, : centroids.shape[0]] = q @ centroids.T  # (n_q, k')
        bits = self.residual_bits
        per = 8 // bits
        shifts = bits * (per - 1 - torch.arange(per))  # (per,), high bits first as in pack_uint
        digits = (torch.arange(256)[:, None] >> shifts[None, :]) & ((1 << bits) - 1)  # (256, per)
        weights = torch.from_numpy(self.weights).reshape(dim // per, per, -1)  # (bytes, per, 2^b)
        cols = torch.arange(per)[None, :].expand(256, per)  # (256, per)
        byte_weights = weights[:, cols, digits]  # (bytes, 256, per): weight of value v's p-th bucket
        grouped = q.reshape(n_q, dim // per, per)  # (n_q, bytes, per)
        res_part = torch.einsum("qsp,svp->qsv", grouped, byte_weights)  # (n_q, bytes, 256)
        return torch.cat([id_part, res_part], dim=1).contiguous()  # (n_q, 1 + bytes, 256)

    def _prepare_impl(self, q: torch.Tensor) -> Any:
        if self._decodes_to_score:
            return q  # (n_q, dim): scored against decoded vectors
        if self.residual_bits:
            return self.lut(q)  # (n_q, 1 + dim·b/8, 256)
        return q @ torch.from_numpy(self.centroids).T  # (n_q, k) LUT T = Q @ C.T

    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        if not self._decodes_to_score:
            return code_maxsim(prepared.to(codes.device), codes, offsets, backend=backend)  # (n_docs,)
        decoded = torch.from_numpy(self._decode_impl(codes.cpu().numpy())).to(codes.device)  # (N, dim)
        return maxsim(prepared.to(codes.device), decoded, offsets, backend=backend)  # (n_docs,)

    def score_many(
        self, queries: list[ArrayLike], codes: ArrayLike, offsets: ArrayLike, *, backend: Backend = "auto"
    ) -> torch.Tensor:
        """(n_queries, n_docs) float32; codes scored on decoded vectors are decoded once for all queries."""
        if not self._decodes_to_score:
            return super().score_many(queries, codes, offsets, backend=backend)
        code_t = as_code_tensor(codes)
        off = as_offsets(offsets, int(code_t.shape[0]))  # (n_docs + 1,)
        decoded = torch.from_numpy(self._decode_impl(code_t.cpu().numpy()))  # (N, dim) float32
        decoded = decoded.to(code_t.device)
        rows = [
            maxsim(self.prepare_query(q).to(code_t.device), decoded, off, backend=backend) for q in queries
        ]
        return torch.stack(rows) if rows else torch.zeros(0, off.numel() - 1)  # (n_queries, n_docs)

    # -------------------------------------------------------------------------------- persist
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {"k": self.k, "residual_bits": self.residual_bits, "seed": self.seed, "n_iter": self.n_iter}
        arrays = {"centroids": self.centroids}
        if self.residual_bits:
            arrays |= {"cutoffs": self.cutoffs, "weights": self.weights}
        return params, arrays

    @classmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KMeansQuantizer:
        obj = cls(
            int(params["k"]),
            int(params["residual_bits"]),
            seed=int(params["seed"]),
            n_iter=int(params["n_iter"]),
        )
        obj.centroids = arrays["centroids"].astype(np.float32)
        if obj.residual_bits:
            obj.cutoffs = arrays["cutoffs"].astype(np.float32)
            obj.weights = arrays["weights"].astype(np.float32)
        return obj
