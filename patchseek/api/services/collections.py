"""Collections: create, list, get, delete. Each collection records its encoder and compression."""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from patchseek.api.db.models import Collection, Document, IndexVersion, Job, Unit
from patchseek.api.services.blobgc import blob_keys_of, release_blobs
from patchseek.api.services.context import ServiceContext
from patchseek.errors import (
    ConflictError,
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
    NotFoundError,
)
from patchseek.indexer.compress import CompressionConfig

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidInputError(
            "collection names are 1-128 characters of letters, digits, '_', '.', '-', starting with a "
            "letter or digit"
        )
    return name


def get_collection(session: Session, name: str) -> Collection:
    collection = session.scalar(select(Collection).where(Collection.name == name))
    if collection is None:
        raise NotFoundError(f"collection {name!r} does not exist; create it first")
    return collection


def active_version(session: Session, collection: Collection) -> IndexVersion:
    version = (
        session.get(IndexVersion, collection.active_version_id) if collection.active_version_id else None
    )
    if version is None:
        raise NotFoundError(f"collection {collection.name!r} has no active index version")
    return version


class CollectionService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def create(
        self,
        name: str,
        *,
        description: str = "",
        encoder: str | None = None,
        compression: dict[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Collection:
        """Create a collection and its first index version (the encoder is loaded to learn its dim)."""
        validate_name(name)
        spec = encoder or self.ctx.settings.encoder
        self.ctx.check_encoder_spec(spec)
        compression = CompressionConfig.from_dict(compression or {}).to_dict()
        with self.ctx.db.session() as session:
            existing = session.scalar(select(Collection).where(Collection.name == name))
            if existing is not None:
                if exist_ok:
                    return existing
                raise ConflictError(f"collection {name!r} already exists")
        try:
            enc = self.ctx.encoder(spec)
        except (ModelLoadError, MissingDependencyError) as exc:
            # The client chose the encoder: a model that cannot be loaded is their input to fix. The
            # reason names server paths and files, so it goes to the log, not to the client.
            log.warning("encoder %r cannot be loaded: %s", spec, exc)
            raise InvalidInputError(
                f"encoder {spec!r} cannot be loaded on this server; the server log has the reason"
            ) from exc
        with self.ctx.db.session() as session:
            collection = Collection(
                name=name, description=description, encoder=spec, compression=compression or {}
            )
            session.add(collection)
            session.flush()
            version = IndexVersion(
                collection_id=collection.id,
                number=1,
                encoder=spec,
                encoder_revision=enc.revision,
                dim=enc.dim,
                compression=compression or {},
                status="active",
            )
            session.add(version)
            session.flush()
            collection.active_version_id = version.id
            return collection

    def list(self) -> list[tuple[Collection, int, int]]:
        """Collections with their count of ready documents and units."""
        with self.ctx.db.session() as session:
            rows = session.execute(
                select(
                    Collection,
                    func.count(Document.id).filter(Document.status == "ready"),
                    func.coalesce(func.sum(Document.n_units).filter(Document.status == "ready"), 0),
                )
                .outerjoin(Document, Document.collection_id == Collection.id)
                .group_by(Collection.id)
                .order_by(Collection.name)
            ).all()
            return [(c, int(n_docs), int(n_units)) for c, n_docs, n_units in rows]

    def get(self, name: str) -> tuple[Collection, int, int]:
        for collection, n_docs, n_units in self.list():
            if collection.name == name:
                return collection, n_docs, n_units
        raise NotFoundError(f"collection {name!r} does not exist; create it first")

    def update(self, name: str, *, description: str | None = None) -> None:
        """Change what can change in place; encoder and compression change through a rebuild."""
        with self.ctx.db.session() as session:
            collection = get_collection(session, name)
            if description is not None:
                collection.description = description

    def delete(self, name: str) -> None:
        """Delete a collection, its documents, units, jobs, index files and the blobs no other collection
        shares."""
        with self.ctx.db.session() as session:
            collection = get_collection(session, name)
            collection_id = collection.id
            active = session.scalar(
                select(func.count(Job.id)).where(Job.collection_id == collection_id, Job.status == "running")
            )
            if active:
                raise ConflictError(f"collection {name!r} has a running job; wait for it or cancel it")
            doc_ids = session.scalars(
                select(Document.id).where(Document.collection_id == collection_id)
            ).all()
            keys = blob_keys_of(session, doc_ids)
            session.execute(delete(Unit).where(Unit.collection_id == collection_id))
            session.execute(delete(Document).where(Document.collection_id == collection_id))
            session.delete(collection)
        self.ctx.drop_index(collection_id)
        with self.ctx.db.session() as session:  # blobs no other collection shares
            release_blobs(session, self.ctx.blobs, keys)
