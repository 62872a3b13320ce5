"""FastAPI dependencies: the service context and the services built on it."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from patchseek.api.services import (
    CollectionService,
    IngestService,
    JobService,
    SearchService,
    ServiceContext,
)
from patchseek.errors import AuthError


def get_context(request: Request) -> ServiceContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


ContextDep = Annotated[ServiceContext, Depends(get_context)]
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(ctx: ContextDep, key: Annotated[str | None, Depends(_api_key)] = None) -> None:
    """When ``PATCHSEEK_API_KEYS`` is set, every request must carry one of them in ``X-API-Key``."""
    keys = ctx.settings.api_keys
    if not keys:
        return
    if key is None or not any(hmac.compare_digest(key, k) for k in keys):
        raise AuthError("a valid X-API-Key header is required")


def get_collections(request: Request) -> CollectionService:
    return request.app.state.collections  # type: ignore[no-any-return]


def get_ingest(request: Request) -> IngestService:
    return request.app.state.ingest  # type: ignore[no-any-return]


def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def get_search(request: Request) -> SearchService:
    return request.app.state.search  # type: ignore[no-any-return]


CollectionServiceDep = Annotated[CollectionService, Depends(get_collections)]
IngestServiceDep = Annotated[IngestService, Depends(get_ingest)]
JobServiceDep = Annotated[JobService, Depends(get_jobs)]
SearchServiceDep = Annotated[SearchService, Depends(get_search)]
