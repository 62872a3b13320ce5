"""The OpenAPI document is the truth: schemathesis fuzzes every operation over real HTTP with every check
on (no 5xx, documented status codes, bodies and headers that match the schema, schema-violating requests
refused, schema-valid ones accepted, auth enforced), on SQLite and on PostgreSQL.

The CLI runs the ``examples``, ``coverage`` (boundary values, missing and wrong-typed fields, huge
integers, undeclared methods) and ``fuzzing`` phases against a server with an API key configured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.server import running_server
from tests.conftest import make_settings

KEY = "fuzz-key"
# Answers the schema cannot predict from the request's shape: whether an encoder named in a new
# collection or a rebuild is on the operator's allow-list (PATCHSEEK_ENCODERS, a runtime setting) and
# can be loaded, whether image bytes decode as an image, and whether an evaluation's queries and qrels
# text parses and names documents of the collection. They are documented (422, 415) and only these
# four operations may give them to schema-valid data.
CONFIG = """
[[operations]]
include-name = "POST /v1/collections"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-name = "POST /v1/collections/{name}/rebuild"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-name = "POST /v1/collections/{name}/evaluations"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
include-name = "POST /v1/collections/{name}/search"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "415", "422"]
"""


@pytest.fixture
def api_url(tmp_path, database_url, samples):  # type: ignore[no-untyped-def]
    settings = make_settings(
        tmp_path / "data", database_url, ocr=False, worker_in_process=True, api_keys=[KEY]
    )
    with running_server(settings) as client:
        client.headers["X-API-Key"] = KEY
        # Something to find: a collection with a document, so ids and names sometimes hit real rows.
        assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
        r = client.post(
            "/v1/collections/docs/documents",
            params={"wait": "true"},
            files=[("files", ("report.pdf", samples.pdf.read_bytes()))],
        )
        assert r.status_code == 200, r.text
        yield str(client.base_url)


def test_api_matches_its_openapi_document(api_url: str, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{api_url}/openapi.json",
        "--header",
        f"X-API-Key: {KEY}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "12",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = run.stdout + run.stderr
    assert "Tested: 24" in report, report[-5000:]
    assert run.returncode == 0, report[-20000:]
