"""The whole service with colpali-engine models: ``PATCHSEEK_ENCODER=<local dir>`` through the CLI and
the HTTP API, for every supported family (tiny random models built from config, no download)."""

from __future__ import annotations

import json

import pytest

from tests.api.server import running_server, wait_for_job
from tests.conftest import make_settings
from tests.e2e.test_cli import run_cli
from tests.indexer.tiny_models import build_tiny_model

FAMILIES = [
    "colqwen2",
    pytest.param("colqwen2_5", marks=pytest.mark.slow),
    pytest.param("colpali", marks=pytest.mark.slow),
    pytest.param("colidefics3", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=FAMILIES)
def model_dir(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    return build_tiny_model(request.param, tmp_path_factory.mktemp(request.param) / "model")


def test_cli_with_a_local_model(tmp_path, model_dir, samples, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATCHSEEK_ENCODER", str(model_dir))
    data = tmp_path / "data"
    out = run_cli(data, "ingest", str(samples.pdf), str(samples.receipt), "-c", "vlm")
    assert "2 ingested (4 units)" in out.stderr
    hits = [
        json.loads(x) for x in run_cli(data, "search", "glacier", "-c", "vlm", "--json").stdout.splitlines()
    ]
    assert sorted((h["document"], h["page"]) for h in hits) == [
        ("receipt.png", None),
        ("report.pdf", 1),
        ("report.pdf", 2),
        ("report.pdf", 3),
    ]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert len({h["score"] for h in hits}) > 1  # real vectors, not a constant


def test_api_with_a_local_model_and_rebuild_to_lexical(tmp_path, model_dir, samples) -> None:  # type: ignore[no-untyped-def]
    # A client may name only the encoders the operator allows (PATCHSEEK_ENCODERS).
    settings = make_settings(
        tmp_path / "data", None, worker_in_process=True, ocr=False, encoders=[str(model_dir)]
    )
    with running_server(settings) as client:
        r = client.post(
            "/v1/collections",
            json={
                "name": "vlm",
                "encoder": str(model_dir),
                "compression": {"prune": "topp", "prune_ratio": 0.5, "prune_min": 2},
            },
        )
        assert r.status_code == 201, r.text
        job = client.post(
            "/v1/collections/vlm/documents", files=[("files", ("report.pdf", samples.pdf.read_bytes()))]
        )
        assert wait_for_job(client, job.json()["id"])["status"] == "succeeded"
        detail = client.get("/v1/collections/vlm/documents/1").json()
        assert [u["page"] for u in detail["units"]] == [1, 2, 3]
        hits = client.post("/v1/collections/vlm/search", json={"query": "glacier", "top_k": 3}).json()["hits"]
        assert len(hits) == 3
        heat = client.get(f"/v1/units/{hits[0]['unit_id']}/heatmap", params={"query": "glacier"})
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/jpeg"
        # Switching encoder re-encodes every document from its stored original bytes.
        job = client.post(
            "/v1/collections/vlm/rebuild", json={"encoder": "lexical", "compression": {}}
        ).json()
        assert wait_for_job(client, job["id"])["status"] == "succeeded"
        assert client.get("/v1/collections/vlm").json()["encoder"] == "lexical"
        hits = client.post("/v1/collections/vlm/search", json={"query": "glacier retreat"}).json()["hits"]
        assert hits[0]["page"] == 3
