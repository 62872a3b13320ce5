"""PDF pages rendered with pypdfium2, with the text layer split into words with boxes.

pdfium is not thread-safe: two threads inside it at once (an upload with ``?wait=true`` beside the
worker) corrupt its global state and kill the process with a segfault. Every pypdfium2 call of this
process (open, page count, render, text extraction, close) therefore goes through this module, under
``PDFIUM_LOCK``. The lock is held one page at a time, so concurrent documents interleave page by page.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator

import pypdfium2 as pdfium
from PIL import Image

from patchseek.errors import DocumentReadError, EncryptedDocumentError, TooManyPagesError
from patchseek.indexer.sources.base import UnitStream
from patchseek.types import SourceUnit, Word

log = logging.getLogger(__name__)

# Re-entrant: ``read_pdf`` holds it while it calls the helpers below, which take it themselves so that
# they are safe to call on their own.
PDFIUM_LOCK = threading.RLock()

# Rendered pixels per page (width * height) before the page is drawn at a smaller scale: 16.8 MP is a
# 4096 x 4096 image (the largest side ``image_max_side`` keeps anyway), ~64 MiB as a bitmap. A 1 KB PDF
# may declare a 14400 x 14400 pt page, which at 100 dpi is 400 MP (1.6 GB).
MAX_PAGE_PIXELS = 4096 * 4096


def open_pdf(data: bytes) -> pdfium.PdfDocument:
    """Open a PDF from bytes, mapping pdfium's failures to patchseek errors with a clear reason."""
    try:
        with PDFIUM_LOCK:
            return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise EncryptedDocumentError(
                "the PDF is password-protected; remove the password and upload it again"
            ) from exc
        raise DocumentReadError(
            f"the PDF cannot be read ({message}); it may be corrupt or truncated"
        ) from exc


def close_pdf(pdf: pdfium.PdfDocument) -> None:
    """Close a document opened by ``open_pdf`` (under the lock: closing frees pdfium state too)."""
    with PDFIUM_LOCK:
        pdf.close()


def count_pages(data: bytes) -> int:
    """The number of pages of a PDF (opened and closed under the lock)."""
    pdf = open_pdf(data)
    try:
        with PDFIUM_LOCK:
            return len(pdf)
    finally:
        close_pdf(pdf)


def render_scale(width_pt: float, height_pt: float, dpi: float, max_pixels: int) -> float:
    """Pixels per PDF point: ``dpi / 72``, lowered so that the rendered page has at most ``max_pixels``.

    >>> render_scale(595, 842, 72, 10**9)
    1.0
    >>> s = render_scale(14400, 14400, 100, 4096 * 4096)  # a 200-inch page: 20000 px at 100 dpi
    >>> math.ceil(14400 * s)
    4095
    """
    scale = dpi / 72
    w, h = max(width_pt, 1e-6), max(height_pt, 1e-6)
    if math.ceil(w * scale) * math.ceil(h * scale) <= max_pixels:
        return scale
    # pypdfium2 makes the bitmap ceil(w * s) x ceil(h * s); (w s + 1)(h s + 1) <= max_pixels bounds that,
    # and its positive root is the largest such s (at most one pixel per side below the exact budget).
    b = w + h
    return min(scale, (-b + math.sqrt(b * b + 4 * w * h * (max_pixels - 1))) / (2 * w * h))


def page_words(page: pdfium.PdfPage) -> list[Word] | None:
    """Words of a page's text layer with boxes normalised to the page (0..1, origin top-left).

    A page without any text layer (a scan) gives ``None``, so encoders know they may OCR it.
    """
    with PDFIUM_LOCK:
        return _page_words(page)


def _page_words(page: pdfium.PdfPage) -> list[Word] | None:
    width, height = page.get_size()
    if width <= 0 or height <= 0:
        return []
    textpage = page.get_textpage()
    try:
        n_chars = textpage.count_chars()
        if n_chars <= 0:
            return None
        text = textpage.get_text_range(0, n_chars)
        words: list[Word] = []
        current: list[str] = []
        box = [float("inf"), float("inf"), float("-inf"), float("-inf")]

        def flush() -> None:
            if current and box[0] < box[2]:
                # pdfium boxes are in PDF points with origin bottom-left.
                x0, y0 = box[0] / width, 1.0 - box[3] / height
                x1, y1 = box[2] / width, 1.0 - box[1] / height
                clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
                words.append(Word("".join(current), (clip(x0), clip(y0), clip(x1), clip(y1))))
            current.clear()
            box[:] = [float("inf"), float("inf"), float("-inf"), float("-inf")]

        # get_text_range returns one character per index (generated spaces / line breaks included).
        for i, ch in enumerate(text[:n_chars]):
            if not ch.isalnum():
                flush()
                continue
            left, bottom, right, top = textpage.get_charbox(i)
            current.append(ch)
            box[0], box[1] = min(box[0], left), min(box[1], bottom)
            box[2], box[3] = max(box[2], right), max(box[3], top)
        flush()
        return words
    finally:
        textpage.close()


def render_page(
    pdf: pdfium.PdfDocument, index: int, *, dpi: float = 100, max_pixels: int = MAX_PAGE_PIXELS
) -> tuple[Image.Image, list[Word] | None]:
    """Render page ``index`` (0-based) to RGB and read its words, all under the lock.

    A page whose rendering at ``dpi`` would exceed ``max_pixels`` is drawn at the largest scale that
    fits; that is logged (``scaled_page`` with the page, requested and used scale) and visible in the
    unit's width and height.
    """
    with PDFIUM_LOCK:
        page = pdf[index]
        try:
            width_pt, height_pt = page.get_size()
            scale = render_scale(width_pt, height_pt, dpi, max_pixels)
            if scale < dpi / 72:
                log.warning(
                    "page %d is %.0f x %.0f pt; rendered at %.4f px/pt instead of %.4f to stay within "
                    "%d pixels (PATCHSEEK_MAX_PAGE_PIXELS)",
                    index + 1,
                    width_pt,
                    height_pt,
                    scale,
                    dpi / 72,
                    max_pixels,
                    extra={
                        "scaled_page": index + 1,
                        "requested_scale": dpi / 72,
                        "render_scale": scale,
                    },
                )
            bitmap = page.render(scale=scale)
            try:
                image = bitmap.to_pil().convert("RGB")  # a copy: the bitmap's buffer is freed below
            finally:
                bitmap.close()
            words = _page_words(page)
        finally:
            page.close()
    return image, words


def read_pdf(
    data: bytes, *, dpi: int = 100, max_pages: int = 2000, max_pixels: int = MAX_PAGE_PIXELS
) -> UnitStream:
    """Yield one ``SourceUnit`` per page: the rendered image and the text layer's words.

    The document is opened eagerly so that encrypted or corrupt files fail before any page is yielded;
    a PDF with more than ``max_pages`` pages raises ``TooManyPagesError``. Each page is rendered with
    at most ``max_pixels`` pixels (see ``render_page``).
    """
    pdf = open_pdf(data)
    try:
        with PDFIUM_LOCK:
            n_pages = len(pdf)
    except BaseException:
        close_pdf(pdf)
        raise
    if n_pages == 0:
        close_pdf(pdf)
        raise DocumentReadError("the PDF has no pages")
    if n_pages > max_pages:
        close_pdf(pdf)
        raise TooManyPagesError(
            f"the PDF has {n_pages} pages, more than the limit of {max_pages} (PATCHSEEK_MAX_PAGES); "
            "split it into smaller files"
        )

    def pages() -> Iterator[SourceUnit]:
        try:
            for index in range(n_pages):
                try:
                    image, words = render_page(pdf, index, dpi=dpi, max_pixels=max_pixels)
                except (pdfium.PdfiumError, ValueError) as exc:  # ValueError: a page of zero size
                    raise DocumentReadError(f"page {index + 1} cannot be rendered ({exc})") from exc
                yield SourceUnit(kind="page", index=index, image=image, words=words)
        finally:
            close_pdf(pdf)

    return UnitStream(pages(), n_pages)
