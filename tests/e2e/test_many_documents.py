"""Many one-page documents under a low open-file limit, through the CLI and the HTTP server.

0.1 kept files per document and held a memory map per document while it searched: past a few thousand
documents every search answered 500 "Too many open files". The engine holds one map per segment and
merges segments, so the serving process's descriptors stay bounded whatever the number of documents.
The fast case forces one segment per document (``--files-per-job 1``) under ``ulimit -n 256``; the slow
one ingests 20,000 documents under ``ulimit -n 1024``.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from reportlab.pdfgen import canvas

REPO = Path(__file__).resolve().parents[2]


def _write_pdfs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        buf = io.BytesIO()
        pdf = canvas.Canvas(buf, pagesize=(200, 120), invariant=1)
        pdf.drawString(10, 80, f"record{i} alpha{i % 97} beta{i % 89}")
        pdf.showPage()
        pdf.save()
        (folder / f"r{i:05d}.pdf").write_bytes(buf.getvalue())


def _env(data: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATCHSEEK_DATA_DIR": str(data), "PATCHSEEK_OCR": "false"}
    env.pop("PATCHSEEK_DATABASE_URL", None)
    env["PATCHSEEK_PDF_DPI"] = "36"
    return env


def _limited(cmd: list[str], limit: int) -> list[str]:
    return ["bash", "-c", f'ulimit -n {limit} && exec "$@"', "limited", *cmd]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _run(n_docs: int, files_per_job: int, limit: int, tmp_path: Path) -> None:
    data, folder = tmp_path / "data", tmp_path / "pdfs"
    _write_pdfs(folder, n_docs)
    cli = [sys.executable, "-m", "patchseek.cli"]
    done = subprocess.run(
        _limited([*cli, "ingest", str(folder), "-c", "many", "--files-per-job", str(files_per_job)], limit),
        env=_env(data),
        capture_output=True,
        text=True,
        timeout=7200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{n_docs} ingested" in done.stderr
    target = n_docs - 3
    found = subprocess.run(
        _limited([*cli, "search", f"record{target}", "-c", "many", "--json", "--top-k", "1"], limit),
        env=_env(data),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    assert f"r{target:05d}.pdf" in found.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(_limited([*cli, "serve", "--port", str(port)], limit), env=_env(data))
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.3)
        for i in (target, 7, n_docs // 2):
            r = client.post("/v1/collections/many/search", json={"query": f"record{i}", "top_k": 1})
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["document"] == f"r{i:05d}.pdf"
        doc_id = client.post("/v1/collections/many/search", json={"query": "record7", "top_k": 1}).json()[
            "hits"
        ][0]["document_id"]
        assert client.delete(f"/v1/collections/many/documents/{doc_id}").status_code == 204
        r = client.post("/v1/collections/many/search", json={"query": "record7", "top_k": 3})
        assert r.status_code == 200 and doc_id not in {h["document_id"] for h in r.json()["hits"]}
        info = client.get("/v1/collections/many").json()["index"]
        assert info["units"] == n_docs - 1 and info["segments"] <= 40  # merged; the delete is a tombstone
        assert _fds(server.pid) < 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_hundreds_of_segments_under_ulimit_256(tmp_path: Path) -> None:
    _run(400, 1, 256, tmp_path)


@pytest.mark.slow
def test_twenty_thousand_documents_under_ulimit_1024(tmp_path: Path) -> None:
    _run(20_000, 16, 1024, tmp_path)
