"""Search: segment files, stage-1 candidate generators and the three-stage late-interaction retriever."""

from __future__ import annotations

from patchseek.search.base import CandidateGenerator, Candidates
from patchseek.search.candidates import (
    EXACT_THRESHOLD,
    ExactCandidateGenerator,
    FaissCandidateGenerator,
    choose_stage1,
    make_candidate_generator,
)
from patchseek.search.dense import DenseCandidateGenerator, summarize_units
from patchseek.search.retriever import (
    MultiStageRetriever,
    PackedIndex,
    RetrievalResult,
    ScoredUnit,
    SearchParams,
    UnitRows,
    UnitVectors,
    search,
)
from patchseek.search.segments import Segment, SegmentWriter, list_segments
from patchseek.search.store import DocumentVectors, SegmentStore

__all__ = [
    "EXACT_THRESHOLD",
    "CandidateGenerator",
    "Candidates",
    "DenseCandidateGenerator",
    "DocumentVectors",
    "ExactCandidateGenerator",
    "FaissCandidateGenerator",
    "MultiStageRetriever",
    "PackedIndex",
    "RetrievalResult",
    "ScoredUnit",
    "SearchParams",
    "Segment",
    "SegmentStore",
    "SegmentWriter",
    "UnitRows",
    "UnitVectors",
    "choose_stage1",
    "list_segments",
    "make_candidate_generator",
    "search",
    "summarize_units",
]
