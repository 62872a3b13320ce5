"""``CandidateGenerator``: stage 1 of the retriever, a cheap and wide shortlist of units for a query.

A generator knows ``n_units`` units (positions ``0..n_units-1`` in the retriever's unit table) and
returns at most ``k`` of them, best first, with its own approximate scores. The public ``candidates``
method validates the query, the ``k`` and the filter mask, then calls ``_impl``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from patchseek.errors import InvalidInputError


@dataclass(frozen=True)
class Candidates:
    """A stage-1 shortlist.

    Attributes
    ----------
    units : np.ndarray
        (k,) int64 unit positions, best first.
    scores : np.ndarray or None
        (k,) float32 the generator's approximate scores of ``units`` (higher is better); None when the
        generator returned every allowed unit without scoring them.
    """

    units: np.ndarray
    scores: np.ndarray | None

    def __len__(self) -> int:
        return int(self.units.shape[0])

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def as_unit_mask(mask: np.ndarray | torch.Tensor | None, n_units: int) -> np.ndarray | None:
    """Validate a filter mask: None, or (n_units,) bool where True marks a unit that may be returned."""
    if mask is None:
        return None
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.dtype != np.bool_ or arr.shape != (n_units,):
        raise InvalidInputError(f"unit_mask must be ({n_units},) bool, got {arr.dtype} {arr.shape}")
    return arr


class CandidateGenerator(ABC):
    """Stage 1: pick at most ``k`` units worth scoring for a query.

    Subclasses implement ``_impl`` on a validated float32 query with at least one token, ``k >= 1`` and
    a validated mask; they never return a unit the mask excludes.
    """

    kind: ClassVar[str]

    @property
    @abstractmethod
    def n_units(self) -> int:
        """Number of units the generator knows."""

    @property
    @abstractmethod
    def dim(self) -> int | None:
        """Embedding dimension of the queries it accepts (None: any)."""

    def candidates(
        self, query: torch.Tensor, k: int, *, unit_mask: np.ndarray | torch.Tensor | None = None
    ) -> Candidates:
        """At most ``k`` candidate units for ``query``.

        Parameters
        ----------
        query : torch.Tensor
            (n_q, dim) float query token vectors.
        k : int
            Shortlist size, ``>= 1``.
        unit_mask : array or tensor, optional
            (n_units,) bool; only units marked True may be returned (metadata filters).

        Returns
        -------
        Candidates
            Units best first; empty for an empty collection, an empty query or a mask with no unit.
        """
        if query.dim() != 2 or not query.dtype.is_floating_point:
            raise InvalidInputError(f"query must be (n_q, dim) float, got {query.dtype} {tuple(query.shape)}")
        if self.dim is not None and query.shape[0] and query.shape[1] != self.dim:
            raise InvalidInputError(f"query has dim {query.shape[1]}, the index holds {self.dim}-d vectors")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be an integer >= 1, got {k!r}")
        mask = as_unit_mask(unit_mask, self.n_units)
        if self.n_units == 0 or query.shape[0] == 0 or (mask is not None and not mask.any()):
            return Candidates.empty()
        q = query.detach().to("cpu", torch.float32).contiguous()  # (n_q, dim)
        return self._impl(q, k, mask)

    @abstractmethod
    def _impl(self, query: torch.Tensor, k: int, mask: np.ndarray | None) -> Candidates:
        """Candidates for a validated query (n_q >= 1, dim) float32 and mask (n_units,) bool or None."""


def top_k(scores: np.ndarray, units: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``units`` (n,) by ``scores`` (n,), best first; ties keep the lower unit first.

    Returns (units (k',), scores (k',)) with ``k' = min(k, n)``.
    """
    if units.size > k:
        # Every unit scoring at least the k-th best, ties at the cut included (argpartition alone would
        # pick among them arbitrarily): the cut then keeps the lower units, so the same units and scores
        # give the same answer however they are split up (the merge of sharded results relies on it).
        kth = np.partition(-scores, k - 1)[k - 1]
        keep = np.flatnonzero(-scores <= kth)  # (>= k,) unordered
        units, scores = units[keep], scores[keep]
    order = np.lexsort((units, -scores))[:k]  # primary: score descending, then unit ascending
    return units[order].astype(np.int64), scores[order].astype(np.float32)
