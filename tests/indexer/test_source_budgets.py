"""Pixel budgets of the source readers: pages are rendered smaller, images refused before decoding."""

from __future__ import annotations

import io
import logging
import time

import pytest
from PIL import Image

from patchseek.errors import DocumentReadError, ImageTooLargeError
from patchseek.indexer.sources import ReadOptions, read_image, read_units
from patchseek.indexer.sources.pdf import render_scale
from patchseek.samples import make_pdf
from tests.bombs import jpeg, pdf_bomb, png_bomb


class TestPageBudget:
    def test_an_enormous_page_is_rendered_within_the_budget_and_logged(self, caplog) -> None:  # type: ignore[no-untyped-def]
        budget = 2_000_000
        with caplog.at_level(logging.WARNING, logger="patchseek.indexer.sources.pdf"):
            _, units = read_units(pdf_bomb(), ReadOptions(pdf_dpi=100, max_page_pixels=budget))
            (unit,) = list(units)
        width, height = unit.image.size
        assert width * height <= budget
        assert width == height and width > 0.99 * budget**0.5  # as large as fits, not smaller
        assert [w.text for w in unit.words or []] == ["enormous", "page"]  # the text layer is kept
        (record,) = [r for r in caplog.records if hasattr(r, "scaled_page")]
        assert record.scaled_page == 1 and record.render_scale < record.requested_scale

    def test_a_normal_page_is_not_scaled(self, caplog) -> None:  # type: ignore[no-untyped-def]
        with caplog.at_level(logging.WARNING, logger="patchseek.indexer.sources.pdf"):
            _, units = read_units(make_pdf(), ReadOptions(pdf_dpi=100))
            first = next(iter(units))
        assert abs(first.image.width - 595 * 100 / 72) <= 1
        assert not [r for r in caplog.records if hasattr(r, "scaled_page")]

    @pytest.mark.parametrize("side", [1.0, 300.0, 14400.0])
    @pytest.mark.parametrize("budget", [65536, 4096 * 4096])
    def test_render_scale_fits_the_budget_after_rounding_up(self, side: float, budget: int) -> None:
        scale = render_scale(side, side * 1.7, 600, budget)
        assert scale <= 600 / 72
        w, h = -(-side * scale // 1), -(-side * 1.7 * scale // 1)  # pdfium rounds bitmap sides up
        assert w * h <= budget or scale == 600 / 72


class TestPageLimit:
    def test_too_many_pages_has_its_own_code(self) -> None:
        with pytest.raises(DocumentReadError) as info:
            read_units(make_pdf(), ReadOptions(max_pages=2))
        assert info.value.code == "too_many_pages"


class TestImageBudget:
    def test_a_png_bomb_is_refused_from_its_header(self) -> None:
        data = png_bomb()  # 14000 x 14000 = 196 MP in ~600 KB
        start = time.perf_counter()
        with pytest.raises(ImageTooLargeError) as info:
            read_image(data)
        assert time.perf_counter() - start < 1.0  # nothing was decoded
        assert info.value.code == "image_too_large" and info.value.status_code == 413

    def test_a_png_over_a_small_budget_is_refused(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (1200, 1000)).save(buf, format="PNG")
        with pytest.raises(ImageTooLargeError):
            read_image(buf.getvalue(), max_pixels=1_000_000)
        assert read_image(buf.getvalue(), max_pixels=1_200_000).image.size == (1200, 1000)

    def test_a_jpeg_over_the_budget_is_decoded_at_a_reduced_scale(self) -> None:
        unit = read_image(jpeg(3000, 2000), max_pixels=1_000_000)
        width, height = unit.image.size
        assert (width, height) == (750, 500)  # 1/4 scale: 1/2 (1500 x 1000) is still over the budget
        assert unit.image.mode == "RGB"
