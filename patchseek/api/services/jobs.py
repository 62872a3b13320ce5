"""Database-backed job queue: submit, claim, run, cancel; workers poll it.

Claiming is atomic: ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL (several workers never take the
same job), a conditional ``UPDATE … WHERE status='queued'`` on SQLite (one writer at a time).

A running job records who runs it (``Job.worker``, ``host:pid:start-token``) and a heartbeat that a
thread refreshes every ``PATCHSEEK_JOB_HEARTBEAT_SECONDS``. ``requeue_stale`` (at startup and every
heartbeat interval in each worker) puts a job back in the queue when its worker is on this host and
its process is gone, or when its heartbeat is older than four intervals (a worker on another host).
Workers also sweep the blob store for blobs nothing references (``blobgc.sweep_orphan_blobs``), and the
index folders for segment files no manifest lists: at start, after re-queueing the jobs of dead
workers, and then once per ``PATCHSEEK_ORPHAN_GRACE_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, select, update

from patchseek.api.db.models import Collection, Document, Job, utcnow
from patchseek.api.services.blobgc import SweepReport, sweep_orphan_blobs
from patchseek.api.services.context import ServiceContext
from patchseek.api.services.evaluation import KIND as EVALUATION
from patchseek.api.services.evaluation import EvaluationService
from patchseek.api.services.ingest import IngestService
from patchseek.api.services.rebuild import RebuildService
from patchseek.api.services.search import SearchService
from patchseek.errors import ConflictError, JobInterrupted, NotFoundError

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
# A job is stale after this many heartbeat intervals without a beat, whoever runs it.
STALE_BEATS = 4
# A worker that this host shows dead is trusted only once its job has missed this many beats too: two
# containers can share a host name (and pid 1) while their processes cannot see each other.
DEAD_BEATS = 1.5

# Tells this process from an earlier one with the same pid (a restarted container is pid 1 again).
_START_TOKEN = secrets.token_hex(4)


def worker_identity() -> str:
    """``host:pid:start-token`` of this process, recorded on the jobs it runs."""
    return f"{socket.gethostname()[:200]}:{os.getpid()}:{_START_TOKEN}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def worker_is_dead(identity: str) -> bool:
    """True when ``identity`` (see ``worker_identity``) is a process of this host that no longer runs.

    Workers of other hosts are never judged dead here; their heartbeat decides.
    """
    parts = identity.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid_text, token = parts
    if host != socket.gethostname()[:200]:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return token != _START_TOKEN  # an earlier process that had our pid
    return not _pid_alive(pid)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite gives back naive datetimes; everything is stored in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class JobService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.ingest = IngestService(ctx)
        self.rebuild = RebuildService(ctx)
        self._last_sweep = float("-inf")
        self._last_blob_sweep = float("-inf")

    def get(self, job_id: int) -> Job:
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            return job

    def cancel(self, job_id: int) -> Job:
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            if job.status not in ("queued", "running"):
                raise ConflictError(
                    f"job {job_id} is {job.status}; only queued or running jobs can be cancelled"
                )
            was_queued = job.status == "queued"
            job.status = "cancelled"
            if was_queued:
                # Nothing ran: its documents will never be ingested, so they must not block re-uploads.
                job.finished_at = utcnow()
                for doc in session.scalars(
                    select(Document).where(Document.job_id == job.id, Document.status == "pending")
                ):
                    doc.status, doc.error, doc.error_code = "failed", "the job was cancelled", "cancelled"
            return job

    def claim(self) -> int | None:
        """Take the oldest queued job, or None."""
        with self.ctx.db.session() as session:
            if self.ctx.db.is_postgres:
                job = session.scalar(
                    select(Job)
                    .where(Job.status == "queued")
                    .order_by(Job.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                if job is None:
                    return None
                job.status, job.started_at, job.attempts = "running", utcnow(), job.attempts + 1
                job.heartbeat_at, job.worker = utcnow(), worker_identity()
                return job.id
            job_id = session.scalar(select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(1))
            if job_id is None:
                return None
            claimed: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running",
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                    worker=worker_identity(),
                    attempts=Job.attempts + 1,
                )
            )
            return job_id if claimed.rowcount else None

    @contextmanager
    def heartbeat(self, job_id: int) -> Iterator[None]:
        """Mark this process as the runner of ``job_id`` and beat for it until the block ends.

        A thread refreshes ``heartbeat_at`` every ``PATCHSEEK_JOB_HEARTBEAT_SECONDS``, however long one
        document takes, so that a job whose beats stop can be re-queued within seconds.
        """
        identity = worker_identity()
        with self.ctx.db.session() as session:
            session.execute(
                update(Job).where(Job.id == job_id).values(worker=identity, heartbeat_at=utcnow())
            )
        stop = threading.Event()
        thread = threading.Thread(
            target=self._beat, args=(job_id, identity, stop), name=f"heartbeat-{job_id}", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)

    def _beat(self, job_id: int, identity: str, stop: threading.Event) -> None:
        while not stop.wait(self.ctx.settings.job_heartbeat_seconds):
            try:
                with self.ctx.db.session() as session:
                    session.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.worker == identity, Job.status == "running")
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:  # a busy or unreachable database: the next beat tries again
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)

    def run(self, job_id: int) -> None:
        """Run a claimed job; an unexpected crash re-queues it up to ``MAX_ATTEMPTS`` times.

        The job holds a heavy slot (``ServiceContext.heavy_slot``) while it runs and beats its heartbeat.
        """
        try:
            with self.heartbeat(job_id), self.ctx.heavy_slot(wait_forever=True):
                with self.ctx.db.session() as session:
                    job = session.get(Job, job_id)
                    kind = job.kind if job is not None else "ingest"
                if kind == "rebuild":
                    self.rebuild.run_job(job_id)
                elif kind == EVALUATION:
                    EvaluationService(self.ctx).run_job(job_id)
                else:
                    self.ingest.run_job(job_id)
        except JobInterrupted:
            # A shutdown, not a failure: back to the queue without using up an attempt.
            log.info("job %s interrupted by shutdown; re-queued", job_id)
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                if job is not None and job.status == "running":
                    job.status, job.worker, job.attempts = "queued", None, max(job.attempts - 1, 0)
            return
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                if job is not None:
                    retry = job.attempts < MAX_ATTEMPTS
                    job.status = "queued" if retry else "failed"
                    job.error = f"{type(exc).__name__}: {exc}"
                    if not retry:
                        job.finished_at = utcnow()
            return
        self.prepare_search(job_id)

    def prepare_search(self, job_id: int) -> int | None:
        """Index maintenance after a job (``SearchService.prepare``: tiered merges, orphan removal);
        queues a refit rebuild when the collection outgrew its codec's fit and returns its job id. A
        failure here is logged: the job's documents are committed and searchable."""
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            collection = None if job is None else session.get(Collection, job.collection_id)
            name = None if collection is None else collection.name
        if name is None:
            return None
        try:
            done = SearchService(self.ctx).prepare(name)
        except Exception:
            log.exception("maintaining the search index of %r after job %s failed", name, job_id)
            return None
        if done["refit_due"]:  # the collection outgrew its codec's fit: refit by a rebuild
            try:
                return int(RebuildService(self.ctx).submit(name).id)
            except ConflictError:  # a rebuild is already queued or running
                return None
        return None

    def requeue_stale(self, max_age_seconds: float | None = None) -> int:
        """Jobs left 'running' by a process that died go back to the queue; returns how many.

        A job with a recorded worker (see the module docstring) is stale when that worker is a dead
        process of this host and the job missed ``DEAD_BEATS`` heartbeats, or when it missed
        ``STALE_BEATS`` heartbeats (or ``max_age_seconds``, if smaller). A job without one (run by
        ``patchseek ingest``, whose heartbeat follows its progress) is stale after ``max_age_seconds``
        (default ``PATCHSEEK_JOB_STALE_SECONDS``). A job whose worker died ``MAX_ATTEMPTS`` times fails
        instead, with its pending documents, so that a file that kills the process cannot do it forever.
        """
        beat = self.ctx.settings.job_heartbeat_seconds
        legacy_age = self.ctx.settings.job_stale_seconds if max_age_seconds is None else max_age_seconds
        now = utcnow()
        with self.ctx.db.session() as session:
            running = session.execute(
                select(Job.id, Job.worker, Job.heartbeat_at, Job.started_at, Job.attempts).where(
                    Job.status == "running"
                )
            ).all()
        stale: list[tuple[int, str | None, int]] = []
        for job_id, worker, heartbeat_at, started_at, attempts in running:
            last = _aware(heartbeat_at) or _aware(started_at)
            age = float("inf") if last is None else (now - last).total_seconds()
            if worker is None:
                dead = age > legacy_age
            else:
                dead = age > min(legacy_age, STALE_BEATS * beat) or (
                    age > DEAD_BEATS * beat and worker_is_dead(worker)
                )
            if dead:
                stale.append((job_id, worker, attempts))
        n = 0
        for job_id, worker, attempts in stale:
            with self.ctx.db.session() as session:
                # Only if nobody took it meanwhile (same worker still recorded, still running).
                same = Job.worker.is_(None) if worker is None else Job.worker == worker
                give_up = attempts >= MAX_ATTEMPTS
                values: dict[str, Any] = {"status": "failed" if give_up else "queued", "worker": None}
                if give_up:
                    values["finished_at"] = utcnow()
                    values["error"] = (
                        f"the process running this job died {attempts} times; it is not retried again"
                    )
                result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    update(Job).where(Job.id == job_id, Job.status == "running", same).values(**values)
                )
                if not result.rowcount:
                    continue
                n += 1
                log.warning("job %s of dead worker %s: %s", job_id, worker, values["status"])
                if give_up:
                    for doc in session.scalars(
                        select(Document).where(Document.job_id == job_id, Document.status == "pending")
                    ):
                        doc.status, doc.error_code = "failed", "worker_died"
                        doc.error = "the process ingesting this file died repeatedly; check the file"
        return n

    def sweep(self) -> int:
        """``requeue_stale`` at most once per heartbeat interval, and ``sweep_orphans`` at the first call
        and then once per ``PATCHSEEK_ORPHAN_GRACE_SECONDS`` (workers call it between jobs). Returns how
        many jobs were re-queued."""
        now = time.monotonic()
        beat = self.ctx.settings.job_heartbeat_seconds
        n = 0
        if now - self._last_sweep >= beat:
            self._last_sweep = now
            n = self.requeue_stale()
        if now - self._last_blob_sweep >= max(beat, self.ctx.settings.orphan_grace_seconds):
            self._last_blob_sweep = now
            self.sweep_orphans()
        return n

    def sweep_orphans(self) -> SweepReport | None:
        """Remove blobs that nothing references (``blobgc.sweep_orphan_blobs``: page images of
        documents that failed part-way or whose process was killed), then segment files no manifest
        lists (``SearchService.remove_orphan_files``). A failure is logged, not raised: it must not stop
        a worker from running jobs."""
        report = None
        try:
            report = sweep_orphan_blobs(self.ctx.db, self.ctx.blobs, self.ctx.settings.orphan_grace_seconds)
            SearchService(self.ctx).remove_orphan_files()
        except Exception:
            log.exception("the orphan sweep failed")
        return report

    def run_pending(self) -> int:
        """Re-queue the jobs of dead workers, then run queued jobs until none is left; returns how many
        ran."""
        self.sweep()
        n = 0
        while not self.ctx.stopping.is_set() and (job_id := self.claim()) is not None:
            self.run(job_id)
            n += 1
        return n


class Worker(threading.Thread):
    """Polls the queue and runs jobs; ``stop()`` ends it after the current job."""

    def __init__(self, ctx: ServiceContext, *, poll_seconds: float = 0.5) -> None:
        super().__init__(name="patchseek-worker", daemon=True)
        self.jobs = JobService(ctx)
        self.poll_seconds = poll_seconds
        self._stop_event = threading.Event()
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                ran = self.jobs.run_pending()  # sweeps for jobs of dead workers first
            except Exception:
                log.exception("worker loop error")
                ran = 0
            if not ran:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
