from __future__ import annotations

from fastapi import APIRouter, Request, status

from patchseek.api.deps import CollectionServiceDep, PrincipalDep, RebuildServiceDep, SearchServiceDep
from patchseek.api.routers._responses import NamePath, errors
from patchseek.api.routers._views import job_public
from patchseek.api.schemas import (
    CollectionCreate,
    CollectionPublic,
    CollectionUpdate,
    IndexStats,
    JobPublic,
    RebuildRequest,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])


def _public(row: tuple) -> CollectionPublic:  # type: ignore[type-arg]
    c, n_docs, n_units = row
    return CollectionPublic(
        name=c.name,
        description=c.description,
        encoder=c.encoder,
        compression=c.compression,
        documents=n_docs,
        units=n_units,
        created_at=c.created_at,
    )


@router.post(
    "", response_model=CollectionPublic, status_code=status.HTTP_201_CREATED, responses=errors(400, 409, 422)
)
def create_collection(
    body: CollectionCreate, service: CollectionServiceDep, principal: PrincipalDep
) -> CollectionPublic:
    """Create a collection with its encoder and compression settings (recorded in its index version)."""
    principal.require_admin()
    service.create(
        body.name, description=body.description, encoder=body.encoder, compression=body.compression
    )
    return _public(service.get(body.name))


@router.get("", response_model=list[CollectionPublic])
def list_collections(service: CollectionServiceDep, principal: PrincipalDep) -> list[CollectionPublic]:
    """The collections this key may use, with document and unit counts."""
    rows = service.list()
    if principal.collections is not None:
        rows = [r for r in rows if r[0].name in principal.collections]
    return [_public(row) for row in rows]


@router.get("/{name}", response_model=CollectionPublic, responses=errors(404, 422))
def get_collection(
    name: NamePath, service: CollectionServiceDep, search: SearchServiceDep
) -> CollectionPublic:
    """A collection with its counts and its index's cost: segments, fitted state, bytes per page."""
    public = _public(service.get(name))
    public.index = IndexStats(**search.stats(name))
    return public


@router.patch("/{name}", response_model=CollectionPublic, responses=errors(400, 404, 422))
def update_collection(
    name: NamePath, body: CollectionUpdate, service: CollectionServiceDep
) -> CollectionPublic:
    """Update a collection's description (encoder and compression change through a rebuild)."""
    service.update(name, description=body.description)
    return _public(service.get(name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(403, 404, 409, 422))
def delete_collection(name: NamePath, service: CollectionServiceDep, principal: PrincipalDep) -> None:
    """Delete a collection with its documents (needs an unscoped key)."""
    principal.require_admin()
    service.delete(name)


@router.post(
    "/{name}/rebuild",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(400, 404, 409, 422),
)
def rebuild_collection(
    name: NamePath,
    body: RebuildRequest,
    request: Request,
    service: RebuildServiceDep,
    collections: CollectionServiceDep,
    principal: PrincipalDep,
) -> JobPublic:
    """Queue a rebuild into a new index version (optionally with a new encoder or compression); the
    old version keeps serving searches until the new one is swapped in. A new encoder needs an
    unscoped key and must be enabled on the server (``PATCHSEEK_ENCODERS``)."""
    principal.require_encoder_change(body.encoder, collections.get(name)[0].encoder)
    job = service.submit(name, encoder=body.encoder, compression=body.compression)
    if (worker := getattr(request.app.state, "worker", None)) is not None:
        worker.wake()
    return job_public(job, name)
