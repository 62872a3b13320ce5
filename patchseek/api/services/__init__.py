"""Services: the logic behind the API and the CLI. They raise ``PatchseekError``s, never HTTP errors."""

from __future__ import annotations

from patchseek.api.services.collections import CollectionService
from patchseek.api.services.context import ServiceContext
from patchseek.api.services.evaluation import EvaluationService
from patchseek.api.services.ingest import DocumentResult, IngestService
from patchseek.api.services.jobs import JobService, Worker
from patchseek.api.services.rebuild import RebuildService
from patchseek.api.services.search import Hit, SearchResult, SearchService

__all__ = [
    "CollectionService",
    "DocumentResult",
    "EvaluationService",
    "Hit",
    "IngestService",
    "JobService",
    "RebuildService",
    "SearchResult",
    "SearchService",
    "ServiceContext",
    "Worker",
]
