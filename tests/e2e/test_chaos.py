"""Chaos (issue 12): rounds of start ``patchseek serve``, upload a batch mixing good and hostile files,
``kill -9`` at a random moment (during the uploads, during ingestion, or idle), restart.

After every restart, once the jobs have settled: each document is ready and found by a word unique to
it, or failed with a code and a message; a ready document has every unit, and no unit of another
document is ever a hit; the blob store holds exactly what the database references (the workers' orphan
sweep at start, with a small grace); and no request of any round got a 5xx. At the end, the segment
files on disk are exactly those the manifest lists and no unit is live twice.

``PATCHSEEK_CHAOS_ROUNDS`` and ``PATCHSEEK_CHAOS_SEED`` change the number of rounds (20) and the seed.
"""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from reportlab.pdfgen import canvas

from tests.api.subprocess_server import start_server
from tests.api.test_hostile_input import _multipart
from tests.bombs import pdf_bomb, png_bomb

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("PATCHSEEK_CHAOS_ROUNDS", "20"))
SEED = int(os.environ.get("PATCHSEEK_CHAOS_SEED", "12"))
UPLOAD_LIMIT = 1_000_000
GRACE = 3.0  # seconds; longer than any upload's put-to-commit window on this machine
ENV = {
    "PATCHSEEK_PDF_DPI": "72",
    "PATCHSEEK_JOB_HEARTBEAT_SECONDS": "0.5",
    "PATCHSEEK_JOB_STALE_SECONDS": "5",
    "PATCHSEEK_ORPHAN_GRACE_SECONDS": str(GRACE),
    "PATCHSEEK_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
    "PATCHSEEK_MAX_DECODE_PIXELS": "1000000",
    "PATCHSEEK_MAX_PAGE_PIXELS": "1000000",
    # Every document its own segment: documents commit one by one (a wide kill window) and the tiered
    # merge policy has segments to merge.
    "PATCHSEEK_SEGMENT_ROWS": "1",
}
FILLER = "quarterly glacier harbour basalt onboarding espresso volcanic meltwater".split()
# Hostile files and the failure code each must get (None: any code). A job whose process was killed
# three times fails its pending documents with ``worker_died``; that is allowed for every file.
HOSTILE_CODES: dict[str, str | None] = {
    "encrypted": "encrypted_document",
    "truncated": None,
    "empty": None,
    "bomb": "image_too_large",
    "notes": "unsupported_media",
}
SETTLE_S = 180.0


def _pdf(word: str, *, encrypt: str | None = None) -> bytes:
    """Two pages: ``word`` (unique to the document) with filler on page 1, filler only on page 2."""
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, encrypt=encrypt)
    for page, words in enumerate(([word, *FILLER[:4]], FILLER[4:])):
        for i, w in enumerate(words):
            pdf.drawString(72 + 90 * (i % 4), 720 - 40 * (i // 4), w)
        pdf.drawString(72, 100, f"page {page + 1}")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


@dataclass
class Chaos:
    """What the client saw over all rounds."""

    data: Path
    log: Path
    rng: random.Random
    words: dict[str, str] = field(default_factory=dict)  # good file name (as stored) -> unique word
    server_errors: list[str] = field(default_factory=list)  # "METHOD url -> status" of every 5xx
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def word(self) -> str:
        while True:
            w = "".join(self.rng.choices(string.ascii_lowercase, k=9))
            if w not in self.words.values():
                return w

    def batches(self, r: int) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """Round ``r``'s two uploads, each mixing good and hostile files."""
        good = {f"good-{r}-{i}.pdf": self.word() for i in range(3)}
        nul_name, nul_word = f"nul\x00-{r}.pdf", self.word()
        self.words.update(good)
        self.words[nul_name.replace("\x00", "")] = nul_word
        first = [
            *((name, _pdf(w)) for name, w in list(good.items())[:2]),
            (f"encrypted-{r}.pdf", _pdf(self.word(), encrypt="secret")),
            (f"truncated-{r}.pdf", _pdf(self.word())[:700]),
            (f"empty-{r}.pdf", b""),
            (f"oversized-{r}.pdf", b"%PDF-1.4\n" + os.urandom(UPLOAD_LIMIT)),
            (f"notes-{r}.txt", f"plain text {self.word()}\n".encode()),
        ]
        second = [
            (list(good)[2], _pdf(list(good.values())[2])),
            (nul_name, _pdf(nul_word)),
            (f"bomb-{r}.png", png_bomb(1500, 1500)),
            ("huge-page.pdf", pdf_bomb()),  # drawn scaled down: ready once, then a duplicate
        ]
        return first, second

    def client_hooks(self, client: httpx.Client) -> None:
        def record(response: httpx.Response) -> None:
            if response.status_code >= 500:
                self.server_errors.append(
                    f"{response.request.method} {response.request.url} -> {response.status_code}"
                )

        client.event_hooks = {"response": [record]}


def _query(data: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{data / 'patchseek.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _referenced_blobs(data: Path) -> set[str]:
    rows = _query(
        data,
        "select sha256 from documents union select image_blob from units union select thumb_blob from units",
    )
    return {r[0] for r in rows}


def _stored_blobs(data: Path) -> set[str]:
    """Every file in the blob store, temp files included."""
    return {p.name for p in (data / "blobs").rglob("*") if p.is_file()}


def _busy(data: Path) -> tuple[int, int]:
    """(documents pending, jobs queued or running)."""
    pending = _query(data, "select count(*) from documents where status = 'pending'")[0][0]
    jobs = _query(data, "select count(*) from jobs where status in ('queued', 'running')")[0][0]
    return pending, jobs


def _settle(data: Path, client: httpx.Client, job_ids: list[int]) -> float:
    """Wait until no document is pending and no job queued or running; seconds it took."""
    start = time.monotonic()
    while _busy(data) != (0, 0):
        assert time.monotonic() - start < SETTLE_S, f"jobs did not settle: {_busy(data)}"
        time.sleep(0.2)
    for job_id in job_ids:  # the API agrees
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] not in ("queued", "running"), r.text
    return time.monotonic() - start


def _documents(client: httpx.Client) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    while True:
        r = client.get("/v1/collections/c/documents", params={"limit": 1000, "offset": len(docs)})
        assert r.status_code == 200, r.text
        docs.extend(r.json())
        if len(r.json()) < 1000:
            return docs


def _check(chaos: Chaos, client: httpx.Client) -> dict[str, int]:
    """The state after a restart; returns counts by status."""
    docs = _documents(client)
    ready = {d["id"] for d in docs if d["status"] == "ready"}
    by_name: dict[str, dict[str, Any]] = {}
    for d in docs:
        name = d["filename"]
        assert name not in by_name, f"{name} is two documents"  # no upload is ever sent twice
        by_name[name] = d
        assert d["status"] in ("ready", "failed"), d
        kind = name.split("-", 1)[0]
        if d["status"] == "failed":
            assert d["error_code"] and d["error"], d
            assert kind in HOSTILE_CODES or d["error_code"] == "worker_died", d
            expected = HOSTILE_CODES.get(kind)
            assert expected is None or d["error_code"] in (expected, "worker_died"), d
            continue
        assert kind in ("good", "nul", "huge"), d
        detail = client.get(f"/v1/collections/c/documents/{d['id']}").json()
        # Complete: every unit, each exactly once.
        assert len(detail["units"]) == d["n_units"] == (1 if kind == "huge" else 2), detail
        assert sorted(u["page"] for u in detail["units"]) == list(range(1, d["n_units"] + 1))
    for name, word in chaos.words.items():
        r = client.post("/v1/collections/c/search", json={"query": word, "top_k": 5})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert {h["document_id"] for h in hits} <= ready, f"a hit of a document that is not ready: {hits}"
        doc = by_name.get(name)
        if doc is not None and doc["status"] == "ready":
            assert hits and hits[0]["document_id"] == doc["id"] and hits[0]["page"] == 1, (name, hits)
        elif doc is not None:
            assert doc["id"] not in {h["document_id"] for h in hits}
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["status"]] = counts.get(d["status"], 0) + 1
    return counts


def _blobs_swept(data: Path, timeout: float = 30) -> float:
    """Wait until the blob store holds exactly the referenced blobs (the sweep removes orphans once
    older than the grace); seconds it took."""
    start = time.monotonic()
    while extra := _stored_blobs(data) - _referenced_blobs(data):
        assert time.monotonic() - start < timeout, f"unreferenced blobs stay: {sorted(extra)[:5]}"
        time.sleep(0.25)
    missing = _referenced_blobs(data) - _stored_blobs(data)
    assert not missing, f"rows reference blobs that are gone: {sorted(missing)[:5]}"
    return time.monotonic() - start


def _killer(
    proc: subprocess.Popen[bytes], when: Callable[[], bool], stop: threading.Event, fired: threading.Event
) -> threading.Thread:
    """A thread that sends SIGKILL as soon as ``when()`` holds (unless ``stop`` is set first) and sets
    ``fired``."""

    def run() -> None:
        while not stop.is_set() and proc.poll() is None:
            try:
                if when():
                    os.kill(proc.pid, signal.SIGKILL)
                    fired.set()
                    return
            except sqlite3.OperationalError:  # the database is busy: ask again
                pass
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _round(chaos: Chaos, r: int, job_ids: list[int]) -> None:
    data, rng = chaos.data, chaos.rng
    began = time.monotonic()
    proc, client = start_server(data, log=chaos.log, **ENV)
    chaos.client_hooks(client)
    info: dict[str, Any] = {"round": r, "start_s": round(time.monotonic() - began, 1)}
    try:
        if r == 0:
            assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        info["settle_s"] = round(_settle(data, client, job_ids), 1)
        info["docs"] = _check(chaos, client)
        info["sweep_s"] = round(_blobs_swept(data), 1)
        if r == ROUNDS:  # the last restart: checked, not killed
            chaos.rounds.append(info)
            return
        mode = rng.choice(["upload", "upload", "ingest", "ingest", "idle"])
        info["mode"] = mode
        stop, fired = threading.Event(), threading.Event()
        killer: threading.Thread | None = None
        if mode == "upload":  # at a random moment from the first request on
            at = time.monotonic() + rng.uniform(0.0, 0.8)
            killer = _killer(proc, lambda: time.monotonic() >= at, stop, fired)
        elif mode == "ingest":  # while a job runs, after a random number of its documents
            after = rng.randint(0, 3)
            killer = _killer(
                proc,
                lambda: bool(
                    _query(data, f"select 1 from jobs where status = 'running' and progress >= {after}")
                ),
                stop,
                fired,
            )
        first, second = chaos.batches(r)
        try:
            for batch, wait in ((first, False), (second, True)):
                body, headers = _multipart(*batch)
                resp = client.post(
                    "/v1/collections/c/documents", params={"wait": wait}, content=body, headers=headers
                )
                assert resp.status_code in (200, 202), resp.text
                job_ids.append(resp.json()["id"])
            while _busy(data) != (0, 0) and proc.poll() is None:
                time.sleep(0.05)
        except httpx.TransportError:  # the kill cut a request short
            info["request_cut"] = True
        stop.set()
        if killer is not None:
            killer.join(5)
        if not fired.is_set():  # idle, or the moment chosen came after the work was done
            info["mode"] = mode if mode == "idle" else f"{mode} (came idle)"
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        # Left behind by the kill: blobs nothing references (yet), and jobs to resume.
        info["orphans_left"] = len(_stored_blobs(data) - _referenced_blobs(data))
        info["busy_left"] = _busy(data)
        info["round_s"] = round(time.monotonic() - began, 1)
        chaos.rounds.append(info)
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _final_check(data: Path) -> None:
    """With the server stopped: after ``patchseek gc --grace 0`` the segment files on disk are exactly
    the manifest's, no unit is live twice, every unit of a ready document is in the index and no
    failed document has live rows."""
    from sqlalchemy import select

    from patchseek.api.db.models import Collection, IndexVersion
    from patchseek.api.services import ServiceContext
    from patchseek.search.manifest import read_manifest
    from patchseek.search.segments import list_segment_names
    from tests.conftest import make_settings

    env = {**os.environ, "PATCHSEEK_DATA_DIR": str(data), "PATCHSEEK_OCR": "false"}
    env.pop("PATCHSEEK_DATABASE_URL", None)
    gc = subprocess.run(
        [sys.executable, "-m", "patchseek.cli", "gc", "--grace", "0"], env=env, capture_output=True, text=True
    )
    assert gc.returncode == 0, gc.stderr
    assert _stored_blobs(data) == _referenced_blobs(data)
    ctx = ServiceContext.from_settings(make_settings(data, None, ocr=False))
    try:
        with ctx.db.session() as session:
            collection = session.scalar(select(Collection).where(Collection.name == "c"))
            assert collection is not None
            version = session.get(IndexVersion, collection.active_version_id)
            assert version is not None
            session.expunge(version)
        root = ctx.index_root(version.collection_id, version.number)
        assert set(list_segment_names(root)) == set(read_manifest(root).segments)
        snap = ctx.version_index(version).snapshot()
        live: dict[tuple[int, int], int] = {}
        for reader, deleted in zip(snap.readers, snap.deleted, strict=True):
            for d, o in zip(
                reader.doc_ids[~deleted].tolist(), reader.ordinals[~deleted].tolist(), strict=True
            ):
                live[(d, o)] = live.get((d, o), 0) + 1
        assert all(n == 1 for n in live.values()), "a unit is live twice"
        units = _query(
            data,
            "select u.document_id, u.ordinal from units u join documents d on d.id = u.document_id "
            "where d.status = 'ready'",
        )
        assert set(units) <= set(live), "a unit of a ready document is not in the index"
        failed = {row[0] for row in _query(data, "select id from documents where status != 'ready'")}
        assert not {d for d, _ in live} & failed, "a failed document has live rows in the index"
    finally:
        ctx.close()


def test_chaos_rounds_of_kill_9_leave_a_consistent_service(tmp_path: Path) -> None:
    started = time.monotonic()
    chaos = Chaos(tmp_path / "data", tmp_path / "server.log", random.Random(SEED))
    job_ids: list[int] = []
    for r in range(ROUNDS + 1):
        _round(chaos, r, job_ids)
        print(chaos.rounds[-1], flush=True)
    assert not chaos.server_errors, chaos.server_errors
    _final_check(chaos.data)
    modes = [i.get("mode", "") for i in chaos.rounds]
    print(
        f"{ROUNDS} rounds in {time.monotonic() - started:.0f} s (seed {SEED}): "
        f"{modes.count('upload')} kills during uploads, {modes.count('ingest')} during ingestion, "
        f"{ROUNDS - modes.count('upload') - modes.count('ingest')} idle, "
        f"{sum(bool(i.get('request_cut')) for i in chaos.rounds)} with a request cut short; "
        f"{sum(i.get('orphans_left', 0) for i in chaos.rounds)} orphan blobs left by kills, all swept; "
        f"final documents {chaos.rounds[-1]['docs']}"
    )
