"""PDF pages rendered with pypdfium2, with the text layer split into words with boxes."""

from __future__ import annotations

from collections.abc import Iterator

import pypdfium2 as pdfium

from patchseek.errors import DocumentReadError, EncryptedDocumentError
from patchseek.types import SourceUnit, Word


def open_pdf(data: bytes) -> pdfium.PdfDocument:
    """Open a PDF from bytes, mapping pdfium's failures to patchseek errors with a clear reason."""
    try:
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


def page_words(page: pdfium.PdfPage) -> list[Word] | None:
    """Words of a page's text layer with boxes normalised to the page (0..1, origin top-left).

    A page without any text layer (a scan) gives ``None``, so encoders know they may OCR it.
    """
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


def read_pdf(data: bytes, *, dpi: int = 100, max_pages: int = 2000) -> Iterator[SourceUnit]:
    """Yield one ``SourceUnit`` per page: the rendered image and the text layer's words.

    The document is opened eagerly so that encrypted or corrupt files fail before any page is yielded.
    """
    pdf = open_pdf(data)
    n_pages = len(pdf)
    if n_pages == 0:
        pdf.close()
        raise DocumentReadError("the PDF has no pages")
    if n_pages > max_pages:
        pdf.close()
        raise DocumentReadError(
            f"the PDF has {n_pages} pages, more than the limit of {max_pages} (PATCHSEEK_MAX_PAGES)"
        )

    def pages() -> Iterator[SourceUnit]:
        try:
            for index in range(n_pages):
                try:
                    page = pdf[index]
                    image = page.render(scale=dpi / 72).to_pil().convert("RGB")
                    words = page_words(page)
                    page.close()
                except pdfium.PdfiumError as exc:
                    raise DocumentReadError(f"page {index + 1} cannot be rendered ({exc})") from exc
                yield SourceUnit(kind="page", index=index, image=image, words=words)
        finally:
            pdf.close()

    return pages()
