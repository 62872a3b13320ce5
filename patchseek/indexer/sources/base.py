"""Media detection from bytes and the common reader entry point."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from patchseek.errors import DocumentReadError, UnsupportedMediaError
from patchseek.types import MediaType, SourceUnit

VideoSampling = Literal["interval", "scenes"]

# Magic numbers of the formats we read. The file name is never trusted.
_IMAGE_MAGIC: tuple[tuple[bytes, int], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0),
    (b"\xff\xd8\xff", 0),
    (b"GIF87a", 0),
    (b"GIF89a", 0),
    (b"BM", 0),
    (b"II*\x00", 0),
    (b"MM\x00*", 0),
)
_VIDEO_FTYP_BRANDS = (b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"M4V ", b"qt  ", b"dash", b"3gp")


def sniff_media_type(data: bytes) -> MediaType:
    """Return the media type of ``data`` from its leading bytes.

    Raises ``DocumentReadError`` for an empty file and ``UnsupportedMediaError`` for anything that is not
    a PDF, an image (PNG, JPEG, GIF, BMP, TIFF, WebP) or a video (MP4/MOV, WebM/MKV, AVI).
    """
    if not data:
        raise DocumentReadError("the file is empty (0 bytes)")
    head = data[:64]
    if b"%PDF-" in data[:1024]:
        return "pdf"
    for magic, at in _IMAGE_MAGIC:
        if head[at : at + len(magic)] == magic:
            return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
            raise UnsupportedMediaError(
                "AVIF/HEIC images are not supported; convert the image to PNG or JPEG"
            )
        return "video"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
        return "video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    raise UnsupportedMediaError(
        "unsupported file type: expected a PDF, an image (PNG, JPEG, GIF, BMP, TIFF, WebP) or a video "
        "(MP4, MOV, WebM, MKV, AVI)"
    )


class UnitStream(Iterator[SourceUnit]):
    """A source's units, read lazily, and how many the source expects to yield.

    ``expected`` is exact for PDFs (their page count), images (1) and scene-sampled videos (their shot
    count), an estimate for interval-sampled videos (duration / interval, up to the frame cap) and
    ``None`` where a video does not state its duration. Progress reports use it as their total.
    """

    def __init__(self, units: Iterator[SourceUnit], expected: int | None) -> None:
        self._units = units
        self.expected = expected

    def __iter__(self) -> UnitStream:
        return self

    def __next__(self) -> SourceUnit:
        return next(self._units)


@dataclass(frozen=True)
class ReadOptions:
    """How sources are turned into units; mirrors the ``Settings`` fields of the same names."""

    pdf_dpi: int = 100
    max_pages: int = 2000
    image_max_side: int = 4096
    video_interval: float = 1.0
    video_max_frames: int = 3600  # units per video, frames or shots
    video_sampling: VideoSampling = "interval"  # or "scenes": one unit per shot
    video_min_shot_seconds: float = 0.5
    video_scene_threshold: float = 3.0
    max_page_pixels: int = 4096 * 4096  # rendered pixels per PDF page; larger pages are drawn smaller
    max_decode_pixels: int = 40_000_000  # decoded pixels per image; larger ones are refused


def read_units(data: bytes, options: ReadOptions | None = None) -> tuple[MediaType, UnitStream]:
    """Sniff ``data`` and return its media type and a lazy iterator over its units (with the number
    of units it expects, ``UnitStream.expected``).

    Errors that can be detected up front (empty, unsupported, encrypted, corrupt header) are raised here;
    errors found while decoding later units are raised by the iterator.
    """
    from patchseek.indexer.sources.image import read_image
    from patchseek.indexer.sources.pdf import read_pdf
    from patchseek.indexer.sources.video import read_video

    options = options or ReadOptions()
    media = sniff_media_type(data)
    if media == "pdf":
        return media, read_pdf(
            data, dpi=options.pdf_dpi, max_pages=options.max_pages, max_pixels=options.max_page_pixels
        )
    if media == "image":
        image = read_image(data, max_side=options.image_max_side, max_pixels=options.max_decode_pixels)
        return media, UnitStream(iter([image]), 1)
    return media, read_video(
        data,
        interval=options.video_interval,
        max_frames=options.video_max_frames,
        sampling=options.video_sampling,
        min_shot_seconds=options.video_min_shot_seconds,
        scene_threshold=options.video_scene_threshold,
        max_pixels=options.max_decode_pixels,
    )
