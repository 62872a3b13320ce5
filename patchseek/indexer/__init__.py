"""Indexing: source readers, encoders, compression and the content-addressed blob store.

Nothing here imports FastAPI or SQLAlchemy; the API's services wire these parts together.
"""

from __future__ import annotations

from patchseek.indexer.blobs import BlobStore
from patchseek.indexer.encoders import Encoder, LexicalEncoder, load_encoder
from patchseek.indexer.sources import ReadOptions, read_units, sniff_media_type

__all__ = [
    "BlobStore",
    "Encoder",
    "LexicalEncoder",
    "ReadOptions",
    "load_encoder",
    "read_units",
    "sniff_media_type",
]
