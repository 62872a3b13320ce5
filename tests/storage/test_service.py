"""The service with its storage on S3 (moto's server over HTTP), through the paths a user takes: the
HTTP API and the CLI. One node ingests; a second node (its own data dir, so an empty local cache,
the same S3 bucket and database) answers the same searches and serves the same page images. An
unreachable store is reported by /readyz and by ``patchseek init``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from patchseek.config import Settings
from tests.api.server import running_server
from tests.conftest import make_settings
from tests.storage.conftest import KEY, REGION, SECRET, S3Server

QUERIES = ["glacier meltwater", "sprint backlog", "volcanic lava"]


def _s3_settings(s3: S3Server, bucket: str, data_dir: Path, db: str, **kw: Any) -> Settings:
    return make_settings(
        data_dir,
        db,
        storage_url=f"s3://{bucket}/cluster",
        storage_endpoint_url=s3.endpoint,
        storage_key=KEY,
        storage_secret=SECRET,
        storage_region=REGION,
        storage_poll_seconds=0,
        ocr=False,
        **kw,
    )


def _hits(client: Any, query: str) -> list[tuple[str, int | None, float]]:
    r = client.post("/v1/collections/docs/search", json={"query": query, "top_k": 5})
    assert r.status_code == 200, r.text
    return [(h["document"], h["page"], round(h["score"], 4)) for h in r.json()["hits"]]


def _local_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).parts[0] for p in folder.rglob("*") if p.is_file()}


def test_a_second_node_answers_what_the_first_ingested(tmp_path: Path, s3_server: S3Server, samples) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.new_bucket()
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    node_a = _s3_settings(s3_server, bucket, tmp_path / "node-a", db, worker_in_process=True)
    node_b = _s3_settings(s3_server, bucket, tmp_path / "node-b", db, worker_in_process=False)
    with running_server(node_a) as a:
        assert a.get("/readyz").json() == {"status": "ready"}
        assert a.post("/v1/collections", json={"name": "docs"}).status_code == 201
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in (samples.pdf,)]
        r = a.post("/v1/collections/docs/documents", params={"wait": "true"}, files=files)
        assert r.status_code in (200, 201, 202), r.text
        assert [d["status"] for d in r.json()["documents"]] == ["ready"]
        expected = {q: _hits(a, q) for q in QUERIES}
        assert expected["glacier meltwater"][0][:2] == ("report.pdf", 3)
        unit = a.post("/v1/collections/docs/search", json={"query": "glacier meltwater"}).json()["hits"][0]
        image = a.get(f"/v1/units/{unit['unit_id']}/image")
        assert image.status_code == 200 and image.content[:3] == b"\xff\xd8\xff"  # a JPEG

        # Everything the service stores is in the bucket, under the same layout as a data dir.
        names = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert any(n.startswith("cluster/blobs/") for n in names)
        assert any(n.startswith("cluster/segments/") and n.endswith(".seg") for n in names)
        assert any("/manifests/" in n for n in names)
        assert not {"blobs", "segments"} & _local_files(node_a.data_dir)  # only the cache is local

        with running_server(node_b) as b:  # the second node: empty cache, same bucket and database
            assert not (node_b.data_dir / "cache").exists() or not any(
                (node_b.data_dir / "cache").rglob("*.seg")
            )
            assert {q: _hits(b, q) for q in QUERIES} == expected
            assert b.get(f"/v1/units/{unit['unit_id']}/image").content == image.content
            assert any((node_b.data_dir / "cache").rglob("*.seg"))  # read through its own cache

            # A delete on node B is seen by node A's next search (the manifest is looked up again).
            assert b.delete(f"/v1/collections/docs/documents/{unit['document_id']}").status_code == 204
            assert _hits(a, "glacier meltwater") == [] and _hits(b, "glacier meltwater") == []


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PATCHSEEK_VIDEO_INTERVAL": "1.5", "PATCHSEEK_OCR": "false", **env}
    return subprocess.run(
        [sys.executable, "-m", "patchseek.cli", *args], env=full, capture_output=True, text=True, timeout=600
    )


def _s3_env(s3: S3Server, bucket: str, data_dir: Path, db: str) -> dict[str, str]:
    return {
        "PATCHSEEK_DATA_DIR": str(data_dir),
        "PATCHSEEK_DATABASE_URL": db,
        "PATCHSEEK_STORAGE_URL": f"s3://{bucket}/cli",
        "PATCHSEEK_STORAGE_ENDPOINT_URL": s3.endpoint,
        "PATCHSEEK_STORAGE_KEY": KEY,
        "PATCHSEEK_STORAGE_SECRET": SECRET,
        "PATCHSEEK_STORAGE_REGION": REGION,
    }


def test_cli_ingest_on_one_node_search_on_another(tmp_path: Path, s3_server: S3Server, samples) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.new_bucket()
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    env_a = _s3_env(s3_server, bucket, tmp_path / "a", db)
    env_b = _s3_env(s3_server, bucket, tmp_path / "b", db)
    init = _cli(env_a, "init")
    assert init.returncode == 0, init.stderr
    assert f"storage: s3://{bucket}/cli" in init.stdout + init.stderr
    out = _cli(env_a, "ingest", str(samples.pdf), "--collection", "demo")
    assert out.returncode == 0, out.stderr
    search_b = _cli(env_b, "search", "glacier meltwater", "-c", "demo", "--json")
    assert search_b.returncode == 0, search_b.stderr
    hits = [json.loads(line) for line in search_b.stdout.splitlines()]
    assert (hits[0]["document"], hits[0]["page"]) == ("report.pdf", 3)
    assert not (tmp_path / "b" / "segments").exists()  # node B read the index from the bucket


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_store_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("s3fs")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    quick = {"retries": 1, "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    settings = make_settings(
        tmp_path / "data",
        storage_url="s3://nowhere/data",
        storage_endpoint_url=endpoint,
        storage_key=KEY,
        storage_secret=SECRET,
        storage_region=REGION,
        storage_options=quick,
    )
    with running_server(settings) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "storage_unavailable"
        assert "s3://nowhere/data" in r.json()["detail"]
    env = {
        "PATCHSEEK_DATA_DIR": str(tmp_path / "cli"),
        "PATCHSEEK_STORAGE_URL": "s3://nowhere/data",
        "PATCHSEEK_STORAGE_ENDPOINT_URL": endpoint,
        "PATCHSEEK_STORAGE_KEY": KEY,
        "PATCHSEEK_STORAGE_SECRET": SECRET,
        "PATCHSEEK_STORAGE_OPTIONS": json.dumps(quick),
    }
    out = _cli(env, "init")
    assert out.returncode == 2
    assert "storage_unavailable" in out.stdout + out.stderr and "s3://nowhere/data" in out.stdout + out.stderr
