"""Ingest and rebuild as Ray Data jobs on a real local cluster (a head and one more node, one CPU each).

The distributed path must give what the single-process path gives (the same units, the same search
results), survive a killed Ray worker, publish nothing when cancelled, and report progress to the job
row; through the services here, through the real CLI in ``test_distributed_cli.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

pytest.importorskip("ray")

from patchseek.api.db.models import Collection, Document, IndexVersion, Job, Unit  # noqa: E402
from patchseek.api.services import (  # noqa: E402
    CollectionService,
    IngestService,
    JobService,
    RebuildService,
    SearchService,
    ServiceContext,
)
from patchseek.search.segments import list_segment_names  # noqa: E402
from tests.conftest import make_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_DOCS = 24
QUERIES = ["record7 alpha7", "beta3 gamma", "record19", "page 2 delta11", "alpha12 beta1"]


def write_pdfs(folder: Path, n: int = N_DOCS, pages: int = 2) -> list[Path]:
    """``n`` PDFs of ``pages`` pages whose words tell documents and pages apart."""
    from reportlab.pdfgen import canvas

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        pdf = canvas.Canvas(buf, pagesize=(300, 200), invariant=1)
        for page in range(1, pages + 1):
            pdf.drawString(10, 150, f"record{i} alpha{i % 13} beta{i % 7}")
            pdf.drawString(10, 120, f"page {page} gamma{page} delta{(i * page) % 17}")
            pdf.showPage()
        pdf.save()
        path = folder / f"doc{i:03d}.pdf"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


@pytest.fixture(scope="module")
def connected(ray_cluster):  # type: ignore[no-untyped-def]
    """This test process as the cluster's driver (jobs reuse the connection)."""
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False, include_dashboard=False)
    yield ray_cluster
    ray.shutdown()


@pytest.fixture
def ctx(tmp_path, connected):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "data", ocr=False, ray_docs_per_segment=8, job_heartbeat_seconds=1)
    ctx = ServiceContext.from_settings(settings)
    yield ctx
    ctx.close()


def ingest(ctx: ServiceContext, name: str, files: list[Path], *, ray_address: str | None = None) -> Job:
    CollectionService(ctx).create(name, exist_ok=True)
    service = IngestService(ctx)
    job = service.submit(name, [(p.name, p.read_bytes()) for p in files], status="running")
    return service.run_job(job.id, ray_address=ray_address)


def units_of(ctx: ServiceContext, name: str) -> list[tuple[Any, ...]]:
    """The active version's units by (file name, ordinal), with everything a search shows of them."""
    with ctx.db.session() as session:
        collection = session.scalar(select(Collection).where(Collection.name == name))
        assert collection is not None
        rows = session.execute(
            select(Document.filename, Unit)
            .join(Unit, Unit.document_id == Document.id)
            .where(Unit.index_version_id == collection.active_version_id)
            .order_by(Document.filename, Unit.ordinal)
        ).all()
        return [
            (
                f,
                u.ordinal,
                u.kind,
                u.page,
                u.width,
                u.height,
                u.grid_rows,
                u.grid_cols,
                u.n_patches,
                u.text,
                u.image_blob,
                u.thumb_blob,
            )
            for f, u in rows
        ]


def hits_of(ctx: ServiceContext, name: str) -> list[list[tuple[float, str, int | None]]]:
    """Every unit's hit for each query, best first; equal scores (ties, whose order follows the
    segments' layout) by name and page."""
    service = SearchService(ctx)
    out = []
    for q in QUERIES:
        result = service.search(name, query=q, top_k=4 * N_DOCS)
        hits = [(-round(float(h.score), 4), Path(h.document).name, h.page) for h in result.hits]
        assert [h[0] for h in hits] == sorted(h[0] for h in hits)
        out.append(sorted(hits))
    return out


def version_folder(ctx: ServiceContext, name: str) -> tuple[Path, IndexVersion]:
    with ctx.db.session() as session:
        collection = session.scalar(select(Collection).where(Collection.name == name))
        assert collection is not None
        version = session.get(IndexVersion, collection.active_version_id)
        assert version is not None
        session.expunge(version)
    return ctx.index_root(version.collection_id, version.number), version


def test_rebuild_on_the_cluster_matches_the_single_process_rebuild(ctx, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = write_pdfs(tmp_path / "pdfs")
    for name in ("local", "ray"):
        assert ingest(ctx, name, files).status == "succeeded"
    before = units_of(ctx, "local")
    assert len(before) == 2 * N_DOCS

    rebuild = RebuildService(ctx)
    local = rebuild.run_job(rebuild.submit("local", status="running", reencode=True).id)
    job = rebuild.submit("ray", status="running", reencode=True)
    distributed = rebuild.run_job(job.id, ray_address=connected_address(ctx))
    assert (local.status, distributed.status) == ("succeeded", "succeeded"), distributed.error
    assert distributed.result["index_version"] == 2

    # Same units (blobs included: same rendered images), same hits and scores.
    assert units_of(ctx, "ray") == units_of(ctx, "local") == before
    assert hits_of(ctx, "ray") == hits_of(ctx, "local")
    assert hits_of(ctx, "ray")[0][0][1:] == ("doc007.pdf", 1)

    # Each writer task wrote its own segment (8 documents each), all published in the new version.
    root, _ = version_folder(ctx, "ray")
    from patchseek.search.manifest import read_manifest

    assert len(read_manifest(root).segments) == N_DOCS // 8
    with ctx.db.session() as session:
        row = session.get(Job, job.id)
        assert row is not None
        assert (row.progress, row.total) == (N_DOCS, N_DOCS)
        assert (row.units_done, row.units_total) == (2 * N_DOCS, 2 * N_DOCS)


def connected_address(ctx: ServiceContext) -> str:
    import ray

    # The test process is already the driver of the module's cluster: "auto" reuses the connection.
    assert ray.is_initialized()
    return "auto"


def test_ingest_on_the_cluster_reports_progress_fails_bad_files_alone_and_reruns_idempotently(
    ctx, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    files = write_pdfs(tmp_path / "pdfs", n=12)
    bad = tmp_path / "pdfs" / "truncated.pdf"
    bad.write_bytes(files[0].read_bytes()[:300])
    local = ingest(ctx, "local", files)
    seen: list[tuple[int, int, int]] = []
    CollectionService(ctx).create("ray")
    service = IngestService(ctx)
    job = service.submit("ray", [(p.name, p.read_bytes()) for p in [*files, bad]], status="running")
    done = service.run_job(
        job.id,
        progress=lambda p: seen.append((p.units_done, p.units_total, p.documents_done)),
        ray_address="auto",
    )
    assert (local.status, done.status) == ("succeeded", "partial")
    results = {r["filename"]: r for r in done.result["documents"]}
    assert results["truncated.pdf"]["status"] == "failed" and results["truncated.pdf"]["code"]
    assert all(results[p.name]["status"] == "ready" and results[p.name]["n_units"] == 2 for p in files)
    assert units_of(ctx, "ray") == units_of(ctx, "local")
    assert hits_of(ctx, "ray") == hits_of(ctx, "local")

    # Progress reached the job row (pages done / total) and the callback, ending complete.
    assert (done.units_done, done.units_total, done.progress, done.total) == (24, 24, 13, 13)
    assert seen and seen[-1] == (24, 24, 13)
    assert all(a <= b for (a, _, _), (b, _, _) in zip(seen, seen[1:], strict=False))

    # A re-run of the same job (a worker re-claiming it) skips the documents already published.
    root, _ = version_folder(ctx, "ray")
    segments = sorted(list_segment_names(root))
    with ctx.db.session() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.status = "running"
    again = service.run_job(job.id, ray_address="auto")
    assert again.status == "partial"
    assert sorted(list_segment_names(root)) == segments
    assert units_of(ctx, "ray") == units_of(ctx, "local")


def run_and_cancel_once_started(ctx: ServiceContext, service: IngestService, job_id: int) -> Job:
    """Run ingest job ``job_id`` on the cluster and cancel it (as ``POST /v1/jobs/{id}/cancel`` does) once
    its first pages are encoded."""

    def cancel_once_started() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with ctx.db.session() as session:
                row = session.get(Job, job_id)
                if row is not None and row.units_done > 0:
                    break
            time.sleep(0.1)
        JobService(ctx).cancel(job_id)

    canceller = threading.Thread(target=cancel_once_started)
    canceller.start()
    try:
        return service.run_job(job_id, ray_address="auto")
    finally:
        canceller.join()


def test_cancelling_a_job_on_the_cluster_publishes_nothing(ctx, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = write_pdfs(tmp_path / "pdfs", n=40, pages=4)
    assert ingest(ctx, "c", files[:1]).status == "succeeded"
    root, _ = version_folder(ctx, "c")
    segments_before = sorted(list_segment_names(root))
    units_before = units_of(ctx, "c")
    service = IngestService(ctx)
    job = service.submit("c", [(p.name, p.read_bytes()) for p in files[1:]], status="running")

    done = run_and_cancel_once_started(ctx, service, job.id)
    assert done.status == "cancelled"
    assert 0 < done.units_done < 4 * 39  # it was cancelled mid-job
    # Nothing of the job is visible: same manifest, same units. The segments the driver saw are deleted;
    # one a writer task was finishing at the cancel is an unlisted file, which the engine's gc removes.
    from patchseek.search.manifest import read_manifest

    assert sorted(read_manifest(root).segments) == segments_before
    assert len(set(list_segment_names(root)) - set(segments_before)) <= 1
    ctx.version_index(version_folder(ctx, "c")[1]).gc(grace_s=0)
    assert sorted(list_segment_names(root)) == segments_before
    assert units_of(ctx, "c") == units_before
    with ctx.db.session() as session:
        statuses = set(session.scalars(select(Document.status).where(Document.job_id == job.id)))
    assert statuses == {"failed"}
    assert SearchService(ctx).search("c", query="record20", top_k=5).hits[0].document == "doc000.pdf"


def _encoder_actors() -> list[dict[str, Any]]:
    """The encoder actors in the GCS actor table (``ray.util.state`` needs the dashboard, which the
    test cluster does not run; this is the table it reads)."""
    from ray._private import state

    return [a for a in state.actors().values() if "_EncoderActor" in a["ActorClassName"]]


def _encoder_actor_pids() -> list[int]:
    return [int(a["Pid"]) for a in _encoder_actors() if a["State"] == "ALIVE" and a["Pid"]]


@pytest.mark.slow
def test_a_killed_ray_worker_still_ends_in_a_complete_correct_index(ctx, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = write_pdfs(tmp_path / "pdfs", n=30, pages=3)
    for name in ("local", "ray"):
        assert ingest(ctx, name, files).status == "succeeded"
    rebuild = RebuildService(ctx)
    assert rebuild.run_job(rebuild.submit("local", status="running", reencode=True).id).status == "succeeded"
    job = rebuild.submit("ray", status="running", reencode=True)
    killed: list[int] = []

    def kill_an_encoder_mid_job() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            with ctx.db.session() as session:
                row = session.get(Job, job.id)
                started = row is not None and row.units_done > 0
            pids = _encoder_actor_pids() if started else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_an_encoder_mid_job)
    killer.start()
    done = rebuild.run_job(job.id, ray_address="auto")
    killer.join()
    assert killed, "no encoder actor was found to kill"
    # Ray restarted the killed actor and resubmitted its work.
    assert any(a["NumRestarts"] >= 1 for a in _encoder_actors())
    assert done.status == "succeeded", done.error
    assert (done.progress, done.total) == (30, 30)
    assert units_of(ctx, "ray") == units_of(ctx, "local")
    assert hits_of(ctx, "ray") == hits_of(ctx, "local")


# ------------------------------------------------------------------------------------- the real CLI
def _cli(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATCHSEEK_DATA_DIR": str(data),
        "PATCHSEEK_OCR": "false",
        "PATCHSEEK_PDF_DPI": "72",
        "PATCHSEEK_RAY_DOCS_PER_SEGMENT": "8",
    }
    env.pop("PATCHSEEK_DATABASE_URL", None)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-m", "patchseek.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    if check and out.returncode != 0:
        raise AssertionError(f"patchseek {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
    return out


def _search(data: Path, collection: str) -> list[list[tuple[float, str, int | None]]]:
    out = []
    for q in QUERIES:
        lines = _cli(data, "search", q, "-c", collection, "--json", "--top-k", "100").stdout.splitlines()
        out.append(sorted((-round(h["score"], 4), h["document"], h["page"]) for h in map(json.loads, lines)))
    return out


@pytest.mark.slow  # three CLI drivers, each starting its own Ray workers: minutes on 2 shared cores
def test_cli_ingest_and_rebuild_with_ray_on_a_real_data_dir(connected, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder, data = tmp_path / "pdfs", tmp_path / "data"
    files = write_pdfs(folder, n=16)
    _cli(data, "init")
    assert "16 ingested (32 units)" in _cli(data, "ingest", str(folder), "-c", "local").stderr
    out = _cli(data, "ingest", str(folder), "-c", "dist", "--ray", connected.address)
    assert "16 ingested (32 units), 0 failed" in out.stderr
    assert _search(data, "dist") == _search(data, "local")
    stats = json.loads(_cli(data, "stats", "-c", "dist", "--json").stdout)
    assert stats["units"] == 32

    out = _cli(data, "rebuild", "-c", "dist", "--ray", connected.address)
    assert "now serves index version 2" in out.stderr
    assert _search(data, "dist") == _search(data, "local")

    assert files


def test_cli_with_an_unreachable_ray_address_fails_clearly_and_changes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Exit 2 with ``cluster_unavailable`` within seconds (``ray.init`` alone would wait minutes for
    the GCS), nothing ingested or rebuilt."""
    folder, data = tmp_path / "pdfs", tmp_path / "data"
    files = write_pdfs(folder, n=2)
    _cli(data, "ingest", str(files[0]), "-c", "kept")
    address = f"127.0.0.1:{_closed_port()}"
    bad = _cli(data, "ingest", str(folder), "-c", "other", "--ray", address, check=False)
    assert bad.returncode == 2 and "(cluster_unavailable)" in bad.stderr
    rebuild = _cli(data, "rebuild", "-c", "kept", "--ray", address, check=False)
    assert rebuild.returncode == 2 and "(cluster_unavailable)" in rebuild.stderr
    listing = _cli(data, "collections").stdout
    assert "other" not in listing and "kept\t1 documents\t2 units" in listing
    hits = [
        json.loads(x) for x in _cli(data, "search", "record0", "-c", "kept", "--json").stdout.splitlines()
    ]
    assert hits[0]["document"] == "doc000.pdf"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- the data on S3
from tests.storage.conftest import KEY, REGION, SECRET, S3Server  # noqa: E402


@pytest.fixture
def s3_ctx(tmp_path, connected, s3_server: S3Server):  # type: ignore[no-untyped-def]
    """A service whose blobs and segments are in a bucket of moto's S3 server (real HTTP), which every
    Ray task opens itself; the data dir holds only the database and caches."""
    bucket = s3_server.new_bucket()
    settings = make_settings(
        tmp_path / "data",
        ocr=False,
        ray_docs_per_segment=8,
        job_heartbeat_seconds=1,
        storage_url=f"s3://{bucket}/cluster",
        storage_endpoint_url=s3_server.endpoint,
        storage_key=KEY,
        storage_secret=SECRET,
        storage_region=REGION,
        storage_poll_seconds=0,
    )
    ctx = ServiceContext.from_settings(settings)
    yield ctx, bucket
    ctx.close()


def _segment_keys(s3: S3Server, bucket: str, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"cluster/{prefix}")
    return {o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".seg")}


def test_ingest_and_rebuild_on_the_cluster_with_the_data_on_s3(s3_ctx, s3_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx, bucket = s3_ctx
    files = write_pdfs(tmp_path / "pdfs", n=16)
    assert ingest(ctx, "local", files).status == "succeeded"
    job = ingest(ctx, "ray", files, ray_address="auto")
    assert job.status == "succeeded", job.error
    assert units_of(ctx, "ray") == units_of(ctx, "local")
    assert hits_of(ctx, "ray") == hits_of(ctx, "local")
    assert hits_of(ctx, "ray")[0][0][1:] == ("doc007.pdf", 1)
    _, version = version_folder(ctx, "ray")
    prefix = ctx.index_prefix(version.collection_id, version.number)
    # Each writer task put its own segment (8 documents) into the bucket; all of them are published.
    keys = _segment_keys(s3_server, bucket, prefix)
    assert len(keys) == 2
    assert {k.rsplit("/", 1)[1] for k in keys} == {
        f"seg-{n}.seg"
        for n in ctx.index_files(version.collection_id, version.number).read_manifest().segments
    }
    assert (
        not (ctx.settings.data_dir / "segments").exists() and not (ctx.settings.data_dir / "blobs").exists()
    )

    rebuild = RebuildService(ctx)
    local = rebuild.run_job(rebuild.submit("local", status="running", reencode=True).id)
    distributed = rebuild.run_job(
        rebuild.submit("ray", status="running", reencode=True).id, ray_address="auto"
    )
    assert (local.status, distributed.status) == ("succeeded", "succeeded"), distributed.error
    assert distributed.result["index_version"] == 2
    assert units_of(ctx, "ray") == units_of(ctx, "local")
    assert hits_of(ctx, "ray") == hits_of(ctx, "local")
    assert len(_segment_keys(s3_server, bucket, ctx.index_prefix(version.collection_id, 2))) == 2


def test_a_cancelled_job_with_the_data_on_s3_publishes_nothing(s3_ctx, s3_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx, bucket = s3_ctx
    files = write_pdfs(tmp_path / "pdfs", n=40, pages=4)
    assert ingest(ctx, "c", files[:1]).status == "succeeded"
    _, version = version_folder(ctx, "c")
    index = ctx.index_files(version.collection_id, version.number)
    prefix = ctx.index_prefix(version.collection_id, version.number)
    manifest_before, keys_before = index.read_manifest().segments, _segment_keys(s3_server, bucket, prefix)
    units_before = units_of(ctx, "c")
    service = IngestService(ctx)
    job = service.submit("c", [(p.name, p.read_bytes()) for p in files[1:]], status="running")

    done = run_and_cancel_once_started(ctx, service, job.id)
    assert done.status == "cancelled"
    assert 0 < done.units_done < 4 * 39
    assert index.read_manifest().segments == manifest_before
    # The segments the driver saw are deleted from the bucket; one a writer task was finishing at the
    # cancel is an unlisted object, which the engine's gc removes.
    assert len(_segment_keys(s3_server, bucket, prefix) - keys_before) <= 1
    ctx.version_index(version).gc(grace_s=0)
    assert _segment_keys(s3_server, bucket, prefix) == keys_before
    assert units_of(ctx, "c") == units_before
    assert SearchService(ctx).search("c", query="record20", top_k=5).hits[0].document == "doc000.pdf"


def test_two_shards_with_the_data_on_s3_answer_like_the_unsharded_collection(
    s3_ctx, connected, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Shard servers (Ray actors) open the index version from the bucket themselves: the sharded
    answer is the unsharded one (same units, scores within float tolerance)."""
    from patchseek.search.engine import shard_of
    from patchseek.search.sharded import start_shards, stop_shards
    from patchseek.storage import StorageSpec

    ctx, _ = s3_ctx
    files = write_pdfs(tmp_path / "pdfs", n=16)
    for i, path in enumerate(files):  # one job (one segment) per file until both shards hold segments
        assert ingest(ctx, "s", [path]).status == "succeeded"
        _, version = version_folder(ctx, "s")
        names = ctx.index_files(version.collection_id, version.number).read_manifest().segments
        if i >= 7 and {shard_of(n, 2) for n in names} == {0, 1}:
            break
    assert {shard_of(n, 2) for n in names} == {0, 1}
    namespace = "patchseek-s3-test"
    warm = (
        str(ctx.index_root(version.collection_id, version.number)),
        version.dim,
        dict(version.compression or {}),
        StorageSpec.from_settings(ctx.settings),
        ctx.index_prefix(version.collection_id, version.number),
    )
    sharded = ServiceContext.from_settings(
        ctx.settings.model_copy(
            update={"shards": 2, "ray_address": connected.address, "ray_namespace": namespace}
        )
    )
    try:
        info = start_shards(connected.address, "s", 2, namespace=namespace, num_cpus=0.25, warm=warm)
        assert sum(i["segments"] for i in info) == len(names) and all(i["segments"] for i in info)
        for q in QUERIES:
            one = SearchService(ctx).search("s", query=q, top_k=10)
            two = SearchService(sharded).search("s", query=q, top_k=10)
            assert not two.partial and one.hits
            assert [(h.document, h.page) for h in two.hits] == [(h.document, h.page) for h in one.hits]
            assert [h.score for h in two.hits] == pytest.approx([h.score for h in one.hits], abs=1e-4)
    finally:
        stop_shards(connected.address, "s", 2, namespace=namespace)
        sharded.close()


def test_an_api_upload_over_http_is_indexed_on_the_cluster_with_the_data_on_s3(
    s3_ctx, connected, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The API with PATCHSEEK_RAY_ADDRESS and its in-process worker: an upload over HTTP becomes a Ray
    Data job (its write tasks' segments, 8 documents each, in the bucket), reports its progress in the
    job, and searches like the single-process ingest."""
    from tests.api.server import running_server, wait_for_job

    ctx, _ = s3_ctx
    files = write_pdfs(tmp_path / "pdfs", n=16)
    assert ingest(ctx, "local", files).status == "succeeded"
    settings = ctx.settings.model_copy(update={"ray_address": connected.address, "worker_in_process": True})
    with running_server(settings) as client:
        assert client.post("/v1/collections", json={"name": "api"}).status_code == 201
        r = client.post(
            "/v1/collections/api/documents",
            files=[("files", (p.name, p.read_bytes(), "application/pdf")) for p in files],
        )
        assert r.status_code == 202, r.text
        job = wait_for_job(client, r.json()["id"])
        assert job["status"] == "succeeded", job
        assert (job["units_done"], job["units_total"]) == (32, 32)
        # Every unit's hit, best first; equal scores (ties, whose order follows the segments' layout)
        # by name and page, as ``hits_of`` compares them.
        got = []
        for q in QUERIES:
            r = client.post("/v1/collections/api/search", json={"query": q, "top_k": 64})
            got.append(sorted((-round(h["score"], 4), h["document"], h["page"]) for h in r.json()["hits"]))
    assert got == hits_of(ctx, "local")
    _, version = version_folder(ctx, "api")
    assert len(ctx.index_files(version.collection_id, version.number).read_manifest().segments) == 2
