"""Blob garbage collection: a deleted document's original bytes and page images leave the blob store
once nothing else references them.

Blobs are content-addressed and shared: the same upload in two collections, or the same rendered page
in two index versions, is one file. ``blob_keys_of`` collects what a set of documents references (read
before their rows are deleted); ``release_blobs`` deletes each key that no remaining document or unit
references. Known window: an upload of the very same bytes racing the delete can store its blob just
before it is released; its job then fails that document with a clear "blob missing" error rather than
indexing garbage.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from patchseek.api.db.models import Document, Unit
from patchseek.indexer.blobs import BlobStore


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
