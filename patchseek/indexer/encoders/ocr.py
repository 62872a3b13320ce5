"""Optical character recognition for units without a text layer (images, video frames, scans).

Uses RapidOCR (PP-OCR models bundled in the wheel, run by onnxruntime), so it works offline.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from patchseek.errors import MissingDependencyError
from patchseek.types import Word

log = logging.getLogger(__name__)
_lock = threading.Lock()  # onnxruntime sessions are shared; one OCR call at a time keeps memory flat


def ocr_available() -> bool:
    """True when the ``ocr`` extra is installed."""
    try:
        import rapidocr  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _engine() -> Any:
    try:
        from rapidocr import RapidOCR
    except ImportError as exc:
        raise MissingDependencyError(
            "OCR needs the 'ocr' extra: pip install 'patchseek[ocr]' (or set PATCHSEEK_OCR=false)"
        ) from exc
    engine = RapidOCR()
    # RapidOCR logs every model load at INFO through its own handler; keep only its errors.
    for name in ("RapidOCR", "rapidocr"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return engine


def ocr_words(image: Image.Image, *, max_side: int = 1600) -> list[Word]:
    """Recognise the words of ``image``; boxes normalised to the image (0..1, origin top-left).

    OCR returns text lines; each line's box is split among its words in proportion to their length.
    """
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    with _lock:
        result = _engine()(np.asarray(image.convert("RGB")))
    if result is None or result.txts is None or result.boxes is None:
        return []
    width, height = image.size
    words: list[Word] = []
    for text, quad in zip(result.txts, result.boxes, strict=True):
        quad = np.asarray(quad, dtype=np.float64)  # (4, 2) corners, x right, y down
        x0, y0 = quad[:, 0].min() / width, quad[:, 1].min() / height
        x1, y1 = quad[:, 0].max() / width, quad[:, 1].max() / height
        tokens = text.split()
        total = sum(len(t) for t in tokens) + max(len(tokens) - 1, 0)
        if total == 0:
            continue
        cursor = 0
        for token in tokens:
            a = x0 + (x1 - x0) * cursor / total
            b = x0 + (x1 - x0) * (cursor + len(token)) / total
            cursor += len(token) + 1
            box = (
                min(max(a, 0.0), 1.0),
                min(max(y0, 0.0), 1.0),
                min(max(b, 0.0), 1.0),
                min(max(y1, 0.0), 1.0),
            )
            words.append(Word(token, box))
    return words
