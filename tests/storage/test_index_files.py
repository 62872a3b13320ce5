"""The index engine on every storage backend: what one node publishes another node (its own client
and empty cache, the same store) searches; writers on two nodes never lose an update; the object
store's create-only manifest fences a writer whose lease ran out; clean-ups."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from patchseek.errors import ConflictError
from patchseek.indexer.compress import CompressionConfig
from patchseek.search.engine import IndexEngine, UnitBatch
from patchseek.search.files import IndexFiles
from patchseek.types import PatchBag
from tests.storage.conftest import Backend

DIM = 16
PREFIX = "segments/7/v1/"


def _bags(rng: np.random.Generator, n_units: int) -> list[PatchBag]:
    out = []
    for _ in range(n_units):
        n = int(rng.integers(1, 12))
        v = torch.from_numpy(rng.standard_normal((n, DIM)).astype(np.float32))
        v = v / v.norm(dim=1, keepdim=True)
        out.append(PatchBag(v, torch.ones(n), torch.zeros(n, 2, dtype=torch.int64), (4, 4)))
    return out


def _node(backend: Backend, tmp_path: Path, **kw) -> IndexEngine:  # type: ignore[no-untyped-def]
    """A fresh engine on a fresh client of the store: what another node of the cluster would open."""
    storage = backend.open()
    scratch = storage.local_root / PREFIX if storage.local_root else tmp_path / f"scratch-{uuid.uuid4().hex}"
    files = IndexFiles(storage, PREFIX, scratch=scratch, poll_s=0.0, lock_seconds=kw.pop("lock_seconds", 60))
    return IndexEngine(scratch, DIM, kw.pop("compression", CompressionConfig()), files=files, **kw)


def _publish_docs(engine: IndexEngine, docs: range, rng: np.random.Generator, units: int = 3) -> None:
    for d in docs:
        engine.publish([engine.write(UnitBatch.from_bags(d, "pdf", _bags(rng, units), DIM))])


def _top(engine: IndexEngine, q: torch.Tensor) -> list[tuple[int, int, float]]:
    res = engine.snapshot().search(q, top_k_hits=5, stage1="exact")
    return [(h.doc_id, h.ordinal, round(h.score, 4)) for h in res.hits]


class TestTwoNodes:
    def test_another_node_searches_what_one_published(self, backend: Backend, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        a = _node(backend, tmp_path)
        _publish_docs(a, range(6), rng)
        q = torch.from_numpy(rng.standard_normal((4, DIM)).astype(np.float32))
        b = _node(backend, tmp_path)
        assert _top(b, q) == _top(a, q) and len(_top(a, q)) == 5
        assert b.snapshot().n_units == 18
        # A delete and more documents on node A: node B's next snapshot sees them.
        a.delete_documents([0, 1])
        _publish_docs(a, range(6, 8), rng)
        assert b.snapshot().n_units == 18 and _top(b, q) == _top(a, q)
        assert {h[0] for h in _top(b, q)}.isdisjoint({0, 1})

    def test_a_fitted_state_and_merges_reach_the_other_node(self, backend: Backend, tmp_path: Path) -> None:
        rng = np.random.default_rng(1)
        cfg = CompressionConfig.from_dict({"quantizer": "binary", "keep": "float16"})
        a = _node(backend, tmp_path, compression=cfg, merge_factor=3)
        _publish_docs(a, range(9), rng, units=10)  # > 256 vectors: enough to fit
        assert a.fit(force=True)
        b = _node(backend, tmp_path, compression=cfg, merge_factor=3)
        old = b.snapshot()  # node B holds a snapshot whose segments a merge on node A then removes
        q = torch.from_numpy(rng.standard_normal((4, DIM)).astype(np.float32))
        before = _top(b, q)
        assert a.maybe_merge().merges >= 1
        assert len(a.snapshot().readers) < len(old.readers)
        assert b.snapshot().state is not None and b.snapshot().state.name == a.snapshot().state.name  # type: ignore[union-attr]
        assert _top(b, q) == _top(a, q) == before
        # The old snapshot still answers from its (pinned) local copies of the merged-away segments.
        res = old.search(q, top_k_hits=5, stage1="exact")
        assert [(h.doc_id, h.ordinal, round(h.score, 4)) for h in res.hits] == before

    def test_concurrent_writers_on_two_nodes_lose_no_update(self, backend: Backend, tmp_path: Path) -> None:
        nodes = [_node(backend, tmp_path), _node(backend, tmp_path)]
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                _publish_docs(nodes[i], range(100 * i, 100 * i + 6), np.random.default_rng(i))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        snap = _node(backend, tmp_path).snapshot()
        assert snap.generation == 12 and len(snap.readers) == 12
        assert set(snap.doc_ids().tolist()) == {*range(6), *range(100, 106)}


class TestObjectStoreCommit:
    @pytest.fixture(autouse=True)
    def _object_stores_only(self, backend: Backend) -> None:
        if backend.kind == "local":
            pytest.skip("a local folder commits by rename under flock (tests/search/test_engine.py)")

    def test_a_stale_writer_is_fenced_and_loses_nothing(self, backend: Backend, tmp_path: Path) -> None:
        rng = np.random.default_rng(2)
        a, b = _node(backend, tmp_path), _node(backend, tmp_path)
        _publish_docs(a, range(2), rng)
        stale = a.files.read_manifest()  # node A read generation 2, then stalled past its lease...
        _publish_docs(b, range(2, 3), rng)  # ...while node B published generation 3
        with pytest.raises(ConflictError, match="generation 3 was published by another writer"):
            a.files.write_manifest(stale.bump(segments=stale.segments[:1]))
        assert a.snapshot().generation == 3 and set(a.snapshot().doc_ids().tolist()) == {0, 1, 2}

    def test_a_dead_holders_lease_expires(self, backend: Backend, tmp_path: Path) -> None:
        a = _node(backend, tmp_path, lock_seconds=30)
        lease = {"owner": "node-that-died", "expires": time.time() - 1}
        a.files.storage.put(PREFIX + "LOCK", json.dumps(lease).encode())
        started = time.monotonic()
        _publish_docs(a, range(1), np.random.default_rng(3))
        assert time.monotonic() - started < 25 and a.snapshot().n_units == 3
        assert not a.files.storage.exists(PREFIX + "LOCK")  # released after the publish

    def test_a_live_holder_renews_its_lease(self, backend: Backend, tmp_path: Path) -> None:
        """A holder busy for longer than the lease (a long fit) keeps the lock: it renews it."""
        # A lease of 1.5 s: its renewals (every third of it) stay on time on a loaded 2-core machine,
        # where 0.6 s was seen to lapse once while moto's server answered slowly.
        a = _node(backend, tmp_path, lock_seconds=1.5)
        b = _node(backend, tmp_path, lock_seconds=1.5)
        released = threading.Event()
        acquired_at: list[bool] = []
        with a.files.lock():
            t = threading.Thread(target=lambda: _take(b.files, released, acquired_at))
            t.start()
            time.sleep(5.0)  # over three lease lengths
            released.set()
        t.join()
        assert acquired_at == [True]  # b got the lock only after a let it go

    def test_old_generations_are_pruned(self, backend: Backend, tmp_path: Path) -> None:
        a = _node(backend, tmp_path)
        _publish_docs(a, range(12), np.random.default_rng(4))
        names = list(a.files.storage.list(PREFIX + "manifests/"))
        assert len(names) == 8 and names[-1].endswith(f"{12:020d}.json")


class TestCleanUp:
    def test_gc_removes_unlisted_segments_and_states(self, backend: Backend, tmp_path: Path) -> None:
        rng = np.random.default_rng(5)
        a = _node(
            backend,
            tmp_path,
            compression=CompressionConfig.from_dict({"quantizer": "binary", "keep": "float16"}),
        )
        _publish_docs(a, range(3), rng, units=30)
        orphan = a.write(UnitBatch.from_bags(99, "pdf", _bags(rng, 2), DIM))  # a writer that died
        assert a.fit(force=True) and a.fit(force=True)  # the first state is now unused
        states = {n.split("/")[3] for n in a.files.storage.list(PREFIX + "state-")}
        assert len(states) == 2
        assert a.gc(grace_s=3600) == 0  # everything is young
        assert a.gc(grace_s=0) == 2
        assert orphan not in a.files.segment_names()
        assert {n.split("/")[3] for n in a.files.storage.list(PREFIX + "state-")} == {a.snapshot().state.name}  # type: ignore[union-attr]
        assert a.snapshot().n_units == 90


def _take(files: IndexFiles, released: threading.Event, out: list[bool]) -> None:
    with files.lock():
        out.append(released.is_set())


def test_a_data_dir_written_before_opens_unchanged(tmp_path: Path) -> None:
    """The local backend keeps the 0.2 layout: a version folder and blob folder written by the old
    entry points (``IndexEngine(root)``, ``BlobStore(folder)``) are what the storage-backed ones read."""
    from patchseek.indexer.blobs import BlobStore
    from patchseek.storage import LocalStorage

    data = tmp_path / "data"
    old = IndexEngine(data / "segments" / "3" / "v1", DIM)
    _publish_docs(old, range(3), np.random.default_rng(6))
    key = BlobStore(data / "blobs").put(b"an upload")
    storage = LocalStorage(data)
    files = IndexFiles(storage, "segments/3/v1/")
    new = IndexEngine(data / "segments" / "3" / "v1", DIM, files=files)
    q = torch.from_numpy(np.random.default_rng(7).standard_normal((3, DIM)).astype(np.float32))
    assert _top(new, q) == _top(old, q) and new.snapshot().n_units == 9
    assert BlobStore(storage, "blobs/").get(key) == b"an upload"
    assert (data / "segments" / "3" / "v1" / "manifest.json").is_file()


def test_public_api() -> None:
    import patchseek.storage as storage

    assert set(storage.__all__) == {
        "FsspecStorage",
        "LocalFile",
        "LocalStorage",
        "ObjectInfo",
        "ObjectNotFoundError",
        "ReadCache",
        "Storage",
        "StorageSpec",
        "StorageUnavailableError",
        "check_name",
        "open_storage",
        "storage_from_settings",
    }
    for name in storage.__all__:
        assert getattr(storage, name) is not None
