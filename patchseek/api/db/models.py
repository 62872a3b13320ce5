"""SQLAlchemy 2 models: collections, index versions, documents, units and jobs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    encoder: Mapped[str] = mapped_column(String(512))
    compression: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Bumped in the transaction that makes documents visible or removes them; searchers cache the
    # packed index per generation.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    active_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    documents: Mapped[list[Document]] = relationship(back_populates="collection", passive_deletes=True)


class IndexVersion(Base):
    __tablename__ = "index_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    encoder: Mapped[str] = mapped_column(String(512))
    encoder_revision: Mapped[str] = mapped_column(String(256))
    dim: Mapped[int] = mapped_column(Integer)
    compression: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="active")  # building | active | retired
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("collection_id", "number"),)


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    media_type: Mapped[str | None] = mapped_column(String(16), nullable=True)  # pdf | image | video
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | ready | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_units: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The index segment the document's units were written into by the transaction that made it ready
    # (merges later move the rows; the manifest is where they are now).
    segment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="documents")
    units: Mapped[list[Unit]] = relationship(
        back_populates="document", passive_deletes=True, order_by="Unit.ordinal"
    )

    __table_args__ = (Index("ix_documents_collection_sha", "collection_id", "sha256"),)


class Unit(Base):
    """A retrievable unit: a PDF page, an image, or a video frame / segment."""

    __tablename__ = "units"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    collection_id: Mapped[int] = mapped_column(Integer, index=True)
    # Units belong to one index version: a rebuild writes a new version's units beside the old ones and
    # the swap of ``Collection.active_version_id`` makes them visible at once.
    index_version_id: Mapped[int] = mapped_column(
        ForeignKey("index_versions.id", ondelete="CASCADE"), index=True
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    page: Mapped[int | None] = mapped_column(Integer, nullable=True)
    t_start: Mapped[float | None] = mapped_column(Float, nullable=True)
    t_end: Mapped[float | None] = mapped_column(Float, nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    grid_rows: Mapped[int] = mapped_column(Integer)
    grid_cols: Mapped[int] = mapped_column(Integer)
    # The unit's patch vectors live in its index version's segments, keyed by (document_id, ordinal);
    # ``n_patches`` is their count. ``patch_offset`` is the row offset in a pre-0.2 per-document file
    # (read once by the data-dir migration), 0 otherwise.
    patch_offset: Mapped[int] = mapped_column(Integer)
    n_patches: Mapped[int] = mapped_column(Integer)
    image_blob: Mapped[str] = mapped_column(String(64))
    thumb_blob: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text, default="")

    document: Mapped[Document] = relationship(back_populates="units")

    __table_args__ = (Index("ix_units_version_document", "index_version_id", "document_id", "ordinal"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="ingest")
    # queued | running | succeeded | partial (some documents failed) | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    # Documents done (read and encoded, or failed) of the job's ``total`` documents.
    progress: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    # Ingest jobs: pages, images and video frames encoded, of the units of the documents opened so far
    # (it grows as each document is opened: a PDF's page count, a video's expected frames or shots).
    units_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    units_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Refreshed while a worker makes progress; a running job whose heartbeat is old belongs to a dead
    # process and goes back to the queue.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Who runs it: ``host:pid:start-token`` (``jobs.worker_identity``); None for jobs the CLI runs.
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiKey(Base):
    """An API key, stored as its SHA-256 (keys are 256-bit random tokens, so a fast hash suffices).

    ``collections`` is the list of collection names the key may use, or ``None`` for all of them
    (including creating collections).
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    collections: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
