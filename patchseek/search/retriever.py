"""Late-interaction search over a collection's stored patch vectors.

``MultiStageRetriever`` runs the three stages of DESIGN.md: stage-1 candidates (exact scan or FAISS),
stage-2 approximate MaxSim on the codec's codes of those candidates, stage-3 exact MaxSim on the
memory-mapped float16 rows of the shortlist. It takes explicit arrays (``UnitVectors``, codes, a
generator), so benchmarks and tests drive it without a database.

``PackedIndex`` + ``search`` are the in-memory exact path on small packed tensors (every unit scored).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress import Compressor, KMeansQuantizer
from patchseek.kernels import maxsim
from patchseek.search.base import CandidateGenerator, as_unit_mask, top_k
from patchseek.search.candidates import (
    EXACT_THRESHOLD,
    STAGE1_CHOICES,
    ExactCandidateGenerator,
    FaissCandidateGenerator,
    choose_stage1,
)
from patchseek.search.dense import DENSE_MAX_UNITS, DenseCandidateGenerator


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


# ------------------------------------------------------------------------------- three stages
class UnitVectors:
    """Where each unit's stored float16 rows are: memory-mapped arrays and one row span per unit.

    Stage 3 reads only the shortlisted units' rows, so the collection's vectors can stay on disk.

    Parameters
    ----------
    arrays : sequence of np.ndarray
        (n_rows_a, dim) arrays (memmaps), e.g. one per document file or one per packed segment.
    array_of : np.ndarray
        (n_units,) int64 which array holds each unit.
    starts, lengths : np.ndarray
        (n_units,) int64 each unit's first row in its array and its number of rows.
    dim : int
        Vector dimension.
    """

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        array_of: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        dim: int,
    ) -> None:
        self.arrays = list(arrays)
        self.array_of = np.asarray(array_of, dtype=np.int64)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.dim = int(dim)
        if not self.array_of.shape == self.starts.shape == self.lengths.shape:
            raise InvalidInputError("array_of, starts and lengths must all be (n_units,)")

    @classmethod
    def packed(cls, vectors: np.ndarray, offsets: np.ndarray) -> UnitVectors:
        """Units laid out one after the other in one array vectors (N, dim) with offsets (n_units + 1,)."""
        off = np.asarray(offsets, dtype=np.int64)
        return cls(
            [vectors], np.zeros(off.size - 1, dtype=np.int64), off[:-1], np.diff(off), vectors.shape[1]
        )

    @classmethod
    def from_rows(cls, rows: Sequence[UnitRows], arrays: dict[int, np.ndarray], dim: int) -> UnitVectors:
        """Units given as ``UnitRows`` spans of per-document arrays ``{document_id: (n, dim)}``."""
        doc_ids = sorted(arrays)
        slot = {d: i for i, d in enumerate(doc_ids)}
        return cls(
            [arrays[d] for d in doc_ids],
            np.array([slot[r.document_id] for r in rows], dtype=np.int64),
            np.array([r.offset for r in rows], dtype=np.int64),
            np.array([r.n_patches for r in rows], dtype=np.int64),
            dim,
        )

    @property
    def n_units(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """(n_units + 1,) int64 offsets of the units laid out one after the other."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def gather(self, units: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of ``units`` (k,), packed: (n_rows, dim) float16 and offsets (k + 1,) int64, each
        unit's rows copied once, straight into the packed output."""
        units = np.asarray(units, dtype=np.int64)
        lengths = self.lengths[units]  # (k,)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (k + 1,)
        out = np.empty((int(offsets[-1]), self.dim), dtype=np.float16)  # (n_rows, dim)
        for o, a, s, n in zip(
            offsets[:-1].tolist(),
            self.array_of[units].tolist(),
            self.starts[units].tolist(),
            lengths.tolist(),
            strict=True,
        ):
            out[o : o + n] = self.arrays[a][s : s + n]
        return torch.from_numpy(out), torch.from_numpy(offsets)


@dataclass(frozen=True)
class SearchParams:
    """Per-request knobs of the three stages.

    Attributes
    ----------
    top_k : int
        Hits returned.
    candidates : int
        Shortlist that stage 2 (approximate MaxSim on the codes) passes to the exact stage-3 rerank.
    rerank : bool
        Re-score the shortlist with exact MaxSim on the stored float16 vectors (stage 3); without it the
        hits carry the codec's approximate scores.
    stage1 : {"auto", "exact", "faiss", "dense"}
        Candidate generator; ``"auto"`` scans collections under the retriever's ``exact_threshold`` units,
        above it uses the dense summary scan where the retriever has one (up to ``DENSE_MAX_UNITS``
        units), else FAISS.
    stage1_k : int
        Units stage 1 hands to stage 2.
    nprobe : int or None
        Centroids probed per query token by the FAISS generator (None: its default).
    """

    top_k: int = 10
    candidates: int = 100
    rerank: bool = True
    stage1: str = "auto"
    stage1_k: int = 1000
    nprobe: int | None = None

    def __post_init__(self) -> None:
        for name in ("top_k", "candidates", "stage1_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.nprobe is not None and (isinstance(self.nprobe, bool) or self.nprobe < 1):
            raise InvalidInputError(f"nprobe must be an integer >= 1, got {self.nprobe!r}")
        if self.stage1 not in STAGE1_CHOICES:
            raise InvalidInputError(f"stage1={self.stage1!r}: expected one of {list(STAGE1_CHOICES)}")


@dataclass(frozen=True)
class RetrievalResult:
    """Hits and what each stage did: the generator used, stage sizes and per-stage milliseconds."""

    hits: list[ScoredUnit]
    stage1: str
    n_stage1: int
    n_stage2: int
    timings_ms: dict[str, float]


class MultiStageRetriever:
    """Three-stage late-interaction search over one collection (no database needed).

    Stage 1 picks ``stage1_k`` candidate units (``ExactCandidateGenerator`` or a FAISS generator); stage 2
    scores them with the collection's codec (``Compressor.score`` on their codes) and keeps
    ``candidates``; stage 3 re-scores those exactly (``kernels.maxsim``) on the float16 rows read from
    ``vectors`` and returns the ``top_k``. Without a codec, stage 2 is exact MaxSim on the stored rows
    and stage 3 has nothing left to do.

    Parameters
    ----------
    vectors : UnitVectors
        Every unit's stored float16 rows (memory-mapped); unit ``u`` of the retriever is unit ``u`` here.
    compressor : Compressor, optional
        The fitted codec; with ``codes`` it scores stage 2.
    codes : np.ndarray, optional
        (N, ...) codes of every unit's rows, packed in unit order (offsets ``vectors.offsets``).
    code_offsets : np.ndarray, optional
        (n_units + 1,) int64 offsets of the codes when they are not one per stored row, e.g. a
        unit's patches pooled per stage-1 centroid (``bench/search.py``) scored by a float16 codec.
    generator : CandidateGenerator, optional
        The FAISS (or any other) stage-1 generator over the same units.
    dense : DenseCandidateGenerator, optional
        Summary rows of the same units; ``stage1="dense"`` (and ``"auto"`` above ``exact_threshold``)
        scans them, and their scores pick the stage-3 shortlist directly (no codec pass).
    unit_ids : np.ndarray, optional
        (n_units,) ids reported in hits; default: unit positions.
    exact_threshold : int
        ``stage1="auto"`` scans every unit below this many units.
    """

    def __init__(
        self,
        vectors: UnitVectors,
        *,
        compressor: Compressor | None = None,
        codes: np.ndarray | None = None,
        code_offsets: np.ndarray | None = None,
        generator: CandidateGenerator | None = None,
        dense: DenseCandidateGenerator | None = None,
        unit_ids: np.ndarray | None = None,
        exact_threshold: int = EXACT_THRESHOLD,
    ) -> None:
        self.vectors = vectors
        n = vectors.n_units
        # Codes follow the stored rows unless they have their own layout (e.g. pooled / merged vectors).
        self.offsets = vectors.offsets if code_offsets is None else np.asarray(code_offsets, np.int64)
        if self.offsets.shape != (n + 1,):
            raise InvalidInputError(f"code_offsets must be ({n + 1},), got {self.offsets.shape}")
        if (compressor is None) != (codes is None):
            raise InvalidInputError("give the codec and its codes together, or neither")
        if codes is not None and codes.shape[0] != int(self.offsets[-1]):
            raise InvalidInputError(f"codes must have one row per code offset ({int(self.offsets[-1])})")
        if generator is not None and generator.n_units != n:
            raise InvalidInputError(f"the generator knows {generator.n_units} units, the retriever {n}")
        self.compressor = compressor
        self.codes = codes
        self.generator: CandidateGenerator | None = None
        self._centroid_sets: FaissCandidateGenerator | None = None
        self.unit_ids = np.arange(n, dtype=np.int64) if unit_ids is None else np.asarray(unit_ids, np.int64)
        self.exact_threshold = exact_threshold
        self.nonempty = self.vectors.lengths > 0  # (n_units,)
        self._exact = ExactCandidateGenerator(n, self._score_all, dim=vectors.dim)
        if generator is not None:
            self.attach_generator(generator)
        if dense is not None and dense.n_units != n:
            raise InvalidInputError(f"the dense generator knows {dense.n_units} units, the retriever {n}")
        self.dense = dense

    def attach_generator(self, generator: CandidateGenerator) -> None:
        """Use ``generator`` (over the same units) for ``stage1="faiss"`` from now on."""
        if generator.n_units != self.vectors.n_units:
            raise InvalidInputError(
                f"the generator knows {generator.n_units} units, the retriever {self.vectors.n_units}"
            )
        self.generator = generator
        # When the codec is plain k-means and the FAISS lists were built from its codes (PLAID), stage 2
        # reads each unit's distinct centroid ids once instead of every patch's: the same scores.
        shares = isinstance(generator, FaissCandidateGenerator) and _shares_kmeans(self.compressor, generator)
        self._centroid_sets = generator if shares else None  # type: ignore[assignment]

    @property
    def n_units(self) -> int:
        return int(self.unit_ids.shape[0])

    def stage1_kind(self, requested: str = "auto") -> str:
        """The generator ``requested`` resolves to for this collection."""
        if requested == "dense":
            if self.dense is None:
                raise InvalidInputError("this index has no dense stage-1 rows; use stage1='exact' or 'faiss'")
            return "dense"
        if (
            requested == "auto"
            and self.dense is not None
            and self.exact_threshold <= self.n_units <= DENSE_MAX_UNITS
        ):
            return "dense"
        kind = choose_stage1(self.n_units, requested, threshold=self.exact_threshold)
        if kind == "faiss" and self.generator is None:
            if requested == "faiss":
                raise InvalidInputError("this index has no FAISS candidate generator; use stage1='exact'")
            return "exact"
        return kind

    # ------------------------------------------------------------------------------------ scoring
    def _rows(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed row positions (n_rows,) of ``units`` (k,) and their offsets (k + 1,)."""
        starts, lengths = self.offsets[units], self.offsets[units + 1] - self.offsets[units]  # (k,), (k,)
        sub_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (k + 1,)
        rows = np.arange(int(sub_offsets[-1]), dtype=np.int64) + np.repeat(starts - sub_offsets[:-1], lengths)
        return rows, sub_offsets

    def approximate(self, query: torch.Tensor, units: np.ndarray) -> torch.Tensor:
        """Stage-2 scores (k,) float32 of ``units`` (k,): the codec on their codes, else exact MaxSim."""
        if self.compressor is None or self.codes is None:
            return self.exact(query, units)
        if self._centroid_sets is not None:
            return self._centroid_sets.centroid_scores(query, units)  # (k,)
        rows, sub_offsets = self._rows(units)
        codes = np.ascontiguousarray(self.codes[rows])  # (n_rows, ...) only the candidates' codes
        return self.compressor.quantizer.score(query, codes, sub_offsets)  # (k,)

    def exact(self, query: torch.Tensor, units: np.ndarray) -> torch.Tensor:
        """Exact MaxSim (k,) float32 of ``units`` (k,) on their stored float16 rows."""
        # Gathered as stored (float16) and widened block by block inside ``maxsim``: one float32 copy
        # of the whole shortlist would cost twice the scoring itself (fresh pages, slow conversion).
        # The query is rounded to float16 there, as brute force and the GPU kernel compute it.
        docs, offsets = self.vectors.gather(units)  # (n_rows, dim) float16, (k + 1,)
        return maxsim(query.float(), docs, offsets)  # (k,)

    def _score_all(self, query: torch.Tensor) -> torch.Tensor:
        return self.approximate(query, np.arange(self.n_units, dtype=np.int64))  # (n_units,)

    # ------------------------------------------------------------------------------------- search
    def search(
        self,
        query: torch.Tensor,
        params: SearchParams | None = None,
        *,
        unit_mask: np.ndarray | torch.Tensor | None = None,
    ) -> list[ScoredUnit]:
        """Top ``params.top_k`` units for ``query`` (n_q, dim); see ``search_detailed``."""
        return self.search_detailed(query, params, unit_mask=unit_mask).hits

    def search_detailed(
        self,
        query: torch.Tensor,
        params: SearchParams | None = None,
        *,
        unit_mask: np.ndarray | torch.Tensor | None = None,
    ) -> RetrievalResult:
        """Run the three stages.

        Parameters
        ----------
        query : torch.Tensor
            (n_q, dim) float query tokens.
        params : SearchParams, optional
            Knobs; defaults to ``SearchParams()``.
        unit_mask : array or tensor, optional
            (n_units,) bool metadata filter, applied before any scoring.

        Returns
        -------
        RetrievalResult
            Hits best first (ties: lower unit position first), scores exact when ``params.rerank``.
        """
        params = params or SearchParams()
        timings: dict[str, float] = {}
        mask = as_unit_mask(unit_mask, self.n_units)
        allowed = self.nonempty if mask is None else self.nonempty & mask  # (n_units,)
        kind = self.stage1_kind(params.stage1)
        q = query.detach().to("cpu", torch.float32)  # (n_q, dim)
        if self.n_units == 0 or q.shape[0] == 0 or not allowed.any():
            return RetrievalResult([], kind, 0, 0, timings)
        t0 = time.perf_counter()
        if kind == "faiss":
            assert self.generator is not None
            if isinstance(self.generator, FaissCandidateGenerator):
                cands = self.generator.search(q, params.stage1_k, mask=allowed, nprobe=params.nprobe)
            else:
                cands = self.generator.candidates(q, params.stage1_k, unit_mask=allowed)
        elif kind == "dense":
            assert self.dense is not None
            cands = self.dense.candidates(q, params.stage1_k, unit_mask=allowed)
        else:
            cands = self._exact.candidates(q, params.stage1_k, unit_mask=allowed)
        timings["stage1"] = (time.perf_counter() - t0) * 1000
        units = cands.units  # (k1,)
        if units.size == 0:
            return RetrievalResult([], kind, 0, 0, timings)
        exact_stage2 = self.compressor is None and kind != "dense"
        t0 = time.perf_counter()
        if cands.scores is not None and kind in ("exact", "dense"):
            # The exact scan already scored every unit with ``approximate``; the dense scan's summary
            # MaxSim ranks at least as well as a codec, so it picks the shortlist itself.
            scores = cands.scores
        else:
            scores = self.approximate(q, units).numpy()  # (k1,)
        timings["stage2"] = (time.perf_counter() - t0) * 1000
        keep = params.top_k if (exact_stage2 or not params.rerank) else max(params.candidates, params.top_k)
        units, scores = top_k(scores, units, keep)
        n_stage2 = int(units.size)
        if params.rerank and not exact_stage2:
            t0 = time.perf_counter()
            exact = self.exact(q, units).numpy()  # (k2,)
            units, scores = top_k(exact, units, params.top_k)
            timings["stage3"] = (time.perf_counter() - t0) * 1000
        hits = [
            ScoredUnit(int(self.unit_ids[u]), float(s))
            for u, s in zip(units[: params.top_k], scores, strict=False)
        ]
        return RetrievalResult(hits, kind, int(cands.units.size), n_stage2, timings)


def _shares_kmeans(compressor: Compressor | None, generator: FaissCandidateGenerator) -> bool:
    """True when ``compressor`` is plain k-means (no residuals) over the generator's own centroids."""
    quantizer = None if compressor is None else compressor.quantizer
    if not isinstance(quantizer, KMeansQuantizer) or quantizer.residual_bits:
        return False
    return quantizer.centroids.shape == generator.centroids.shape and bool(
        np.array_equal(quantizer.centroids, generator.centroids)
    )
