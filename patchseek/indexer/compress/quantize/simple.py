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

    - asymmetric (default): ``q · s / sqrt(dim)`` with the float query and the document's signs
      ``s ∈ {±1}``, through ``binary_maxsim`` — the better ranking;
    - symmetric: ``(dim - 2·hamming) / dim`` between the query's and the document's signs, through
      ``hamming_maxsim``.

    Both are exact on vectors whose coordinates are ``±1/sqrt(dim)``.

    Parameters
    ----------
    symmetric : bool
        Score with Hamming distance between sign codes instead of float query × signs.
    """

    kind = "binary"

    def __init__(self, symmetric: bool = False) -> None:
        super().__init__()
        self.symmetric = bool(symmetric)

    def _check_dim(self, dim: int) -> None:
        if dim % 8:
            raise InvalidInputError(f"sign binary codes need dim % 8 == 0, got dim={dim}")

    def _fit_impl(self, x: np.ndarray) -> None:
        pass

    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        return pack_signs(torch.from_numpy(x)).numpy()  # (n, dim/8) uint8

    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        signs = unpack_signs(torch.from_numpy(np.ascontiguousarray(codes)), self.fitted_dim)  # (n, dim)
        return (signs.float() / math.sqrt(self.fitted_dim)).numpy()  # (n, dim)

    def _prepare_impl(self, q: torch.Tensor) -> Any:
        return pack_signs(q) if self.symmetric else q  # (n_q, dim/8) uint8 | (n_q, dim) float32

    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        dim = self.fitted_dim
        prepared = prepared.to(codes.device)
        if self.symmetric:
            sims = hamming_maxsim(prepared, codes, offsets, dim=dim, backend=backend)  # (n_docs,)
            return sims / dim
        return binary_maxsim(prepared, codes, offsets, backend=backend) / math.sqrt(dim)  # (n_docs,)

    @property
    def bytes_per_patch(self) -> int:
        return self.fitted_dim // 8

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"symmetric": self.symmetric}, {}

    @classmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> SignBinaryQuantizer:
        return cls(symmetric=bool(params["symmetric"]))
