"""``/docs`` and ``/redoc`` load only assets the server itself serves: they work without network."""

from __future__ import annotations

import re

import pytest

from tests.api.server import running_server
from tests.conftest import make_settings

# Every URL an HTML page loads or links: src=, href=, and the JS loaders' url: "..." / spec-url.
_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl\s*:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def client(tmp_path_factory):  # type: ignore[no-untyped-def]
    with running_server(make_settings(tmp_path_factory.mktemp("docs") / "data", None)) as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_only_local_assets(client, page: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = [a or b for a, b in _URL.findall(r.text)]
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    assert "cdn." not in r.text and "fonts.googleapis" not in r.text


def test_the_swagger_bundle_is_javascript(client) -> None:  # type: ignore[no-untyped-def]
    urls = [a or b for a, b in _URL.findall(client.get("/docs").text)]
    bundle = next(u for u in urls if u.endswith("swagger-ui-bundle.js"))
    r = client.get(bundle)
    assert "javascript" in r.headers["content-type"] and len(r.content) > 100_000
