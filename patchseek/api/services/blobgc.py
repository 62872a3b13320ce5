"""Blob garbage collection: a deleted document's original bytes and page images leave the blob store
once nothing else references them.

Blobs are content-addressed and shared: the same upload in two collections, or the same rendered page
in two index versions, is one file. ``blob_keys_of`` collects what a set of documents references (read
before their rows are deleted); ``release_blobs`` deletes each key that no remaining document or unit
references. Known window: an upload of the very same bytes racing the delete can store its blob just
before it is released; its job then fails that document with a clear "blob missing" error rather than
indexing garbage.

``sweep_orphan_blobs`` removes what no row references at all: the page images of a document that failed
after some pages were rendered, or of a process killed before its rows committed. Blobs are written
before the rows that reference them commit, so only blobs older than a grace period
(``PATCHSEEK_ORPHAN_GRACE_SECONDS``) and older than every running job are removed. The columns that
hold blob keys are ``Document.sha256`` (original bytes), ``Unit.image_blob`` and ``Unit.thumb_blob``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timezone

from sqlalchemy import func, or_, select, union
from sqlalchemy.orm import Session

from patchseek.api.db.models import Document, Job, Unit
from patchseek.api.db.session import Database
from patchseek.indexer.blobs import BlobStore

log = logging.getLogger(__name__)


def blob_keys_of(session: Session, document_ids: Iterable[int]) -> set[str]:
    """Every blob key the documents reference: their original bytes and their units' images."""
    ids = list(document_ids)
    if not ids:
        return set()
    keys = set(session.scalars(select(Document.sha256).where(Document.id.in_(ids))).all())
    for image, thumb in session.execute(
        select(Unit.image_blob, Unit.thumb_blob).where(Unit.document_id.in_(ids))
    ).all():
        keys.update((image, thumb))
    return keys


def release_blobs(session: Session, blobs: BlobStore, keys: Iterable[str]) -> int:
    """Delete the blobs among ``keys`` that no document or unit references any more; how many."""
    n = 0
    for key in sorted(set(keys)):
        used = session.scalar(select(Document.id).where(Document.sha256 == key).limit(1)) or session.scalar(
            select(Unit.id).where(or_(Unit.image_blob == key, Unit.thumb_blob == key)).limit(1)
        )
        if used is None and blobs.exists(key):
            blobs.delete(key)
            n += 1
    return n


@dataclass(frozen=True)
class SweepReport:
    """What ``sweep_orphan_blobs`` found: blobs stored, referenced, removed; temp files removed."""

    stored: int
    referenced: int
    removed: int
    kept_young: int
    temp_removed: int


def _referenced_keys(session: Session) -> Iterator[str]:
    """Every blob key some row references, ascending, from one statement (one consistent snapshot).

    Streamed, so the sweep holds no set of all keys; the order is checked against Python's (keys are
    lowercase hex, which every collation sorts alike) and an out-of-order key stops the sweep.
    """
    keys = union(
        select(Document.sha256.label("blob_key")),
        select(Unit.image_blob.label("blob_key")),
        select(Unit.thumb_blob.label("blob_key")),
    ).subquery()
    rows = session.execute(
        select(keys.c.blob_key).order_by(keys.c.blob_key).execution_options(yield_per=10_000)
    )
    previous = ""
    for key in rows.scalars():
        if key < previous:
            raise RuntimeError(f"the database returned blob keys out of order ({previous} > {key})")
        previous = key
        yield key


def _sweep_cutoff(session: Session, grace_s: float) -> float:
    """Blobs with an mtime before this (a ``time.time()`` value) may be removed: older than the grace
    period, and older than the start of every running job (less the grace period), whose rendered
    pages are unreferenced until it commits however long it takes."""
    cutoff = time.time() - grace_s
    oldest = session.scalar(select(func.min(Job.started_at)).where(Job.status == "running"))
    if oldest is not None:
        if oldest.tzinfo is None:  # SQLite gives back naive datetimes in UTC
            oldest = oldest.replace(tzinfo=timezone.utc)
        cutoff = min(cutoff, oldest.timestamp() - grace_s)
    return cutoff


def sweep_orphan_blobs(db: Database, blobs: BlobStore, grace_s: float) -> SweepReport:
    """Remove the blobs no document or unit references, once older than ``grace_s`` seconds (and
    than every running job), and temp files of killed writers. Safe beside live ingests in any
    process: see the module docstring and ``BlobStore.remove_if_older``."""
    stored = referenced = removed = young = 0
    with db.session() as session:
        cutoff = _sweep_cutoff(session, grace_s)
        # The snapshot of references is taken before any blob is looked at: a blob that a row came to
        # reference later was ``put`` later too, so its mtime is after the cutoff.
        refs = _referenced_keys(session)
        ref = next(refs, None)
        for key in blobs.keys():
            stored += 1
            while ref is not None and ref < key:
                ref = next(refs, None)
            if ref == key:
                referenced += 1
                continue
            if blobs.remove_if_older(key, cutoff):
                removed += 1
            else:
                young += 1
    temp = blobs.remove_stale_temp(grace_s)
    if removed or temp:
        log.info("orphan sweep: removed %d unreferenced blobs and %d temp files", removed, temp)
    return SweepReport(stored, referenced, removed, young, temp)
