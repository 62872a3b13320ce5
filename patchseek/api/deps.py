"""FastAPI dependencies: the service context and the services built on it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader

from patchseek.api.services import (
    CollectionService,
    EvaluationService,
    IngestService,
    JobService,
    RebuildService,
    SearchService,
    ServiceContext,
)
from patchseek.api.services.keys import Principal


def get_context(request: Request) -> ServiceContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


ContextDep = Annotated[ServiceContext, Depends(get_context)]
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(request: Request, key: Annotated[str | None, Depends(_api_key)] = None) -> Principal:
    """The caller. Once any API key exists (environment or database) every request needs one in
    ``X-API-Key``; a key scoped to collections may only touch those (checked per route)."""
    principal = request.app.state.keys.authenticate(key)
    name = request.path_params.get("name")
    if name is not None:
        principal.check(name)
    return principal


PrincipalDep = Annotated[Principal, Depends(require_api_key)]


def get_collections(request: Request) -> CollectionService:
    return request.app.state.collections  # type: ignore[no-any-return]


def get_ingest(request: Request) -> IngestService:
    return request.app.state.ingest  # type: ignore[no-any-return]


def get_jobs(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def get_rebuild(request: Request) -> RebuildService:
    return request.app.state.rebuild  # type: ignore[no-any-return]


def get_evaluations(request: Request) -> EvaluationService:
    return request.app.state.evaluations  # type: ignore[no-any-return]


def get_search(request: Request) -> SearchService:
    return request.app.state.search  # type: ignore[no-any-return]


CollectionServiceDep = Annotated[CollectionService, Depends(get_collections)]
IngestServiceDep = Annotated[IngestService, Depends(get_ingest)]
JobServiceDep = Annotated[JobService, Depends(get_jobs)]
RebuildServiceDep = Annotated[RebuildService, Depends(get_rebuild)]
SearchServiceDep = Annotated[SearchService, Depends(get_search)]
EvaluationServiceDep = Annotated[EvaluationService, Depends(get_evaluations)]


# A database id in a URL path (32-bit, positive); larger numbers get a 422 instead of reaching the database.
IdPath = Annotated[int, Path(ge=1, le=2_147_483_647)]
