"""The HTTP API over a real server: collections, uploads, jobs, search, unit images, errors.

Runs against SQLite and PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.api.server import running_server, wait_for_job
from tests.conftest import make_settings


@pytest.fixture
def client(tmp_path, database_url):  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "data", database_url, worker_in_process=True, max_upload_bytes=2_000_000
    )
    with running_server(settings) as client:
        yield client


def _files(*paths):  # type: ignore[no-untyped-def]
    return [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]


def test_round_trip(client, samples) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/v1/collections", json={"name": "docs"})
    assert r.status_code == 201, r.text
    assert r.json()["encoder"] == "lexical"

    truncated = samples.pdf.read_bytes()[:700]
    r = client.post(
        "/v1/collections/docs/documents",
        files=[
            *_files(samples.pdf, samples.receipt, samples.video),
            ("files", ("broken.pdf", truncated, "application/pdf")),
            ("files", ("notes.txt", b"just text", "text/plain")),
        ],
    )
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"])
    by_name = {d["filename"]: d for d in job["documents"]}
    assert job["status"] == "partial"
    assert by_name["report.pdf"]["status"] == "ready" and by_name["report.pdf"]["n_units"] == 3
    assert by_name["receipt.png"]["status"] == "ready"
    assert by_name["lecture.mp4"]["status"] == "ready" and by_name["lecture.mp4"]["n_units"] == 4
    assert by_name["broken.pdf"]["code"] == "unreadable_document"
    assert by_name["notes.txt"]["code"] == "unsupported_media"

    # Text query: the right page, the right image, the right time span.
    hits = client.post("/v1/collections/docs/search", json={"query": "glacier meltwater"}).json()["hits"]
    assert (hits[0]["document"], hits[0]["page"]) == ("report.pdf", 3)
    hits = client.post("/v1/collections/docs/search", json={"query": "espresso croissant"}).json()["hits"]
    assert hits[0]["document"] == "receipt.png"
    hits = client.post("/v1/collections/docs/search", json={"query": "volcanic lava", "top_k": 2}).json()[
        "hits"
    ]
    assert len(hits) == 2 and all(h["media_type"] == "video" and h["t_start"] >= 3.0 for h in hits)

    # RAG context for a chat app: citations and page images.
    context = client.post(
        "/v1/collections/docs/context", json={"query": "glacier meltwater", "top_k": 1}
    ).json()
    assert context["items"][0]["citation"] == "report.pdf, p. 3"
    assert client.get(context["items"][0]["image_url"]).headers["content-type"] == "image/jpeg"

    # Collections CRUD.
    r = client.patch("/v1/collections/docs", json={"description": "shared drive"})
    assert r.json()["description"] == "shared drive" and r.json()["documents"] == 3

    # Filters.
    r = client.post("/v1/collections/docs/search", json={"query": "glacier", "media_types": ["image"]})
    assert {h["media_type"] for h in r.json()["hits"]} == {"image"}

    # Unit images are JPEGs of the rendered page.
    image = client.get(hits[0]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (640, 360)
    thumb = Image.open(io.BytesIO(client.get(hits[0]["thumbnail_url"]).content))
    assert max(thumb.size) <= 256

    # Image query (the receipt itself) finds the receipt.
    b64 = base64.b64encode(samples.receipt.read_bytes()).decode()
    hits = client.post("/v1/collections/docs/search", json={"image_base64": b64, "top_k": 1}).json()["hits"]
    assert hits[0]["document"] == "receipt.png"

    # Metadata stored with an upload; bad metadata is a 422.
    r = client.post(
        "/v1/collections/docs/documents",
        params={"wait": "true"},
        data={"metadata": '{"team": "design", "year": 2026}'},
        files=_files(samples.whiteboard),
    )
    wb = r.json()["documents"][0]["document_id"]
    assert client.get(f"/v1/collections/docs/documents/{wb}").json()["metadata"] == {
        "team": "design",
        "year": 2026,
    }
    r = client.post("/v1/collections/docs/documents", data={"metadata": "[1]"}, files=_files(samples.receipt))
    assert r.status_code == 422 and r.json()["code"] == "invalid_input"

    # Metadata filters and stage knobs: only the whiteboard carries team=design.
    for where, expect in (
        ({"team": "design"}, [wb]),
        ({"team": "design", "year": 2026}, [wb]),
        ({"year": "2026"}, []),
    ):
        body = {"query": "roadmap", "top_k": 5, "metadata": where, "stage1": "exact", "candidates": 50}
        r = client.post("/v1/collections/docs/search", json=body)
        assert r.status_code == 200, r.text
        assert sorted({h["document_id"] for h in r.json()["hits"]}) == expect
    r = client.post("/v1/collections/docs/search", json={"query": "x", "metadata": {"team": ["a"]}})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"

    # Re-uploading the same bytes is detected.
    r = client.post("/v1/collections/docs/documents", params={"wait": "true"}, files=_files(samples.pdf))
    assert r.status_code == 200
    assert r.json()["documents"][0]["status"] == "duplicate"

    # Delete a document: gone from search at once.
    pdf_id = by_name["report.pdf"]["document_id"]
    assert client.get(f"/v1/collections/docs/documents/{pdf_id}").json()["units"][2]["page"] == 3
    assert client.delete(f"/v1/collections/docs/documents/{pdf_id}").status_code == 204
    hits = client.post("/v1/collections/docs/search", json={"query": "glacier meltwater"}).json()["hits"]
    assert all(h["document"] != "report.pdf" for h in hits)
    docs = client.get("/v1/collections/docs/documents", params={"status": "ready"}).json()
    assert sorted(d["filename"] for d in docs) == ["lecture.mp4", "receipt.png", "whiteboard.jpg"]
    assert client.get("/v1/collections/docs").json()["documents"] == 3


def test_errors_are_json_with_a_code(client, samples) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    cases = [
        (client.post("/v1/collections", json={"name": "c"}), 409, "conflict"),
        (client.post("/v1/collections", json={"name": "../etc"}), 422, "invalid_request"),
        (client.get("/v1/collections/nope"), 404, "not_found"),
        (client.post("/v1/collections/nope/search", json={"query": "x"}), 404, "not_found"),
        (
            client.post("/v1/collections/c/search", json={"query": "x", "top_k": 10**6}),
            422,
            "invalid_request",
        ),
        (client.post("/v1/collections/c/search", json={}), 422, "invalid_input"),
        (
            client.post(
                "/v1/collections/c/search", content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
            "invalid_request",
        ),
        (client.post("/v1/collections/c/search", json={"image_base64": "***"}), 422, "invalid_input"),
        (
            client.post(
                "/v1/collections/c/documents", files=[("files", ("big.pdf", b"%PDF-" + b"0" * 2_100_000))]
            ),
            413,
            "payload_too_large",
        ),
        (client.get("/v1/jobs/999"), 404, "not_found"),
        (client.get("/v1/units/999/image"), 404, "not_found"),
        (client.delete("/v1/collections/c/documents/999"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.json()["code"] == code, response.text
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert "/v1/collections/{name}/search" in client.get("/openapi.json").json()["paths"]


def test_an_oversized_file_fails_alone_and_the_batch_is_ingested(client, samples) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    r = client.post(
        "/v1/collections/c/documents",
        params={"wait": "true"},
        files=[
            ("files", ("big.pdf", b"%PDF-" + b"0" * 2_100_000)),
            ("files", ("report.pdf", samples.pdf.read_bytes())),
        ],
    )
    assert r.status_code == 200, r.text
    by_name = {d["filename"]: d for d in r.json()["documents"]}
    assert by_name["big.pdf"]["status"] == "failed" and by_name["big.pdf"]["code"] == "file_too_large"
    assert by_name["report.pdf"]["status"] == "ready"
    hits = client.post("/v1/collections/c/search", json={"query": "glacier meltwater"}).json()["hits"]
    assert hits and hits[0]["document"] == "report.pdf"


def test_api_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", None, api_keys=["s3cret"])
    with running_server(settings) as client:
        r = client.get("/v1/collections")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert client.get("/v1/collections", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/collections", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_scoped_keys_are_hashed_at_rest(tmp_path, samples) -> None:  # type: ignore[no-untyped-def]
    from patchseek.api.db.models import ApiKey
    from patchseek.api.services import ServiceContext
    from patchseek.api.services.keys import KeyService

    settings = make_settings(tmp_path / "data", None, ocr=False)
    ctx = ServiceContext.from_settings(settings)
    keys = KeyService(ctx)
    _, admin = keys.create("ops")
    row, scoped = keys.create("app", ["a"])
    with ctx.db.session() as session:
        stored = {k.key_hash for k in session.query(ApiKey)}
    assert admin not in str(stored) and scoped not in str(stored) and len(stored) == 2
    ctx.close()
    with running_server(settings) as client:
        assert client.get("/v1/collections").status_code == 401  # keys exist in the database
        for name in ("a", "b"):
            assert (
                client.post("/v1/collections", json={"name": name}, headers={"X-API-Key": admin}).status_code
                == 201
            )
        h = {"X-API-Key": scoped}
        assert client.post("/v1/collections", json={"name": "c"}, headers=h).json()["code"] == "forbidden"
        assert [c["name"] for c in client.get("/v1/collections", headers=h).json()] == ["a"]
        r = client.post(
            "/v1/collections/a/documents", params={"wait": "true"}, headers=h, files=_files(samples.pdf)
        )
        assert r.status_code == 200
        unit_id = client.post("/v1/collections/a/search", json={"query": "glacier"}, headers=h).json()[
            "hits"
        ][0]["unit_id"]
        assert client.get(f"/v1/units/{unit_id}/image", headers=h).status_code == 200
        r = client.post("/v1/collections/b/search", json={"query": "glacier"}, headers=h)
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        # The same unit through a key that may not see its collection.
        keys_ctx = ServiceContext.from_settings(settings)
        _, other = KeyService(keys_ctx).create("other", ["b"])
        KeyService(keys_ctx).revoke(row.id)
        keys_ctx.close()
        assert client.get(f"/v1/units/{unit_id}/image", headers={"X-API-Key": other}).status_code == 404
        assert client.get("/v1/collections", headers=h).status_code == 401  # revoked


def test_rag_context_heatmap_rebuild_metrics_page(tmp_path, samples) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", None, worker_in_process=True, ocr=False)
    with running_server(settings) as client:
        client.post("/v1/collections", json={"name": "docs"})
        client.post("/v1/collections/docs/documents", params={"wait": "true"}, files=_files(samples.pdf))

        ctx = client.post(
            "/v1/collections/docs/context", json={"query": "glacier meltwater", "top_k": 2}
        ).json()
        first = ctx["items"][0]
        assert first["citation"] == "report.pdf, p. 3" and "meltwater" in first["text"]
        assert first["image_url"].startswith("http://127.0.0.1:") and first["image_url"].endswith("/image")
        content = ctx["message"]["content"]
        assert ctx["message"]["role"] == "user" and content[0]["type"] == "text"
        assert "[1] report.pdf, p. 3" in content[0]["text"]
        assert [p["type"] for p in content[1:]] == ["image_url", "image_url"]
        inline = client.post(
            "/v1/collections/docs/context", json={"query": "glacier", "top_k": 1, "images": "base64"}
        )
        data_url = inline.json()["items"][0]["image_url"]
        assert data_url.startswith("data:image/jpeg;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).format == "JPEG"

        # Heat map: the query's words light up where they are on the page (the title is at the top).
        heat = Image.open(
            io.BytesIO(
                client.get(
                    f"/v1/units/{first['unit_id']}/heatmap", params={"query": "glacier retreat"}
                ).content
            )
        ).convert("RGB")
        plain = Image.open(io.BytesIO(client.get(f"/v1/units/{first['unit_id']}/image").content)).convert(
            "RGB"
        )
        import numpy as np

        diff = np.abs(np.asarray(heat, dtype=np.int16) - np.asarray(plain, dtype=np.int16)).sum(axis=2)
        rows = diff.mean(axis=1)
        assert rows[: len(rows) // 5].mean() > 5 * rows[len(rows) // 2 :].mean()
        assert client.get(f"/v1/units/{first['unit_id']}/heatmap").status_code == 422

        # Rebuild through the API: a job; the new version answers the same.
        job = client.post("/v1/collections/docs/rebuild", json={}).json()
        assert wait_for_job(client, job["id"])["status"] == "succeeded"
        hits = client.post("/v1/collections/docs/search", json={"query": "glacier meltwater"}).json()["hits"]
        assert hits[0]["page"] == 3

        text = client.get("/metrics").text
        assert 'patchseek_documents_ingested_total{status="ready"}' in text
        assert 'patchseek_index_units{collection="docs"} 3.0' in text
        assert "patchseek_request_seconds_bucket" in text and "patchseek_jobs_queued 0.0" in text

        page = client.get("/")
        assert page.status_code == 200 and "patchseek" in page.text and "/app.js" in page.text
        assert "/v1/collections" in client.get("/app.js").text
