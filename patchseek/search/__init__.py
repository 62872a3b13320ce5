"""Search: segment files and the late-interaction retriever."""

from __future__ import annotations

from patchseek.search.retriever import PackedIndex, ScoredUnit, UnitRows, search
from patchseek.search.store import DocumentVectors, SegmentStore

__all__ = ["DocumentVectors", "PackedIndex", "ScoredUnit", "SegmentStore", "UnitRows", "search"]
