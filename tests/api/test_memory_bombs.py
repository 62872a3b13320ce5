"""Tiny files that declare gigantic pixel counts, sent to a real server process: its peak memory must
stay bounded, and the answer is a page rendered smaller or a clear ``image_too_large``.

Peak memory is the server's ``VmHWM`` after the request minus its ``VmRSS`` before it, with the peak
reset in between (``/proc/<pid>/clear_refs``), so start-up and earlier requests do not count.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from patchseek.samples import make_pdf, make_receipt_png
from tests.api.subprocess_server import server_process
from tests.bombs import pdf_bomb, png_bomb

MiB = 1024 * 1024
MAX_GROWTH = 600 * MiB  # the bound the server must stay under; unbounded, these took 4-5 GiB
PAGE_BUDGET = 4096 * 4096  # PATCHSEEK_MAX_PAGE_PIXELS default

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], client: httpx.Client) -> None:
        self.proc, self.client = proc, client

    def peak_growth(self, request):  # type: ignore[no-untyped-def]
        """Run ``request()``; return its result and the server's peak memory growth in bytes."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _kib(self.proc.pid, "VmRSS")
        result = request()
        return result, (_kib(self.proc.pid, "VmHWM") - before) * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("bombs") / "data"
    with server_process(data, PATCHSEEK_PDF_DPI="100") as (proc, client):
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        # Warm up: a normal PDF and an image query, so imports and caches are in place before measuring.
        r = client.post("/v1/collections/c/documents?wait=true", files=[("files", ("ok.pdf", make_pdf()))])
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        image = base64.b64encode(make_receipt_png()).decode()
        assert client.post("/v1/collections/c/search", json={"image_base64": image}).status_code == 200
        yield Server(proc, client)


def test_pdf_with_an_enormous_page_is_rendered_within_the_pixel_budget(server: Server) -> None:
    data = pdf_bomb()
    assert len(data) < 2000
    r, growth = server.peak_growth(
        lambda: server.client.post(
            "/v1/collections/c/documents?wait=true", files=[("files", ("huge-page.pdf", data))]
        )
    )
    print(f"PDF bomb ({len(data)} B, 14400 x 14400 pt): peak RSS growth {growth / MiB:.0f} MiB")
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    document_id = r.json()["documents"][0]["document_id"]
    (unit,) = server.client.get(f"/v1/collections/c/documents/{document_id}").json()["units"]
    assert unit["width"] * unit["height"] <= PAGE_BUDGET  # 20000 x 20000 at 100 dpi, scaled down
    assert unit["width"] > 4000
    assert growth < MAX_GROWTH


def test_png_bomb_upload_fails_with_image_too_large(server: Server) -> None:
    data = png_bomb()  # 14000 x 14000 = 196 MP
    r, growth = server.peak_growth(
        lambda: server.client.post(
            "/v1/collections/c/documents?wait=true", files=[("files", ("bomb.png", data))]
        )
    )
    print(f"PNG bomb upload ({len(data)} B, 196 MP): peak RSS growth {growth / MiB:.0f} MiB")
    assert r.status_code == 200, r.text
    (result,) = r.json()["documents"]
    assert result["status"] == "failed" and result["code"] == "image_too_large"
    assert growth < MAX_GROWTH


def test_png_bomb_as_an_image_query_is_a_fast_413(server: Server) -> None:
    body = {"image_base64": base64.b64encode(png_bomb()).decode()}
    start = time.perf_counter()
    r, growth = server.peak_growth(lambda: server.client.post("/v1/collections/c/search", json=body))
    took = time.perf_counter() - start
    print(f"PNG bomb as image query: {r.status_code} in {took:.2f} s, peak RSS growth {growth / MiB:.0f} MiB")
    assert r.status_code == 413 and r.json()["code"] == "image_too_large", r.text
    assert took < 5
    assert growth < MAX_GROWTH
