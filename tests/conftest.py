"""Shared fixtures: generated sample files, the shared corpus, databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchseek.config import Settings
from patchseek.samples import SampleSet, write_samples

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "pdf-samples"
KERNEL_TESTS = Path(__file__).resolve().parent / "kernels"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Kernel tests run in their own process, ``TRITON_INTERPRET=1 pytest tests/kernels`` (``make
    test`` does both): the variable must be set before Triton is imported, and set for the whole
    suite it would send every other test's scoring through the 300x slower interpreter."""
    if collection_path == KERNEL_TESTS and os.environ.get("TRITON_INTERPRET") != "1":
        import torch

        return not torch.cuda.is_available()
    return None


POSTGRES_ADMIN_URL = os.environ.get(
    "PATCHSEEK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    """The project's generated sample PDF, images and video."""
    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """``../shared/corpus/pdf-samples``; tests that use it skip where it is absent."""
    if not CORPUS.is_dir():
        pytest.skip("the shared sample corpus (../shared/corpus) is not present")
    return CORPUS


def _postgres_database() -> Iterator[str]:
    """Create a throw-away PostgreSQL database and yield its URL (skip if no server, fail in CI)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"patchseek_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'patchseek.db'}"
    else:
        yield from _postgres_database()


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: object) -> Settings:
    """Settings for tests: fewer video frames and a small render DPI keep OCR and rendering quick."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "video_interval": 1.5,
        "pdf_dpi": 72,
        "worker_in_process": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url)
