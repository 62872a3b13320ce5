"""Decompression bombs built at test time: tiny files that declare gigantic pixel counts."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def pdf_bomb(side_pt: float = 14400) -> bytes:
    """A ~1.3 KB PDF with one ``side_pt`` x ``side_pt`` pt page (14400 pt is the largest the PDF spec
    allows: 200 inches, 20000 x 20000 px at 100 dpi)."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=(side_pt, side_pt), invariant=1)
    pdf.setFont("Helvetica", 400)
    pdf.drawString(720, side_pt - 1440, "enormous page")
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def png_bomb(width: int = 14000, height: int = 14000) -> bytes:
    """An 8-bit RGB PNG of ``width`` x ``height`` pixels, white with a black band (~800 KB for
    196 MP). Written row by row, so building it never holds the decoded image in memory."""
    white = b"\x00" + b"\xff" * (3 * width)  # filter byte 0, then the row's pixels
    black = b"\x00" + b"\x00" * (3 * width)
    z = zlib.compressobj(9)
    body = [z.compress(black if height // 2 <= y < height // 2 + 8 else white) for y in range(height)]
    body.append(z.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")
    )


def jpeg(width: int, height: int) -> bytes:
    """A plain JPEG of the given size (for budget tests that need a decodable, large-ish JPEG)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 180, 160)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()
