"""Key scopes over HTTP: what a key scoped to one collection may do, the admin-only actions, the encoder
allow-list (``PATCHSEEK_ENCODERS``) and 404s that do not tell another collection's ids from missing ones."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from patchseek.api.services import ServiceContext
from patchseek.api.services.keys import KeyService
from tests.api.server import running_server
from tests.conftest import make_settings

ADMIN = {"X-API-Key": "admin-key"}


def _wait(client: httpx.Client, job_id: int, headers: dict[str, str]) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 120
    while (job := client.get(f"/v1/jobs/{job_id}", headers=headers).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job  # type: ignore[no-any-return]


def _same_404(missing: httpx.Response, hidden: httpx.Response, missing_id: int, hidden_id: int) -> None:
    """Both 404 with the same body but for the id itself."""
    assert missing.status_code == hidden.status_code == 404, (missing.text, hidden.text)
    assert missing.json()["code"] == hidden.json()["code"] == "not_found"
    assert missing.json()["detail"].replace(str(missing_id), "ID") == hidden.json()["detail"].replace(
        str(hidden_id), "ID"
    )


def test_scoped_keys_admin_actions_encoder_allow_list_and_404s(tmp_path: Path, samples) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "data",
        None,
        ocr=False,
        worker_in_process=True,
        api_keys=["admin-key"],
        encoders=["/nonexistent/allowed-model"],  # allowed by the operator, but not loadable
    )
    ctx = ServiceContext.from_settings(settings)
    _, scoped_key = KeyService(ctx).create("app", ["a"])
    ctx.close()
    scoped = {"X-API-Key": scoped_key}
    pdf = [("files", ("report.pdf", samples.pdf.read_bytes()))]
    with running_server(settings) as client:
        for name in ("a", "b"):
            assert client.post("/v1/collections", json={"name": name}, headers=ADMIN).status_code == 201
        b_upload = client.post("/v1/collections/b/documents?wait=true", files=pdf, headers=ADMIN).json()
        b_doc = b_upload["documents"][0]["document_id"]
        b_unit = client.get(f"/v1/collections/b/documents/{b_doc}", headers=ADMIN).json()["units"][0]["id"]

        # A scoped key searches, uploads and reads its collection, and rebuilds it with its encoder.
        r = client.post("/v1/collections/a/documents?wait=true", files=pdf, headers=scoped)
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        a_job = r.json()["id"]
        hits = client.post("/v1/collections/a/search", json={"query": "glacier"}, headers=scoped).json()[
            "hits"
        ]
        assert hits and client.get(hits[0]["image_url"], headers=scoped).status_code == 200
        assert client.get("/v1/collections/a/documents", headers=scoped).status_code == 200
        r = client.patch("/v1/collections/a", json={"description": "mine"}, headers=scoped)
        assert r.status_code == 200
        r = client.post("/v1/collections/a/rebuild", json={"compression": {}}, headers=scoped)
        assert r.status_code == 202 and _wait(client, r.json()["id"], scoped)["status"] == "succeeded"
        r = client.post("/v1/collections/a/rebuild", json={"encoder": "lexical"}, headers=scoped)
        assert r.status_code == 202  # its current encoder: not a change
        _wait(client, r.json()["id"], scoped)

        # ...but switching the encoder and deleting the collection need an admin key.
        for encoder in ("/etc", "/nonexistent/allowed-model", "some-org/some-model"):
            r = client.post("/v1/collections/a/rebuild", json={"encoder": encoder}, headers=scoped)
            assert r.status_code == 403 and r.json()["code"] == "forbidden", r.text
        r = client.delete("/v1/collections/a", headers=scoped)
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert client.get("/v1/collections/a", headers=scoped).status_code == 200  # still there

        # Encoders off the allow-list are refused by name: the same answer for an existing directory,
        # a missing one and a Hub id (nothing is looked up or downloaded).
        refused = []
        for encoder in ("/etc", "/nonexistent/dir", "some-org/some-model"):
            r = client.post("/v1/collections/a/rebuild", json={"encoder": encoder}, headers=ADMIN)
            assert r.status_code == 422 and r.json()["code"] == "encoder_not_allowed", r.text
            refused.append(r.json()["detail"].replace(encoder, "X"))
            r = client.post("/v1/collections", json={"name": "n", "encoder": encoder}, headers=ADMIN)
            assert r.status_code == 422 and r.json()["code"] == "encoder_not_allowed", r.text
        assert len(set(refused)) == 1
        # An allowed encoder that cannot be loaded does not tell the client why (paths stay private).
        r = client.post(
            "/v1/collections", json={"name": "n", "encoder": "/nonexistent/allowed-model"}, headers=ADMIN
        )
        assert r.status_code == 422 and "does not exist" not in r.text and "checkpoint" not in r.text

        # Ids of another collection answer exactly like ids that do not exist.
        missing = 999_999
        _same_404(
            client.get(f"/v1/units/{missing}/image", headers=scoped),
            client.get(f"/v1/units/{b_unit}/image", headers=scoped),
            missing,
            b_unit,
        )
        _same_404(
            client.get(f"/v1/units/{missing}/heatmap?query=x", headers=scoped),
            client.get(f"/v1/units/{b_unit}/heatmap?query=x", headers=scoped),
            missing,
            b_unit,
        )
        _same_404(
            client.get(f"/v1/jobs/{missing}", headers=scoped),
            client.get(f"/v1/jobs/{b_upload['id']}", headers=scoped),
            missing,
            b_upload["id"],
        )
        _same_404(
            client.post(f"/v1/jobs/{missing}/cancel", headers=scoped),
            client.post(f"/v1/jobs/{b_upload['id']}/cancel", headers=scoped),
            missing,
            b_upload["id"],
        )
        _same_404(
            client.get(f"/v1/collections/a/documents/{missing}", headers=scoped),
            client.get(f"/v1/collections/a/documents/{b_doc}", headers=scoped),
            missing,
            b_doc,
        )
        assert client.get(f"/v1/jobs/{a_job}", headers=scoped).status_code == 200

        # The admin key may delete.
        assert client.delete("/v1/collections/b", headers=ADMIN).status_code == 204
