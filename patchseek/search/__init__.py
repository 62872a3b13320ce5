"""Search: the index engine (segments, manifest, snapshots), stage-1 candidate generators and the
three-stage late-interaction retriever."""

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
from patchseek.search.engine import (
    REGISTRY,
    EngineHit,
    EngineResult,
    Filter,
    FittedState,
    IndexEngine,
    Shortlist,
    Snapshot,
    UnitBatch,
    fit_rule,
    shard_of,
)
from patchseek.search.manifest import Manifest, read_manifest
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
from patchseek.search.segments import SegmentFile, write_segment
from patchseek.search.shards import merge_shortlists

__all__ = [
    "EXACT_THRESHOLD",
    "CandidateGenerator",
    "Candidates",
    "DenseCandidateGenerator",
    "EngineHit",
    "EngineResult",
    "ExactCandidateGenerator",
    "FaissCandidateGenerator",
    "Filter",
    "FittedState",
    "IndexEngine",
    "Manifest",
    "MultiStageRetriever",
    "PackedIndex",
    "RetrievalResult",
    "ScoredUnit",
    "SearchParams",
    "REGISTRY",
    "SegmentFile",
    "Shortlist",
    "Snapshot",
    "UnitBatch",
    "UnitRows",
    "UnitVectors",
    "choose_stage1",
    "fit_rule",
    "make_candidate_generator",
    "merge_shortlists",
    "read_manifest",
    "search",
    "shard_of",
    "summarize_units",
    "write_segment",
]
