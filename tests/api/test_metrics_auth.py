"""``/metrics`` names every collection: with API keys on it needs an unscoped key, unless the operator
turns that off (``PATCHSEEK_METRICS_REQUIRE_KEY=false``)."""

from __future__ import annotations

import pytest

from patchseek.api.services import ServiceContext
from patchseek.api.services.keys import KeyService
from patchseek.config import Settings
from tests.api.server import running_server
from tests.conftest import make_settings


def test_with_keys_metrics_need_a_valid_unscoped_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", None, api_keys=["s3cret"])
    ctx = ServiceContext.from_settings(settings)
    _, scoped = KeyService(ctx).create("app", ["docs"])
    ctx.close()
    with running_server(settings) as client:
        assert (
            client.post("/v1/collections", json={"name": "docs"}, headers={"X-API-Key": "s3cret"}).status_code
            == 201
        )
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = client.get("/metrics", headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
            assert "docs" not in r.text
        r = client.get("/metrics", headers={"X-API-Key": scoped})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        r = client.get("/metrics", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and 'patchseek_index_units{collection="docs"}' in r.text
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_the_operator_can_leave_metrics_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", None, api_keys=["s3cret"], metrics_require_key=False)
    with running_server(settings) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/collections").status_code == 401


def test_without_keys_metrics_are_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_server(make_settings(tmp_path / "data", None)) as client:
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("true", True), (None, None)])
def test_the_setting_reads_from_the_environment(monkeypatch, value, expected) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PATCHSEEK_METRICS_REQUIRE_KEY", raising=False)
    if value is not None:
        monkeypatch.setenv("PATCHSEEK_METRICS_REQUIRE_KEY", value)
    assert Settings(_env_file=None).metrics_require_key is expected  # type: ignore[call-arg]


def test_the_metrics_operation_documents_its_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_server(make_settings(tmp_path / "data", None)) as client:
        operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert operation["security"] == [{"APIKeyHeader": []}]
        assert {"401", "403"} <= set(operation["responses"])
