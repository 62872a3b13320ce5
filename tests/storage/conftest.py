"""Storage backends for the contract tests: a local folder, S3 through s3fs against moto's server mode
(a real S3-compatible HTTP server on a free port, started here and stopped at the end of the session),
and fsspec's in-process memory filesystem."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from patchseek.storage import Storage, open_storage

KEY, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )

    def new_bucket(self) -> str:
        name = f"patchseek-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    @property
    def options(self) -> dict[str, Any]:
        return {
            "key": KEY,
            "secret": SECRET,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": REGION},
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server (``ThreadedMotoServer``) on 127.0.0.1, a free port."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


BACKENDS = ["local", "s3", "memory"]


@dataclass
class Backend:
    """One store under test: ``kind``, its ``url`` and options; ``open`` gives a fresh client of the
    same store (another "node": its own, empty cache folder)."""

    kind: str
    url: str
    options: dict[str, Any]
    tmp_path: Path

    def open(self, **kw: Any) -> Storage:
        cache = self.tmp_path / f"cache-{uuid.uuid4().hex[:6]}"
        return open_storage(self.url, self.options, cache_dir=cache, **kw)


def make_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    if kind == "local":
        return Backend(kind, str(tmp_path / "store"), {}, tmp_path)
    if kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        return Backend(kind, f"s3://{server.new_bucket()}/data", server.options, tmp_path)
    pytest.importorskip("fsspec")
    return Backend(kind, f"memory://patchseek-{uuid.uuid4().hex}", {}, tmp_path)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The same contract, every backend."""
    b = make_backend(request.param, tmp_path, request)
    yield b
    if b.kind == "memory":  # fsspec's memory filesystem is process-wide: leave nothing behind
        b.open().delete_prefix("")


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.open()
