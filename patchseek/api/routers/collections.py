from __future__ import annotations

from fastapi import APIRouter, status

from patchseek.api.deps import CollectionServiceDep
from patchseek.api.schemas import CollectionCreate, CollectionPublic

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


@router.post("", response_model=CollectionPublic, status_code=status.HTTP_201_CREATED)
def create_collection(body: CollectionCreate, service: CollectionServiceDep) -> CollectionPublic:
    service.create(
        body.name, description=body.description, encoder=body.encoder, compression=body.compression
    )
    return _public(service.get(body.name))


@router.get("", response_model=list[CollectionPublic])
def list_collections(service: CollectionServiceDep) -> list[CollectionPublic]:
    return [_public(row) for row in service.list()]


@router.get("/{name}", response_model=CollectionPublic)
def get_collection(name: str, service: CollectionServiceDep) -> CollectionPublic:
    return _public(service.get(name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_collection(name: str, service: CollectionServiceDep) -> None:
    service.delete(name)
