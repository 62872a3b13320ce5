"""Database-backed job queue: submit, claim, run, cancel; workers poll it.

Claiming is atomic: ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL (several workers never take the
same job), a conditional ``UPDATE … WHERE status='queued'`` on SQLite (one writer at a time).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import CursorResult, or_, select, update

from patchseek.api.db.models import Collection, Document, Job, utcnow
from patchseek.api.services.context import ServiceContext
from patchseek.api.services.ingest import IngestService
from patchseek.api.services.rebuild import RebuildService
from patchseek.api.services.search import SearchService
from patchseek.errors import ConflictError, NotFoundError

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


class JobService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.ingest = IngestService(ctx)
        self.rebuild = RebuildService(ctx)

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
                job.heartbeat_at = utcnow()
                return job.id
            job_id = session.scalar(select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(1))
            if job_id is None:
                return None
            claimed: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(
                    status="running", started_at=utcnow(), heartbeat_at=utcnow(), attempts=Job.attempts + 1
                )
            )
            return job_id if claimed.rowcount else None

    def run(self, job_id: int) -> None:
        """Run a claimed job; an unexpected crash re-queues it up to ``MAX_ATTEMPTS`` times."""
        try:
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                kind = job.kind if job is not None else "ingest"
            if kind == "rebuild":
                self.rebuild.run_job(job_id)
            else:
                self.ingest.run_job(job_id)
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
        """Jobs left 'running' by a process that died go back to the queue.

        A job is stale when its heartbeat is older than ``max_age_seconds`` (default
        ``PATCHSEEK_JOB_STALE_SECONDS``); live workers refresh theirs as they make progress.
        """
        age = self.ctx.settings.job_stale_seconds if max_age_seconds is None else max_age_seconds
        cutoff = utcnow() - timedelta(seconds=age)
        with self.ctx.db.session() as session:
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(Job)
                .where(Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
                .values(status="queued")
            )
            return int(result.rowcount)

    def run_pending(self) -> int:
        """Run queued jobs until none is left; returns how many ran."""
        n = 0
        while (job_id := self.claim()) is not None:
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
        last_sweep = 0.0
        while not self._stop_event.is_set():
            try:
                if time.monotonic() - last_sweep > 60:
                    self.jobs.requeue_stale()
                    last_sweep = time.monotonic()
                ran = self.jobs.run_pending()
            except Exception:
                log.exception("worker loop error")
                ran = 0
            if not ran:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
