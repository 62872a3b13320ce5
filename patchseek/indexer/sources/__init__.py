"""Source readers: bytes in, ``SourceUnit`` (page / image / frame) out."""

from __future__ import annotations

from patchseek.indexer.sources.base import ReadOptions, UnitStream, read_units, sniff_media_type
from patchseek.indexer.sources.image import read_image
from patchseek.indexer.sources.pdf import read_pdf
from patchseek.indexer.sources.video import read_video

__all__ = [
    "ReadOptions",
    "UnitStream",
    "read_image",
    "read_pdf",
    "read_units",
    "read_video",
    "sniff_media_type",
]
