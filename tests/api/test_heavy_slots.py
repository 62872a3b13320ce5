"""``PATCHSEEK_MAX_HEAVY_REQUESTS``: image queries and ``?wait=true`` uploads wait for a slot, and get a
503 ``server_busy`` (with nothing stored) when none frees up in ``PATCHSEEK_HEAVY_WAIT_SECONDS``."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from patchseek.api.app import create_app
from patchseek.samples import make_pdf, make_receipt_png
from tests.conftest import make_settings


def test_heavy_requests_wait_for_a_slot_then_get_503(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", None, ocr=False, max_heavy_requests=1, heavy_wait_seconds=0.5)
    image = {"image_base64": base64.b64encode(make_receipt_png()).decode()}
    pdf = [("files", ("report.pdf", make_pdf()))]
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        with ctx.heavy_slot():  # the one slot is busy (another render or encode)
            start = time.perf_counter()
            r = client.post("/v1/collections/c/search", json=image)
            assert r.status_code == 503 and r.json()["code"] == "server_busy"
            assert time.perf_counter() - start >= 0.5
            r = client.post("/v1/collections/c/documents", params={"wait": "true"}, files=pdf)
            assert r.status_code == 503 and r.json()["code"] == "server_busy"
            assert client.get("/v1/collections/c/documents").json() == []  # nothing stored
            # Text queries are not heavy: they do not wait.
            assert client.post("/v1/collections/c/search", json={"query": "glacier"}).status_code == 200

        # A slot that frees up within the wait is taken.
        held = threading.Event()

        def hold_briefly() -> None:
            with ctx.heavy_slot():
                held.set()
                time.sleep(0.2)

        thread = threading.Thread(target=hold_briefly)
        thread.start()
        held.wait()
        assert (
            client.post("/v1/collections/c/documents", params={"wait": "true"}, files=pdf).status_code == 200
        )
        thread.join()
        assert client.post("/v1/collections/c/search", json=image).status_code == 200
