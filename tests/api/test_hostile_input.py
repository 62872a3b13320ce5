"""Client input never yields a 5xx: control characters in names and text, integers past 64 bits.

Runs against SQLite and PostgreSQL (PostgreSQL refuses NUL in text columns).
"""

from __future__ import annotations

import pytest

from tests.api.server import running_server
from tests.conftest import make_settings

HUGE = "9223372036854775808"  # 2**63: past SQLite's and PostgreSQL's BIGINT


def _multipart(*files: tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body with the file names as raw bytes (httpx would percent-encode control characters,
    a hand-written client or a browser on another OS need not)."""
    boundary = "patchseek-test-boundary"
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n%s\r\n"
        % (boundary.encode(), name.encode("utf-8"), data)
        for name, data in files
    ]
    body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture
def client(tmp_path, database_url):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", database_url, ocr=False, worker_in_process=True)
    with running_server(settings) as client:
        assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
        yield client


class TestControlCharacters:
    def test_nul_in_a_file_name_is_stripped_and_the_batch_ingests(self, client, samples) -> None:  # type: ignore[no-untyped-def]
        body, headers = _multipart(
            ("rec\x00eipt\x07.png", samples.receipt.read_bytes()), ("report.pdf", samples.pdf.read_bytes())
        )
        r = client.post(
            "/v1/collections/docs/documents", params={"wait": "true"}, content=body, headers=headers
        )
        assert r.status_code == 200, r.text
        assert sorted((d["filename"], d["status"]) for d in r.json()["documents"]) == [
            ("receipt.png", "ready"),
            ("report.pdf", "ready"),
        ]
        listed = client.get("/v1/collections/docs/documents").json()
        assert sorted(d["filename"] for d in listed) == ["receipt.png", "report.pdf"]
        # The same bytes again under a hostile name: reported as a duplicate, not a 500.
        body, headers = _multipart(("\x00\x1b[31m.png", samples.receipt.read_bytes()))
        r = client.post(
            "/v1/collections/docs/documents", params={"wait": "true"}, content=body, headers=headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["documents"][0]["status"] == "duplicate"

    @pytest.mark.parametrize("text", ["a\x00b", "\x1b[2J", "bell\x07"])
    def test_control_characters_in_a_description_are_refused(self, client, text: str) -> None:  # type: ignore[no-untyped-def]
        r = client.post("/v1/collections", json={"name": "other", "description": text})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
        r = client.patch("/v1/collections/docs", json={"description": text})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text
        assert client.get("/v1/collections/docs").json()["description"] == ""

    def test_tabs_and_newlines_in_a_description_are_kept(self, client) -> None:  # type: ignore[no-untyped-def]
        r = client.patch("/v1/collections/docs", json={"description": "line one\n\tline two"})
        assert r.status_code == 200 and r.json()["description"] == "line one\n\tline two"

    def test_nul_in_a_collection_name_in_the_path_is_refused(self, client) -> None:  # type: ignore[no-untyped-def]
        for r in (
            client.get("/v1/collections/a%00b"),
            client.get("/v1/collections/a%00b/documents"),
            client.post("/v1/collections/a%00b/search", json={"query": "x"}),
        ):
            assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text

    def test_nul_in_a_rebuild_encoder_is_refused(self, client) -> None:  # type: ignore[no-untyped-def]
        r = client.post("/v1/collections/docs/rebuild", json={"encoder": "lexi\x00cal"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text


class TestIntegerBounds:
    @pytest.mark.parametrize("param", ["offset", "limit"])
    @pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "2147483648"])
    def test_out_of_range_paging_is_a_422(self, client, param: str, value: str) -> None:  # type: ignore[no-untyped-def]
        r = client.get("/v1/collections/docs/documents", params={param: value})
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", r.text

    def test_paging_limits_are_documented(self, client) -> None:  # type: ignore[no-untyped-def]
        params = client.get("/openapi.json").json()["paths"]["/v1/collections/{name}/documents"]["get"][
            "parameters"
        ]
        schemas = {p["name"]: p["schema"] for p in params}
        assert schemas["offset"]["maximum"] == 2_147_483_647 and schemas["offset"]["minimum"] == 0
        assert schemas["limit"]["maximum"] == 1000 and schemas["limit"]["minimum"] == 1

    def test_the_largest_offset_answers_an_empty_page(self, client) -> None:  # type: ignore[no-untyped-def]
        r = client.get("/v1/collections/docs/documents", params={"offset": 2_147_483_647})
        assert r.status_code == 200 and r.json() == []

    def test_metadata_numbers_past_float_range_are_refused(self, client, samples) -> None:  # type: ignore[no-untyped-def]
        for text in ('{"n": 1e400}', '{"n": NaN}', '{"n": -Infinity}'):
            r = client.post(
                "/v1/collections/docs/documents",
                data={"metadata": text},
                files=[("files", ("receipt.png", samples.receipt.read_bytes(), "image/png"))],
            )
            assert r.status_code == 422 and r.json()["code"] == "invalid_input", (text, r.text)
