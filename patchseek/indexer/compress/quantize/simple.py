"""Stateless codecs: ``Float16Quantizer`` (no quantization) and ``SignBinaryQuantizer`` (1 bit per dim)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import Backend, Quantizer
from patchseek.kernels import binary_maxsim, hamming_maxsim, maxsim, pack_signs, unpack_signs


class Float16Quantizer(Quantizer):
    """The identity codec: vectors stored as float16, scored by exact MaxSim (``kind="none"``).

    codes (n, dim) float16; 2·dim bytes per patch.
    """

    kind = "none"

    def _fit_impl(self, x: np.ndarray) -> None:
        pass

    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16)  # (n, dim)

    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32)  # (n, dim)

    def _prepare_impl(self, q: torch.Tensor) -> Any:
        return q  # (n_q, dim) float32

    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        return maxsim(prepared.to(codes.device), codes, offsets, backend=backend)  # (n_docs,)

    @property
    def bytes_per_patch(self) -> int:
        return 2 * self.fitted_dim

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {}

    @classmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Float16Quantizer:
        return cls()


class SignBinaryQuantizer(Quantizer):
    """Sign binarization (Vespa style): 1 bit per dimension, bit 1 = positive coordinate.

    codes (n, dim/8) uint8, packed like ``numpy.packbits(x > 0, bitorder="big")``; 16 B per 128-d
    patch. Scores approximate cosine:

    - asymmetric (default): ``q · x_hat`` with the float query and the document's decoded signs,
      through ``binary_maxsim`` — the better ranking;
    - symmetric: ``(dim - 2·hamming) / dim`` between the query's and the document's signs, through
      ``hamming_maxsim``.

    Without centering ``x_hat = s / sqrt(dim)`` for the signs ``s ∈ {±1}``, exact on vectors whose
    coordinates are ``±1/sqrt(dim)``. With ``center=True`` the fitted collection mean ``mu`` is
    subtracted before taking signs and ``x_hat = mu + a ⊙ s`` with ``a_t = E|x_t - mu_t|``, the
    least-squares scale of each dimension's sign. Patch embeddings share a mean direction: without
    centering, the dimensions where ``|mu_t|`` is large have the same sign in almost every patch and
    their bits carry no information. The query stays a float vector: ``q · x_hat = q · mu + (q ⊙ a) ·
    s``, so the asymmetric score is ``binary_maxsim(q ⊙ a, bits) + Σ_i q_i · mu`` (the second term is
    the same for every document and is added only to non-empty ones). The symmetric score takes the
    signs of ``q - mu``.

    Parameters
    ----------
    symmetric : bool
        Score with Hamming distance between sign codes instead of float query × signs.
    center : bool
        Subtract the fitted collection mean before taking signs (and decode with per-dimension scales).
    """

    kind = "binary"

    def __init__(self, symmetric: bool = False, center: bool = False) -> None:
        super().__init__()
        self.symmetric = bool(symmetric)
        self.center = bool(center)
        self.mean = np.zeros(0, dtype=np.float32)  # (dim,) collection mean, centered codes only
        self.scale = np.zeros(0, dtype=np.float32)  # (dim,) E|x - mean| per dimension, centered only

    def _check_dim(self, dim: int) -> None:
        if dim % 8:
            raise InvalidInputError(f"sign binary codes need dim % 8 == 0, got dim={dim}")

    def _fit_impl(self, x: np.ndarray) -> None:
        if not self.center:
            return
        self.mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)  # (dim,)
        self.scale = np.abs(x - self.mean).mean(axis=0, dtype=np.float64).astype(np.float32)  # (dim,)

    def _shift(self, x: np.ndarray) -> np.ndarray:
        return x - self.mean if self.center else x  # (n, dim)

    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        return pack_signs(torch.from_numpy(self._shift(x))).numpy()  # (n, dim/8) uint8

    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        signs = unpack_signs(torch.from_numpy(np.ascontiguousarray(codes)), self.fitted_dim)  # (n, dim)
        if self.center:
            return (self.mean + signs.numpy() * self.scale).astype(np.float32)  # (n, dim)
        return (signs.float() / math.sqrt(self.fitted_dim)).numpy()  # (n, dim)

    def _prepare_impl(self, q: torch.Tensor) -> Any:
        if self.symmetric:
            return pack_signs(torch.from_numpy(self._shift(q.numpy())))  # (n_q, dim/8) uint8
        if not self.center:
            return q  # (n_q, dim) float32
        weighted = q * torch.from_numpy(self.scale)  # (n_q, dim): (q ⊙ a) · s is the sign part
        return weighted, float(q.double().sum(dim=0) @ torch.from_numpy(self.mean).double())

    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        dim = self.fitted_dim
        if self.symmetric:
            sims = hamming_maxsim(prepared.to(codes.device), codes, offsets, dim=dim, backend=backend)
            return sims / dim  # (n_docs,)
        if not self.center:
            return binary_maxsim(prepared.to(codes.device), codes, offsets, backend=backend) / math.sqrt(dim)
        weighted, shift = prepared
        sims = binary_maxsim(weighted.to(codes.device), codes, offsets, backend=backend)  # (n_docs,)
        non_empty = (offsets[1:] > offsets[:-1]).to(sims.device)  # (n_docs,)
        return torch.where(non_empty, sims + shift, sims)  # empty documents keep their 0

    @property
    def bytes_per_patch(self) -> int:
        return self.fitted_dim // 8

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"mean": self.mean, "scale": self.scale} if self.center else {}
        return {"symmetric": self.symmetric, "center": self.center}, arrays

    @classmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> SignBinaryQuantizer:
        # indexes written before centering existed have no "center" key: they are uncentered
        obj = cls(symmetric=bool(params["symmetric"]), center=bool(params.get("center", False)))
        if obj.center:
            obj.mean = arrays["mean"].astype(np.float32)
            obj.scale = arrays["scale"].astype(np.float32)
        return obj
