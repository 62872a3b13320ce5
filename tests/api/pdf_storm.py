"""Child process for ``test_pdfium_concurrency``: concurrent PDF work in one server process.

``python -m tests.api.pdf_storm DATA_DIR`` starts the app with its in-process worker (``running_server``),
queues uploads for the worker, sends ``?wait=true`` uploads from several threads and reads PDFs in
more threads at the same time, then prints one JSON line: every job's status and the reads done. A
pdfium crash kills this process (SIGSEGV / SIGABRT), which the test sees as its exit status.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path

from reportlab.pdfgen import canvas

from patchseek.indexer.sources import read_units
from tests.api.server import running_server, wait_for_job
from tests.conftest import make_settings

THREADS = 4
READS = 5  # per reader thread, of a 10-page PDF: enough to crash an unserialised pdfium nearly always


def text_pdf(doc: int, pages: int = 6) -> bytes:
    """A PDF whose pages are full of text (text extraction is where pdfium's state is shared most)."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for page in range(pages):
        for line in range(40):
            pdf.drawString(40, 800 - 18 * line, f"doc {doc} page {page} line {line} lorem ipsum dolor sit")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def main(data: Path) -> None:
    settings = make_settings(data, None, worker_in_process=True, ocr=False, max_heavy_requests=16)
    statuses: list[str] = []
    reads: list[int] = []
    errors: list[str] = []
    with running_server(settings) as client:
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        queued = [
            client.post("/v1/collections/c/documents", files=[("files", (f"q{i}.pdf", text_pdf(i)))]).json()[
                "id"
            ]
            for i in range(THREADS)
        ]

        def upload(i: int) -> None:
            try:
                r = client.post(
                    "/v1/collections/c/documents",
                    params={"wait": "true"},
                    files=[("files", (f"w{i}.pdf", text_pdf(100 + i)))],
                )
                statuses.append(r.json()["status"] if r.status_code == 200 else f"http {r.status_code}")
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                errors.append(repr(exc))

        def read(i: int) -> None:
            try:
                for _ in range(READS):
                    _, units = read_units(text_pdf(200 + i, pages=10))
                    reads.append(sum(1 for _ in units))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(THREADS)]
        threads += [threading.Thread(target=read, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses += [wait_for_job(client, job_id, timeout=240)["status"] for job_id in queued]
        n_ready = len(client.get("/v1/collections/c/documents", params={"status": "ready"}).json())
    print(json.dumps({"statuses": statuses, "reads": reads, "errors": errors, "ready": n_ready}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
