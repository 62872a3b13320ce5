"""Source readers on generated files and on the shared corpus, including bad input."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from patchseek.errors import (
    DocumentReadError,
    EncryptedDocumentError,
    ImageTooLargeError,
    UnsupportedMediaError,
)
from patchseek.indexer.sources import read_image, read_units, sniff_media_type
from patchseek.indexer.sources.base import ReadOptions
from patchseek.samples import PDF_PAGES, make_pdf, make_slides_video, make_video


def _png(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


class TestSniff:
    def test_types_from_bytes_not_names(self, samples) -> None:  # type: ignore[no-untyped-def]
        assert sniff_media_type(samples.pdf.read_bytes()) == "pdf"
        assert sniff_media_type(samples.receipt.read_bytes()) == "image"
        assert sniff_media_type(samples.whiteboard.read_bytes()) == "image"
        assert sniff_media_type(samples.video.read_bytes()) == "video"

    def test_empty_and_unknown(self) -> None:
        with pytest.raises(DocumentReadError):
            sniff_media_type(b"")
        with pytest.raises(UnsupportedMediaError):
            sniff_media_type(b"hello, this is plain text")


class TestPdf:
    def test_pages_and_words(self) -> None:
        media, units = read_units(make_pdf(), ReadOptions(pdf_dpi=50))
        units = list(units)
        assert media == "pdf"
        assert [u.page for u in units] == [1, 2, 3]
        title, _ = PDF_PAGES[0]
        assert units[0].text.startswith(title)
        word = units[0].words[0]
        x0, y0, x1, y1 = word.box
        # The title is at the top left of an A4 page.
        assert 0 <= x0 < x1 < 0.6 and 0 <= y0 < y1 < 0.15
        width, height = units[0].image.size  # A4 (595 x 842 pt) at 50 dpi
        assert abs(width - 595 * 50 / 72) <= 1 and abs(height - 842 * 50 / 72) <= 1

    def test_truncated_pdf_fails_clearly(self) -> None:
        data = make_pdf()
        with pytest.raises(DocumentReadError):
            _, units = read_units(data[: len(data) // 3])
            list(units)

    def test_page_limit(self) -> None:
        with pytest.raises(DocumentReadError, match="limit"):
            read_units(make_pdf(), ReadOptions(max_pages=2))

    def test_encrypted_corpus_file(self, corpus) -> None:  # type: ignore[no-untyped-def]
        data = (corpus / "005-libreoffice-writer-password" / "libreoffice-writer-password.pdf").read_bytes()
        with pytest.raises(EncryptedDocumentError) as info:
            read_units(data)
        assert info.value.code == "encrypted_document"

    def test_image_only_page_has_no_text_layer(self, corpus) -> None:  # type: ignore[no-untyped-def]
        data = (corpus / "003-pdflatex-image" / "pdflatex-image.pdf").read_bytes()
        _, units = read_units(data, ReadOptions(pdf_dpi=36))
        assert len(list(units)) == 1


class TestImage:
    def test_exif_rotation_is_applied(self, samples) -> None:  # type: ignore[no-untyped-def]
        unit = read_image(samples.whiteboard.read_bytes())
        assert unit.image.size == (720, 480)  # stored as 480x720 with orientation 6

    @pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "LA", "P", "I;16"])
    def test_modes_become_rgb(self, mode: str) -> None:
        base = Image.new("RGB", (40, 30), (200, 10, 10))
        image = base.convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 40000)
        fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
        unit = read_image(_png(image, fmt))
        assert unit.image.mode == "RGB" and unit.image.size == (40, 30)
        if mode == "I;16":
            # 40000/65535 of full scale, not clipped to white.
            assert 140 < unit.image.getpixel((0, 0))[0] < 170

    def test_transparent_pixels_become_white(self) -> None:
        image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
        assert read_image(_png(image)).image.getpixel((5, 5)) == (255, 255, 255)

    def test_large_images_are_downscaled(self) -> None:
        unit = read_image(_png(Image.new("RGB", (3000, 1000), "white")), max_side=1000)
        assert unit.image.size == (1000, 333)

    def test_truncated_image(self, samples) -> None:  # type: ignore[no-untyped-def]
        data = samples.receipt.read_bytes()
        with pytest.raises(DocumentReadError):
            read_image(data[: len(data) // 2])


class TestVideo:
    def test_frames_have_time_spans(self) -> None:
        media, units = read_units(make_video(), ReadOptions(video_interval=2.0))
        units = list(units)
        assert media == "video"
        assert [u.t_start for u in units] == [0.0, 2.0, 4.0]
        assert [u.t_end for u in units] == [2.0, 4.0, 6.0]
        assert all(u.kind == "frame" and u.image.size == (640, 360) for u in units)

    def test_max_frames(self) -> None:
        _, units = read_units(make_video(), ReadOptions(video_interval=0.5, video_max_frames=3))
        assert len(list(units)) == 3

    def test_corrupt_video(self) -> None:
        data = make_video()
        with pytest.raises(DocumentReadError):
            _, units = read_units(data[:200])
            list(units)

    def test_video_without_video_stream(self) -> None:
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with pytest.raises(DocumentReadError, match="no video stream"):
            read_units(buf.getvalue())

    def test_frames_over_the_pixel_budget_fail_the_video(self) -> None:
        with pytest.raises(ImageTooLargeError):
            read_units(make_video(), ReadOptions(max_decode_pixels=320 * 180))


# Slides of dark text on a light background, as in a recorded talk: the cuts between them change few
# pixels, while a bar moving along the bottom changes some in every frame.
SLIDES = [
    (["Photosynthesis", "in green leaves"], 2.0),
    (["Volcanic eruptions", "and lava flows"], 3.5),
    (["Glacier retreat", "in the Alps"], 1.5),
]
FPS = 8


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_slides_video(SLIDES, fps=FPS)


class TestVideoScenes:
    def test_one_shot_per_slide_with_its_span(self, video: bytes) -> None:
        _, units = read_units(video, ReadOptions(video_sampling="scenes"))
        shots = list(units)
        assert [u.kind for u in shots] == ["shot"] * 3
        assert [u.index for u in shots] == [0, 1, 2]
        assert [(u.t_start, u.t_end) for u in shots] == [(0.0, 2.0), (2.0, 5.5), (5.5, 7.0)]

    def test_a_shot_shows_its_middle_frame(self, video: bytes) -> None:
        _, units = read_units(video, ReadOptions(video_sampling="scenes"))
        _, every = read_units(video, ReadOptions(video_interval=1 / FPS))
        frames = {u.t_start: np.asarray(u.image, dtype=np.int16) for u in every}
        for shot in units:
            assert shot.t_start is not None and shot.t_end is not None
            middle = (shot.t_start + shot.t_end) / 2
            first_after = min(t for t in frames if t is not None and t >= middle - 1e-6)
            assert np.abs(np.asarray(shot.image, dtype=np.int16) - frames[first_after]).max() == 0

    def test_a_video_without_cuts_is_one_shot(self) -> None:
        _, units = read_units(make_slides_video([SLIDES[0]], fps=FPS), ReadOptions(video_sampling="scenes"))
        assert [(u.t_start, u.t_end) for u in units] == [(0.0, 2.0)]

    def test_max_frames_caps_shots(self, video: bytes) -> None:
        _, units = read_units(video, ReadOptions(video_sampling="scenes", video_max_frames=2))
        assert [(u.t_start, u.t_end) for u in units] == [(0.0, 2.0), (2.0, 5.5)]

    def test_no_cut_comes_sooner_than_the_shortest_shot(self, video: bytes) -> None:
        _, units = read_units(video, ReadOptions(video_sampling="scenes", video_min_shot_seconds=2.5))
        assert [(u.t_start, u.t_end) for u in units] == [(0.0, 5.5), (5.5, 7.0)]

    def test_corrupt_and_oversized_videos_fail(self, video: bytes) -> None:
        with pytest.raises(DocumentReadError):
            _, units = read_units(video[: len(video) // 2], ReadOptions(video_sampling="scenes"))
            list(units)
        with pytest.raises(ImageTooLargeError):
            read_units(video, ReadOptions(video_sampling="scenes", max_decode_pixels=320 * 180))
