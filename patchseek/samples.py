"""Sample files the project makes itself: a PDF, two images and a short video with known content.

Used by ``make demo`` and by the tests, so nothing binary is committed and every query has a known
right answer.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

PDF_PAGES = [
    (
        "Quarterly revenue report",
        [
            "Revenue grew in the third quarter",
            "driven by solar panel installations",
            "across northern regions.",
        ],
    ),
    (
        "Employee onboarding checklist",
        ["Collect the laptop and badge", "sign the security policy", "meet your onboarding mentor."],
    ),
    (
        "Glacier retreat in the Alps",
        ["Alpine glaciers lost mass", "every summer since records began", "meltwater feeds the rivers."],
    ),
]
RECEIPT_LINES = ["Harbour Coffee receipt", "espresso 2.80", "croissant 3.10", "total 5.90"]
WHITEBOARD_LINES = ["Sprint planning", "backlog priorities", "release checklist"]
VIDEO_SCENES = [("Photosynthesis", "in green leaves"), ("Volcanic eruptions", "and lava flows")]
VIDEO_SCENE_SECONDS = 3

DEMO_QUERIES = [
    "solar panel installations",
    "glacier meltwater",
    "espresso receipt",
    "sprint backlog",
    "volcanic lava",
]


@dataclass(frozen=True)
class SampleSet:
    pdf: Path
    receipt: Path
    whiteboard: Path
    video: Path

    @property
    def all(self) -> list[Path]:
        return [self.pdf, self.receipt, self.whiteboard, self.video]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_image(lines: list[str], size: tuple[int, int], *, font_size: int = 44) -> Image.Image:
    image = Image.new("RGB", size, (250, 250, 245))
    draw = ImageDraw.Draw(image)
    y = size[1] // 6
    for line in lines:
        draw.text((size[0] // 12, y), line, fill=(20, 20, 20), font=_font(font_size))
        y += int(font_size * 1.6)
    return image


def make_pdf() -> bytes:
    """A three-page PDF with a real text layer (reportlab), the same bytes on every call.

    ``invariant=1`` leaves out the creation date and the random document id, so ``make demo`` run
    again finds the same bytes already ingested.
    """
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4, invariant=1)
    width, height = A4
    for title, lines in PDF_PAGES:
        pdf.setFont("Helvetica-Bold", 24)
        pdf.drawString(72, height - 96, title)
        pdf.setFont("Helvetica", 14)
        for i, line in enumerate(lines):
            pdf.drawString(72, height - 150 - 22 * i, line)
        pdf.rect(72, 200, width - 144, 180)
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def make_receipt_png() -> bytes:
    buf = io.BytesIO()
    _text_image(RECEIPT_LINES, (640, 480)).save(buf, format="PNG")
    return buf.getvalue()


def make_whiteboard_jpeg() -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view")."""
    upright = _text_image(WHITEBOARD_LINES, (720, 480))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def make_video(fps: int = 4) -> bytes:
    """An MPEG-4 video: one titled scene per ``VIDEO_SCENE_SECONDS`` seconds."""
    return make_slides_video([([t, sub], VIDEO_SCENE_SECONDS) for t, sub in VIDEO_SCENES], fps=fps)


def make_slides_video(
    slides: Sequence[tuple[Sequence[str], float]], *, fps: int = 4, size: tuple[int, int] = (640, 360)
) -> bytes:
    """An MPEG-4 video of slides ``(lines, seconds)`` shown one after another, cut hard between them.

    A bar moving along the bottom keeps consecutive frames distinct, as in real footage. A slide lasts
    ``round(seconds * fps)`` frames.
    """
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for lines, seconds in slides:
            frame_image = _text_image(list(lines), size, font_size=40)
            for i in range(round(seconds * fps)):
                array = np.asarray(frame_image).copy()
                x = (i * 37) % (width - 40)
                array[height - 30 : height - 10, x : x + 40] = (200, 60, 60)
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_samples(folder: Path) -> SampleSet:
    """Write the sample files into ``folder`` (created) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = SampleSet(
        pdf=folder / "report.pdf",
        receipt=folder / "receipt.png",
        whiteboard=folder / "whiteboard.jpg",
        video=folder / "lecture.mp4",
    )
    samples.pdf.write_bytes(make_pdf())
    samples.receipt.write_bytes(make_receipt_png())
    samples.whiteboard.write_bytes(make_whiteboard_jpeg())
    samples.video.write_bytes(make_video())
    return samples
