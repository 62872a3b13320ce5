"""Rules for re-queuing the jobs of dead workers (``JobService.requeue_stale``), on both databases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from patchseek.api.db.models import Document, Job, utcnow
from patchseek.api.services import CollectionService, IngestService, JobService, ServiceContext
from patchseek.api.services.jobs import MAX_ATTEMPTS, worker_identity, worker_is_dead
from tests.conftest import make_settings

HOST = socket.gethostname()


@pytest.fixture
def ctx(tmp_path: Path, database_url: str) -> Iterator[ServiceContext]:
    ctx = ServiceContext.from_settings(make_settings(tmp_path / "data", database_url, ocr=False))
    yield ctx
    ctx.close()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running_job(ctx: ServiceContext, samples, worker: str | None, beat_age: float) -> int:  # type: ignore[no-untyped-def]
    job = IngestService(ctx).submit("c", [("r.png", samples.receipt.read_bytes())])
    assert JobService(ctx).claim() == job.id
    with ctx.db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(worker=worker, heartbeat_at=utcnow() - timedelta(seconds=beat_age))
        )
    return job.id


def _running_job_age(ctx: ServiceContext, job_id: int, age: float) -> None:
    with ctx.db.session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=age))
        )


class TestWorkerIdentity:
    def test_this_process_is_alive_and_a_finished_one_is_dead(self) -> None:
        assert not worker_is_dead(worker_identity())
        assert worker_is_dead(f"{HOST}:{_dead_pid()}:abcd1234")

    def test_an_earlier_process_with_our_pid_is_dead(self) -> None:
        assert worker_is_dead(f"{HOST}:{os.getpid()}:another-token")

    def test_workers_of_other_hosts_are_left_to_their_heartbeat(self) -> None:
        assert not worker_is_dead(f"elsewhere.example:{_dead_pid()}:abcd1234")
        assert not worker_is_dead("garbage")


class TestRequeue:
    @pytest.fixture(autouse=True)
    def _collection(self, ctx: ServiceContext) -> None:
        CollectionService(ctx).create("c")

    def test_dead_local_worker_is_requeued_after_a_missed_beat(self, ctx, samples) -> None:  # type: ignore[no-untyped-def]
        beat = ctx.settings.job_heartbeat_seconds
        job_id = _running_job(ctx, samples, f"{HOST}:{_dead_pid()}:abcd1234", beat_age=0.5 * beat)
        jobs = JobService(ctx)
        assert jobs.requeue_stale() == 0  # its last beat is too recent to be sure
        _running_job_age(ctx, job_id, 2 * beat)
        assert jobs.requeue_stale() == 1
        assert jobs.get(job_id).status == "queued" and jobs.get(job_id).worker is None

    def test_live_worker_is_kept_and_a_silent_one_requeued(self, ctx, samples) -> None:  # type: ignore[no-untyped-def]
        beat = ctx.settings.job_heartbeat_seconds
        live = _running_job(ctx, samples, worker_identity(), beat_age=3 * beat)
        remote = _running_job(ctx, samples, f"elsewhere.example:{_dead_pid()}:abcd1234", beat_age=3 * beat)
        jobs = JobService(ctx)
        assert jobs.requeue_stale() == 0  # alive here; elsewhere: 3 missed beats are not enough
        _running_job_age(ctx, remote, 5 * beat)
        assert jobs.requeue_stale() == 1 and jobs.get(remote).status == "queued"
        assert jobs.get(live).status == "running"

    def test_a_job_whose_worker_died_too_often_fails_with_its_documents(self, ctx, samples) -> None:  # type: ignore[no-untyped-def]
        job_id = _running_job(ctx, samples, f"{HOST}:{_dead_pid()}:abcd1234", beat_age=60)
        with ctx.db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(attempts=MAX_ATTEMPTS))
        assert JobService(ctx).requeue_stale() == 1
        job = JobService(ctx).get(job_id)
        assert job.status == "failed" and job.finished_at is not None
        with ctx.db.session() as session:
            doc = session.query(Document).filter(Document.job_id == job_id).one()
        assert doc.status == "failed" and doc.error_code == "worker_died"

    def test_heartbeat_keeps_a_long_job_alive(self, ctx, samples) -> None:  # type: ignore[no-untyped-def]
        ctx.settings.job_heartbeat_seconds = 0.05
        job_id = _running_job(ctx, samples, None, beat_age=60)
        jobs = JobService(ctx)
        with jobs.heartbeat(job_id):
            time.sleep(0.5)  # ten intervals: a job without beats would be stale by now
            assert jobs.get(job_id).worker == worker_identity()
            assert jobs.requeue_stale() == 0
