"""The distributed pipeline's pieces that need no cluster: its public API, the progress tracker's
retry-safety, the GPU batch size rule and the input it sends to the cluster."""

from __future__ import annotations

import pickle

import pytest

from patchseek.indexer import distributed
from patchseek.indexer.distributed import _Tracker, encode_job, encoder_batch_size
from tests.conftest import make_settings


def test_public_api_is_pinned() -> None:
    assert sorted(distributed.__all__) == [
        "ClusterProgress",
        "DistributedResult",
        "DocumentOutcome",
        "DocumentTask",
        "EncodeJob",
        "RayOptions",
        "connect",
        "disconnect",
        "encode_job",
        "encoder_batch_size",
        "ray_options",
        "run_distributed",
    ]


class TestTracker:
    def test_a_retried_task_never_counts_twice(self) -> None:
        t = _Tracker()
        t.expect(1, 4)
        t.encoded(1, 3)
        t.expect(1, 4)  # the render task ran again after a worker died
        t.encoded(1, 2)  # the restarted actor reports from the start again
        t.encoded(1, 4)
        t.finish(1)
        t.finish(1)
        t.expect(2, 5)
        assert t.counts() == (4, 9, 1)

    def test_units_past_the_expected_count_raise_the_total(self) -> None:
        t = _Tracker()
        t.expect(7, 1)
        t.encoded(7, 3)
        assert t.counts() == (3, 3, 0)


class TestBatchSize:
    def test_lexical_and_cpu(self) -> None:
        assert encoder_batch_size("lexical", 4, None) == 64
        assert encoder_batch_size("vidore/colqwen2.5-v0.2", 4, None) == 4

    @pytest.mark.parametrize(("gib", "expected"), [(16, 4), (24, 8), (80, 36), (141, 64)])
    def test_gpu_memory_sets_the_batch(self, gib: int, expected: int) -> None:
        assert encoder_batch_size("vidore/colqwen2.5-v0.2", 4, gib << 30) == expected


def test_the_job_sent_to_the_cluster_holds_no_secrets_and_pickles(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from patchseek.api.services import ServiceContext

    settings = make_settings(
        tmp_path / "data", api_keys=["secret-key"], database_url="sqlite:///" + str(tmp_path / "x.db")
    )
    ctx = ServiceContext.from_settings(settings)
    try:

        class Version:
            encoder, dim, compression, collection_id, number = "lexical", 128, {"quantizer": "binary"}, 1, 1

        job = encode_job(settings, ctx.blobs.root, ctx.index_root(1, 1), Version(), ctx.read_options)
    finally:
        ctx.close()
    blob = pickle.dumps(job)
    assert b"secret-key" not in blob and b"x.db" not in blob
    assert pickle.loads(blob) == job
    assert job.encoder_settings["encoder"] == "lexical" and job.compression == {"quantizer": "binary"}


def test_a_job_on_an_object_store_names_the_store_and_the_version_prefix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With PATCHSEEK_STORAGE_URL every node opens the store itself: the job carries its URL, fsspec
    options and the version's prefix (never the database URL or API keys); without a store or a blob
    folder there is nowhere to read from, which is said."""
    from patchseek.errors import InvalidInputError
    from patchseek.storage import StorageSpec

    settings = make_settings(
        tmp_path / "data",
        storage_url="s3://bucket/data",
        storage_endpoint_url="http://127.0.0.1:9",
        api_keys=["secret-key"],
        database_url="sqlite:///" + str(tmp_path / "x.db"),
    )

    class Version:
        encoder, dim, compression, collection_id, number = "lexical", 128, {}, 1, 1

    job = encode_job(settings, None, tmp_path / "scratch", Version(), None, index_prefix="segments/1/v1/")  # type: ignore[arg-type]
    assert job.storage == StorageSpec(
        "s3://bucket/data",
        {"endpoint_url": "http://127.0.0.1:9"},
        cache_bytes=1 << 30,
        lock_seconds=settings.storage_lock_seconds,
        poll_s=settings.storage_poll_seconds,
    )
    assert job.index_prefix == "segments/1/v1/"
    blob = pickle.dumps(job)
    assert b"secret-key" not in blob and b"x.db" not in blob
    assert pickle.loads(blob) == job
    with pytest.raises(InvalidInputError, match="prefix"):
        encode_job(settings, None, tmp_path / "scratch", Version(), None)  # type: ignore[arg-type]
    local = make_settings(tmp_path / "data")
    with pytest.raises(InvalidInputError, match="PATCHSEEK_STORAGE_URL"):
        encode_job(local, None, tmp_path / "index", Version(), None)  # type: ignore[arg-type]
