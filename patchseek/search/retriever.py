"""Exact late-interaction search over a collection's stored patch vectors.

``PackedIndex`` holds every visible unit's vectors packed as one ``(n_patches_total, dim)`` tensor with
``offsets``; ``search`` scores all units with MaxSim (``patchseek.kernels.maxsim``) and keeps the top k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from patchseek.kernels import maxsim


@dataclass(frozen=True)
class UnitRows:
    """Where one unit's rows are: a document's array and the row span inside it."""

    unit_id: int
    document_id: int
    offset: int
    n_patches: int


@dataclass(frozen=True)
class PackedIndex:
    """Units packed for scoring.

    vectors   (n_patches_total, dim) float32
    offsets   (n_units + 1,) int64
    unit_ids  (n_units,) int64
    doc_ids   (n_units,) int64
    """

    vectors: torch.Tensor
    offsets: torch.Tensor
    unit_ids: torch.Tensor
    doc_ids: torch.Tensor

    @property
    def n_units(self) -> int:
        return int(self.unit_ids.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.vectors.element_size() * self.vectors.nelement())

    @classmethod
    def build(cls, rows: Sequence[UnitRows], arrays: dict[int, np.ndarray], dim: int) -> PackedIndex:
        """Pack ``rows`` (in order) from per-document arrays ``{document_id: (n, dim)}``."""
        chunks, offsets = [], [0]
        for r in rows:
            chunk = arrays[r.document_id][r.offset : r.offset + r.n_patches]
            chunks.append(np.asarray(chunk, dtype=np.float32))
            offsets.append(offsets[-1] + r.n_patches)
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        return cls(
            vectors=torch.from_numpy(vectors),  # (n_patches_total, dim)
            offsets=torch.tensor(offsets, dtype=torch.int64),  # (n_units + 1,)
            unit_ids=torch.tensor([r.unit_id for r in rows], dtype=torch.int64),
            doc_ids=torch.tensor([r.document_id for r in rows], dtype=torch.int64),
        )


@dataclass(frozen=True)
class ScoredUnit:
    unit_id: int
    score: float


def search(
    index: PackedIndex,
    query: torch.Tensor,
    top_k: int,
    *,
    unit_mask: torch.Tensor | None = None,
) -> list[ScoredUnit]:
    """Top ``top_k`` units by exact MaxSim.

    query (n_q, dim) float32; unit_mask (n_units,) bool restricts the candidates (metadata filters).
    Units without patches and queries without tokens never produce hits.
    """
    if index.n_units == 0 or query.shape[0] == 0:
        return []
    scores = maxsim(query.to(torch.float32), index.vectors, index.offsets)  # (n_units,)
    valid = (index.offsets[1:] - index.offsets[:-1]) > 0  # (n_units,)
    if unit_mask is not None:
        valid &= unit_mask
    scores = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    k = min(top_k, int(valid.sum()))
    if k == 0:
        return []
    # A stable sort keeps equal scores in index order (older units first), so results are repeatable.
    order = torch.sort(scores, descending=True, stable=True).indices[:k]  # (k,)
    return [ScoredUnit(int(index.unit_ids[i]), float(scores[i])) for i in order.tolist()]


def rerank(index: PackedIndex, query: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Exact MaxSim of ``query`` (n_q, dim) on the units at positions ``units`` (k,): (k,) float32."""
    starts, ends = index.offsets[units], index.offsets[units + 1]  # (k,), (k,)
    lengths = ends - starts
    rows = (
        torch.cat([torch.arange(int(s), int(e)) for s, e in zip(starts, ends, strict=True)])
        if len(units)
        else (torch.zeros(0, dtype=torch.int64))
    )  # (n_rows,)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])  # (k + 1,)
    return maxsim(query.to(torch.float32), index.vectors[rows], offsets)  # (k,)


def search_compressed(
    index: PackedIndex,
    approx_scores: torch.Tensor,
    query: torch.Tensor,
    top_k: int,
    *,
    candidates: int = 100,
    exact_rerank: bool = True,
    unit_mask: torch.Tensor | None = None,
) -> list[ScoredUnit]:
    """Stages 2 and 3: keep the ``candidates`` best units by the codec's approximate scores
    (``approx_scores`` (n_units,)), then, with ``exact_rerank``, re-score them with exact MaxSim on the
    stored float vectors and return the top ``top_k``."""
    if index.n_units == 0 or query.shape[0] == 0:
        return []
    valid = (index.offsets[1:] - index.offsets[:-1]) > 0  # (n_units,)
    if unit_mask is not None:
        valid &= unit_mask
    scores = torch.where(valid, approx_scores.float(), torch.full_like(approx_scores.float(), float("-inf")))
    n_valid = int(valid.sum())
    if n_valid == 0:
        return []
    shortlist = torch.sort(scores, descending=True, stable=True).indices[
        : min(max(candidates, top_k), n_valid)
    ]
    if exact_rerank:
        exact = rerank(index, query, shortlist)  # (k,)
        order = torch.sort(exact, descending=True, stable=True).indices[:top_k]
        return [ScoredUnit(int(index.unit_ids[shortlist[i]]), float(exact[i])) for i in order.tolist()]
    return [ScoredUnit(int(index.unit_ids[i]), float(scores[i])) for i in shortlist[:top_k].tolist()]
