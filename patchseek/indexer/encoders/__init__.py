"""Encoders: the weight-free lexical default and colpali-engine models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from patchseek.indexer.encoders.base import Encoder, ProgressFn
from patchseek.indexer.encoders.lexical import LexicalEncoder

if TYPE_CHECKING:
    from patchseek.config import Settings

__all__ = ["Encoder", "LexicalEncoder", "ProgressFn", "load_encoder"]


def load_encoder(settings: Settings) -> Encoder:
    """Build the encoder named by ``settings.encoder``: ``lexical`` or a colpali-engine model id / dir."""
    if settings.encoder == "lexical":
        from patchseek.indexer.encoders.ocr import ocr_available

        return LexicalEncoder(ocr=settings.ocr and ocr_available())
    from patchseek.indexer.encoders.colpali import ColPaliEncoder

    return ColPaliEncoder(
        settings.encoder,
        revision=settings.encoder_revision,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        max_image_pixels=settings.max_image_pixels,
        salience="auto",  # SDPA; eager attention only for the batches of collections that prune
    )
