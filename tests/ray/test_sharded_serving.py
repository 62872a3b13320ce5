"""Sharded serving on a real local Ray cluster, through the HTTP API on a real data dir.

A collection of 2,240 PDF pages (16 random-word PDFs, lexical encoder, ingested by ``patchseek ingest``
into several segments) is above the exact-scan threshold, so stage 1 is the dense summary scan. It is
served as 2 shards by ``patchseek serve-shards`` and searched over HTTP by two API servers on the same
data dir: one in-process (unsharded), one with ``PATCHSEEK_SHARDS=2``. They must give the same top 10
(ids, scores within float tolerance) for 50 queries; a delete and a new upload must reach the shards; a
killed shard and a frozen one must give ``partial: true`` answers naming the shard (HTTP 200, the other
shard's hits), and ``serve-shards`` run again must bring the full answers back.

The cluster is one ``ray start --head`` of 2 CPUs in its own session and temp dir; teardown kills
exactly its processes (never ``ray stop``, which would stop other people's clusters on this machine).
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
canvas = pytest.importorskip("reportlab.pdfgen.canvas")

from patchseek.api.services import ServiceContext  # noqa: E402
from patchseek.api.services.collections import active_version, get_collection  # noqa: E402
from patchseek.search.candidates import EXACT_THRESHOLD  # noqa: E402
from patchseek.search.engine import REGISTRY, shard_of  # noqa: E402
from patchseek.search.sharded import actor_name  # noqa: E402
from tests.api.server import running_server  # noqa: E402
from tests.api.subprocess_server import server_process  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.ray.conftest import LocalCluster, start_local_cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_DOCS, PAGES, WORDS = 16, 140, 12  # 2,240 pages
N_QUERIES = 50
SHARDS = 2
NAMESPACE = "patchseek-test"
SETTINGS = {"ocr": False, "pdf_dpi": 36, "segment_rows": 1000, "ray_namespace": NAMESPACE}


# ------------------------------------------------------------------------------------- the data
def _pdfs(
    folder: Path, rnd: random.Random, vocab: list[str], n: int, pages: int, prefix: str
) -> list[list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for d in range(n):
        buf = io.BytesIO()
        pdf = canvas.Canvas(buf, pagesize=(200, 200))
        for _ in range(pages):
            words = [rnd.choice(vocab) for _ in range(WORDS)]
            texts.append(words)
            for i, w in enumerate(words):
                pdf.drawString(10 + 60 * (i % 3), 180 - 14 * (i // 3), w)
            pdf.showPage()
        pdf.save()
        (folder / f"{prefix}{d:02d}.pdf").write_bytes(buf.getvalue())
    return texts


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "patchseek.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _segments(data: Path) -> list[str]:
    ctx = ServiceContext.from_settings(make_settings(data, None, **SETTINGS))
    try:
        with ctx.db.session() as session:
            version = active_version(session, get_collection(session, "c"))
            root = ctx.index_root(version.collection_id, version.number)
        return [r.name for r in ctx.version_index(version).snapshot().readers] if root.is_dir() else []
    finally:
        REGISTRY.drop_under(data)
        ctx.close()


@dataclass
class Served:
    cluster: LocalCluster
    data: Path
    env: dict[str, str]
    queries: list[str]
    vocab: list[str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The cluster, the collection ingested by the CLI (both shards holding segments), the shard
    servers started by ``patchseek serve-shards``, and this process connected as a Ray driver."""
    root = tmp_path_factory.mktemp("sharded")
    cluster = start_local_cluster(root, nodes=1, cpus=2)
    try:
        data = root / "data"
        env = {
            **cluster.env,
            "PATCHSEEK_DATA_DIR": str(data),
            "PATCHSEEK_OCR": "false",
            "PATCHSEEK_PDF_DPI": "36",
            "PATCHSEEK_SEGMENT_ROWS": "1000",  # each ~140-page PDF its own segment (merges combine some)
            "PATCHSEEK_RAY_NAMESPACE": NAMESPACE,
        }
        env.pop("PATCHSEEK_DATABASE_URL", None)
        rnd = random.Random(0)
        vocab = [
            "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(4, 9)))
            for _ in range(3000)
        ]
        texts = _pdfs(root / "pdfs", rnd, vocab, N_DOCS, PAGES, "d")
        _cli(env, "init")
        _cli(env, "ingest", str(root / "pdfs"), "-c", "c")
        # Segments go to shards by a hash of their random names: add small PDFs until both hold some
        # (each is one more segment; 7 segments already leave one shard empty with probability 1/64).
        for extra in range(12):
            if len({shard_of(s, SHARDS) for s in _segments(data)}) == SHARDS:
                break
            _pdfs(root / f"more{extra}", rnd, vocab, 1, 20, f"m{extra}-")
            _cli(env, "ingest", str(root / f"more{extra}"), "-c", "c")
        assert len({shard_of(s, SHARDS) for s in _segments(data)}) == SHARDS
        # Half the queries are three words of one page (a clear best page), half three words of the
        # vocabulary (weak matches spread over many pages: near-ties, and a lossy dense stage 1).
        queries = [
            " ".join(rnd.sample(texts[rnd.randrange(len(texts))], 3) if i % 2 else rnd.sample(vocab, 3))
            for i in range(N_QUERIES)
        ]
        _cli(env, "serve-shards", "--ray", cluster.address, "-c", "c", "--shards", str(SHARDS))
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        try:
            yield Served(cluster, data, env, queries, vocab)
        finally:
            ray.shutdown()
    finally:
        cluster.stop()


def _settings(s: Served, **kw: object):  # type: ignore[no-untyped-def]
    return make_settings(s.data, None, **{**SETTINGS, **kw})


@pytest.fixture(scope="module")
def plain(served: Served):  # type: ignore[no-untyped-def]
    with running_server(_settings(served)) as client:
        yield client


def _sharded_server(s: Served, timeout_s: float):  # type: ignore[no-untyped-def]
    """``patchseek serve`` in its own process with PATCHSEEK_SHARDS=2: it connects to the cluster itself
    (from a request thread, on its first sharded search), as a deployment does."""
    env = {
        "PATCHSEEK_PDF_DPI": "36",
        "PATCHSEEK_SEGMENT_ROWS": "1000",
        "PATCHSEEK_RAY_NAMESPACE": NAMESPACE,
        "PATCHSEEK_SHARDS": str(SHARDS),
        "PATCHSEEK_RAY_ADDRESS": s.cluster.address,
        "PATCHSEEK_RAY_JOBS": "false",  # its uploads are ingested in-process; only searches fan out
        "PATCHSEEK_SHARD_TIMEOUT_S": str(timeout_s),
        "PATCHSEEK_WORKER_IN_PROCESS": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return server_process(s.data, **env)


@pytest.fixture(scope="module")
def sharded(served: Served):  # type: ignore[no-untyped-def]
    # A generous timeout: the answers must be complete however loaded the machine is.
    with _sharded_server(served, 120) as (_, client):
        yield client


def _search(client, query: str, **kw):  # type: ignore[no-untyped-def]
    r = client.post("/v1/collections/c/search", json={"query": query, "top_k": 10, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def _assert_same(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    assert [h["unit_id"] for h in a["hits"]] == [h["unit_id"] for h in b["hits"]]
    np.testing.assert_allclose([h["score"] for h in a["hits"]], [h["score"] for h in b["hits"]], atol=1e-4)
    assert a["units_searched"] == b["units_searched"]


def _shard_docs(s: Served, index: int) -> set[int]:
    ctx = ServiceContext.from_settings(_settings(s))
    try:
        with ctx.db.session() as session:
            version = active_version(session, get_collection(session, "c"))
        return set(ctx.version_index(version).snapshot().shard(index, SHARDS).doc_ids().tolist())
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------------ tests
def test_two_shards_answer_like_the_unsharded_collection(served: Served, plain, sharded) -> None:  # type: ignore[no-untyped-def]
    info = plain.get("/v1/collections/c").json()
    assert info["index"]["units"] >= EXACT_THRESHOLD, info  # stage 1 is not an exact scan
    assert info["index"]["state"] is not None  # the dense stage-1 state is fitted
    shard0 = _shard_docs(served, 0)
    from_shard = [0, 0]
    for i, q in enumerate(served.queries):
        # Short shortlists too: there each shard's own top candidates differ from the global ones (the
        # ``union`` merge answers 8-13 of 50 such queries differently), and only the global cut agrees.
        kw = [{}, {"candidates": 12}, {"rerank": False}, {"stage1_k": 20, "candidates": 10}, {}][i % 5]
        a, b = _search(plain, q, **kw), _search(sharded, q, **kw)
        assert b["partial"] is False and b["missing_shards"] == [] and a["partial"] is False
        assert len(a["hits"]) == 10
        _assert_same(b, a)
        for h in b["hits"]:
            from_shard[0 if h["document_id"] in shard0 else 1] += 1
    assert min(from_shard) > 0, from_shard  # both shards contributed hits
    # Filters travel to the shards: document ids and metadata-less media filters.
    docs = sorted({h["document_id"] for h in _search(plain, served.queries[0])["hits"]})[:2]
    for kw in ({"document_ids": docs}, {"media_types": ["pdf"]}, {"media_types": ["image"]}):
        _assert_same(_search(sharded, served.queries[0], **kw), _search(plain, served.queries[0], **kw))


def test_a_delete_and_a_new_upload_reach_the_shards(served: Served, plain, sharded) -> None:  # type: ignore[no-untyped-def]
    q = served.queries[1]
    top = _search(sharded, q)["hits"][0]
    assert plain.delete(f"/v1/collections/c/documents/{top['document_id']}").status_code in (200, 204)
    after = _search(sharded, q)
    assert top["document_id"] not in {h["document_id"] for h in after["hits"]}
    _assert_same(after, _search(plain, q))

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=(200, 200))
    pdf.drawString(10, 180, "zyxwvut qponmlk")
    pdf.showPage()
    pdf.save()
    r = sharded.post(
        "/v1/collections/c/documents?wait=true",
        files=[("files", ("fresh.pdf", buf.getvalue(), "application/pdf"))],
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    found = _search(sharded, "zyxwvut qponmlk")
    assert found["hits"][0]["document"] == "fresh.pdf" and found["partial"] is False
    _assert_same(found, _search(plain, "zyxwvut qponmlk"))


def test_a_killed_shard_gives_partial_answers_until_it_is_started_again(
    served: Served, plain, sharded
) -> None:  # type: ignore[no-untyped-def]
    q = served.queries[2]
    full = _search(plain, q)
    ray.kill(ray.get_actor(actor_name("c", 1, SHARDS), namespace=NAMESPACE), no_restart=True)
    live = _shard_docs(served, 0)
    for _ in range(2):  # the dead handle, then the failed lookup
        got = _search(sharded, q)
        assert got["partial"] is True
        assert got["missing_shards"] == [{"shard": 1, "reason": "unavailable"}]
        assert len(got["hits"]) == 10 and {h["document_id"] for h in got["hits"]} <= live  # shard 0's best
    _cli(served.env, "serve-shards", "--ray", served.cluster.address, "-c", "c", "--shards", str(SHARDS))
    back = _search(sharded, q)
    assert back["partial"] is False
    _assert_same(back, full)


def test_a_frozen_shard_is_left_out_after_the_timeout(served: Served, plain, sharded) -> None:  # type: ignore[no-untyped-def]
    q = served.queries[3]
    handle = ray.get_actor(actor_name("c", 0, SHARDS), namespace=NAMESPACE)
    pid = ray.get(handle.ping.remote(), timeout=60)["pid"]
    with _sharded_server(served, 2) as (_, impatient):
        os.kill(pid, signal.SIGSTOP)
        try:
            got = _search(impatient, q)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert got["partial"] is True
        assert {"shard": 0, "reason": "timeout"} in got["missing_shards"]
    back = _search(sharded, q)
    assert back["partial"] is False
    _assert_same(back, _search(plain, q))


def test_serve_shards_refuses_an_unknown_collection_and_a_missing_address(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATCHSEEK_DATA_DIR": str(tmp_path / "data")}
    for k in ("PATCHSEEK_RAY_ADDRESS", "PATCHSEEK_SHARDS", "PATCHSEEK_DATABASE_URL"):
        env.pop(k, None)
    for args, code in (
        (["-c", "nope", "--ray", "127.0.0.1:1", "--shards", "2"], "not_found"),  # checked before connecting
        (["-c", "nope", "--shards", "2"], "PATCHSEEK_RAY_ADDRESS"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "patchseek.cli", "serve-shards", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2 and code in out.stderr.replace("\n", " "), out.stderr
