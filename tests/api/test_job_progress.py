"""Ingest progress counts pages and frames: a job's status over HTTP moves page by page, and so does
``patchseek ingest``'s progress bar."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from reportlab.pdfgen import canvas

from patchseek.api.services import IngestService, ServiceContext
from patchseek.api.services.ingest import IngestProgress
from patchseek.samples import make_receipt_png
from tests.api.server import running_server
from tests.conftest import make_settings

PAGES = 12


def _book(pages: int) -> bytes:
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for page in range(pages):
        pdf.drawString(72, 760, f"chapter {page + 1} of the handbook")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def test_job_status_advances_per_page_over_http(tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", database_url, ocr=False)
    with running_server(settings) as client:
        assert client.post("/v1/collections", json={"name": "books"}).status_code == 201
        files = [("files", ("receipt.png", make_receipt_png())), ("files", ("book.pdf", _book(PAGES)))]
        job = client.post("/v1/collections/books/documents", files=files).json()
        assert (job["units_done"], job["units_total"], job["progress"], job["total"]) == (0, 0, 0, 2)

        # The job runs as a worker runs it; after each report, the status a client polls says the same.
        seen: list[tuple[int, int, int]] = []
        reported: list[IngestProgress] = []

        def poll(p: IngestProgress) -> None:
            reported.append(p)
            status = client.get(f"/v1/jobs/{job['id']}").json()
            seen.append((status["units_done"], status["units_total"], status["progress"]))

        ctx = ServiceContext.from_settings(settings)
        try:
            IngestService(ctx).run_job(job["id"], progress=poll)
        finally:
            ctx.close()
        final = client.get(f"/v1/jobs/{job['id']}").json()

    assert [(p.units_done, p.units_total, p.documents_done) for p in reported] == seen
    # The image: opened (0 of 1), encoded, done; then the book: opened (all its pages known), page by
    # page, done.
    assert seen[:3] == [(0, 1, 0), (1, 1, 0), (1, 1, 1)]
    assert seen[3:] == [(1 + n, 1 + PAGES, 1) for n in range(PAGES + 1)] + [(1 + PAGES, 1 + PAGES, 2)]
    assert (final["units_done"], final["units_total"], final["progress"], final["total"]) == (
        1 + PAGES,
        1 + PAGES,
        2,
        2,
    )
    assert final["status"] == "succeeded"


def test_cli_bar_counts_pages(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pages = 40  # the bar redraws 10 times a second: long enough a book to be seen mid-way
    book = tmp_path / "book.pdf"
    book.write_bytes(_book(pages))
    env = {
        **os.environ,
        "PATCHSEEK_DATA_DIR": str(tmp_path / "data"),
        "PATCHSEEK_OCR": "false",
        # Rich draws the live bar only on a terminal; these make it draw into the pipe, refreshed as
        # often as it can, so every state the bar passes through is in the output.
        "TTY_COMPATIBLE": "1",
        "TTY_INTERACTIVE": "1",
        "NO_COLOR": "1",
        "COLUMNS": "160",
    }
    env.pop("PATCHSEEK_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "patchseek.cli", "ingest", str(book), "-c", "books"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)  # cursor moves and bold
    counts = [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+) pages/frames", err)]
    assert counts and counts[-1] == (pages, pages), err
    assert all(total == pages for _, total in counts)  # known from the moment the book is opened
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)
    assert any(0 < done < pages for done, _ in counts), err
    assert f"1 ingested ({pages} units)" in err
