"""The generated sample files are the same bytes on every generation, so ``make demo`` is idempotent."""

from __future__ import annotations

from pathlib import Path

from patchseek.samples import write_samples


def test_two_generations_write_identical_files(tmp_path: Path) -> None:
    first = write_samples(tmp_path / "one")
    second = write_samples(tmp_path / "two")
    for a, b in zip(first.all, second.all, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two generations"


def test_ingesting_a_new_generation_again_finds_only_duplicates(tmp_path: Path) -> None:
    """What ``make demo`` does on its second run: the regenerated files are all known already."""
    from patchseek.api.services import CollectionService, IngestService, ServiceContext
    from tests.conftest import make_settings

    ctx = ServiceContext.from_settings(make_settings(tmp_path / "data", None, ocr=False))
    try:
        CollectionService(ctx).create("demo")
        ingest = IngestService(ctx)
        for run, folder in enumerate(("one", "two")):
            files = [(p.name, p.read_bytes()) for p in write_samples(tmp_path / folder).all]
            job = ingest.submit("demo", files, status="running")
            if run == 0:
                assert job.total == 4
                assert ingest.run_job(job.id).status == "succeeded"
            else:
                assert job.total == 0 and job.status == "succeeded"
                assert sorted(
                    d["filename"] for d in job.result["documents"] if d["status"] == "duplicate"
                ) == [
                    "lecture.mp4",
                    "receipt.png",
                    "report.pdf",
                    "whiteboard.jpg",
                ]
    finally:
        ctx.close()
