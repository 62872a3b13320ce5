"""Schemathesis fuzzes every operation of the OpenAPI schema over real HTTP: no request may cause a
server error (5xx), whatever the body, path or query."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.api.server import running_server
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def api_url(tmp_path_factory, samples):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with running_server(make_settings(data, None, ocr=False, worker_in_process=True)) as client:
        # Something to find: a collection with a document, so ids and names sometimes hit real rows.
        client.post("/v1/collections", json={"name": "docs"})
        client.post(
            "/v1/collections/docs/documents",
            params={"wait": "true"},
            files=[("files", ("report.pdf", samples.pdf.read_bytes()))],
        )
        yield str(client.base_url)


def test_no_server_errors(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=[not_a_server_error])

        check()
