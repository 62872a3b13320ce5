"""The index engine: segments, manifest, tombstones, merges, the fitted-state lifecycle, snapshots,
open files, several processes and kill -9 at every step."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from patchseek.indexer.compress import CompressionConfig
from patchseek.kernels import maxsim
from patchseek.search.engine import IndexEngine, UnitBatch, fit_rule
from patchseek.search.manifest import read_manifest
from patchseek.search.segments import SegmentFile, list_segment_names, write_segment
from patchseek.types import PatchBag

DIM = 16


def _bags(rng: np.random.Generator, n_units: int, max_patches: int = 12) -> list[PatchBag]:
    out = []
    for _ in range(n_units):
        n = int(rng.integers(0, max_patches))
        v = torch.from_numpy(rng.standard_normal((n, DIM)).astype(np.float32))
        v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-6)
        out.append(PatchBag(v, torch.ones(n), torch.zeros(n, 2, dtype=torch.int64), (4, 4)))
    return out


def _exact_top(docs: dict[int, list[PatchBag]], q: torch.Tensor, k: int) -> list[tuple[int, int]]:
    scored = []
    for d, bags in docs.items():
        for o, b in enumerate(bags):
            if b.n_patches:
                s = float(maxsim(q, b.vectors.half(), torch.tensor([0, b.n_patches]))[0])
                scored.append((-s, d, o))
    return [(d, o) for _, d, o in sorted(scored)[:k]]


def _fill(engine: IndexEngine, docs: dict[int, list[PatchBag]], start: int, n: int, rng) -> None:  # type: ignore[no-untyped-def]
    for d in range(start, start + n):
        docs[d] = _bags(rng, int(rng.integers(1, 5)))
        engine.publish([engine.write(UnitBatch.from_bags(d, "pdf", docs[d], DIM))])


def _fill_one_segment(engine: IndexEngine, docs: dict[int, list[PatchBag]], start: int, n: int, rng) -> None:  # type: ignore[no-untyped-def]
    batches = []
    for d in range(start, start + n):
        docs[d] = _bags(rng, 3, max_patches=16)
        batches.append(UnitBatch.from_bags(d, "pdf", docs[d], DIM))
    engine.publish([engine.write(UnitBatch.concat(batches, DIM))])


class TestSegmentFile:
    def test_round_trip_and_one_map_per_file(self, tmp_path: Path) -> None:
        parts = {"a": np.arange(10, dtype=np.int64), "b": np.ones((3, 4), np.float16), "e": np.zeros((0, 4))}
        write_segment(tmp_path, "x", parts, {"k": 1})
        seg = SegmentFile.open(tmp_path / "seg-x.seg")
        assert seg.meta == {"k": 1} and list_segment_names(tmp_path) == ["x"]
        for k, v in parts.items():
            np.testing.assert_array_equal(seg.parts[k], v)
        assert all(int(spec) % 64 == 0 for spec in [seg.parts["b"].ctypes.data - seg.parts["a"].ctypes.data])

    def test_unfinished_writes_are_invisible(self, tmp_path: Path) -> None:
        (tmp_path / ".tmp-y-1234.seg").write_bytes(b"PSEG0002garbage")
        assert list_segment_names(tmp_path) == []


class TestSearch:
    def test_matches_exact_maxsim_across_segments_and_after_merges(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        engine = IndexEngine(tmp_path, DIM, merge_factor=3)
        docs: dict[int, list[PatchBag]] = {}
        _fill(engine, docs, 1, 20, rng)
        q = torch.from_numpy(rng.standard_normal((5, DIM)).astype(np.float32))
        before = engine.snapshot()
        assert len(before.readers) == 20
        hits = before.search(q, top_k_hits=8).hits
        assert [(h.doc_id, h.ordinal) for h in hits] == _exact_top(docs, q, 8)
        stats = engine.maybe_merge()
        after = engine.snapshot()
        assert stats.merges >= 6 and len(after.readers) < 8
        assert [(h.doc_id, h.ordinal, h.score) for h in after.search(q, top_k_hits=8).hits] == [
            (h.doc_id, h.ordinal, h.score) for h in hits
        ]
        # The old snapshot keeps answering from its (unlinked) maps while the new one serves.
        assert [h.doc_id for h in before.search(q, top_k_hits=8).hits] == [h.doc_id for h in hits]

    def test_delete_leaves_the_next_search_and_a_merge_reclaims_the_space(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(1)
        engine = IndexEngine(tmp_path, DIM, merge_factor=100)
        docs: dict[int, list[PatchBag]] = {}
        _fill(engine, docs, 1, 6, rng)
        q = torch.from_numpy(rng.standard_normal((4, DIM)).astype(np.float32))
        top = engine.snapshot().search(q, top_k_hits=1).hits[0].doc_id
        size = sum(p.stat().st_size for p in tmp_path.glob("seg-*.seg"))
        engine.delete_documents([top])
        hits = engine.snapshot().search(q, top_k_hits=50).hits
        assert top not in {h.doc_id for h in hits}
        assert read_manifest(tmp_path).tombstones  # persisted
        assert IndexEngine(tmp_path, DIM).snapshot().search(q, top_k_hits=50).hits == hits  # other process
        engine.maybe_merge()  # the tombstoned segment (all of it deleted) is vacuumed
        assert sum(p.stat().st_size for p in tmp_path.glob("seg-*.seg")) < size
        assert not read_manifest(tmp_path).tombstones

    def test_merges_stop_at_the_segment_size_cap_and_exact_scans_run_in_chunks(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No merge writes a segment above MAX_SEGMENT_ROWS rows (segments of half of it are final), and
        an exact scan larger than EXACT_CHUNK_ROWS answers as one call would."""
        import patchseek.search.engine as engine_module

        rng = np.random.default_rng(7)
        engine = IndexEngine(tmp_path, DIM, merge_factor=4)
        docs: dict[int, list[PatchBag]] = {}
        for start in range(1, 61, 3):  # 20 segments of 3 documents x 3 units x 0-15 rows
            _fill_one_segment(engine, docs, start, 3, rng)
        q = torch.from_numpy(rng.standard_normal((5, DIM)).astype(np.float32))
        exact = engine.snapshot().search(q, top_k_hits=10, stage1="exact").hits
        cap = 200
        monkeypatch.setattr(engine_module, "MAX_SEGMENT_ROWS", cap)
        monkeypatch.setattr(engine_module, "EXACT_CHUNK_ROWS", 37)
        engine.maybe_merge(max_merges=100)
        snap = engine.snapshot()
        sizes = [r.n_rows for r in snap.readers]
        assert max(sizes) <= cap and len(sizes) < 20
        assert engine.merge_candidates(snap) == []  # what is left cannot merge under the cap
        chunked = snap.search(q, top_k_hits=10, stage1="exact").hits
        assert [(h.doc_id, h.ordinal) for h in chunked] == [(h.doc_id, h.ordinal) for h in exact]
        np.testing.assert_allclose([h.score for h in chunked], [h.score for h in exact], rtol=1e-5)
        assert [(h.doc_id, h.ordinal) for h in exact] == _exact_top(docs, q, 10)

    def test_republishing_a_document_replaces_its_units(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(2)
        engine = IndexEngine(tmp_path, DIM)
        bags = _bags(rng, 3)
        for _ in range(2):  # a re-run after a crash between publish and commit
            engine.publish([engine.write(UnitBatch.from_bags(7, "pdf", bags, DIM))])
        snap = engine.snapshot()
        assert snap.n_units == 3 and len(snap.readers) == 2

    def test_filters_and_text_less_units(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(3)
        engine = IndexEngine(tmp_path, DIM)
        docs: dict[int, list[PatchBag]] = {}
        _fill(engine, docs, 1, 5, rng)
        blank = [PatchBag(torch.zeros(0, DIM), torch.zeros(0), torch.zeros(0, 2, dtype=torch.int64), (0, 0))]
        engine.publish([engine.write(UnitBatch.from_bags(99, "image", blank, DIM))])
        from patchseek.search.engine import Filter

        q = torch.from_numpy(rng.standard_normal((3, DIM)).astype(np.float32))
        snap = engine.snapshot()
        only = snap.search(q, top_k_hits=50, flt=Filter(doc_ids=np.array([2, 3]))).hits
        assert only and {h.doc_id for h in only} <= {2, 3}
        hidden = snap.search(q, top_k_hits=50, flt=Filter(visible=np.array([1]), key=1)).hits
        assert {h.doc_id for h in hidden} == {1}
        assert 99 not in {h.doc_id for h in snap.search(q, top_k_hits=100).hits}
        assert snap.search(q, top_k_hits=5, flt=Filter(media=np.array([1], np.int8))).hits == []


class TestLifecycle:
    def test_codec_is_fitted_with_its_full_k_only_once_the_sample_suffices(self, tmp_path: Path) -> None:
        config = CompressionConfig(quantizer="kmeans", kmeans_k=32, keep="float16")
        need = 39 * 32
        assert fit_rule(config, need - 1, 10)[0] is False and fit_rule(config, need, 10)[0] is True
        rng = np.random.default_rng(4)
        engine = IndexEngine(tmp_path, DIM, config)
        docs: dict[int, list[PatchBag]] = {}
        _fill(engine, docs, 1, 1, rng)
        assert read_manifest(tmp_path).state is None  # one small document: scored exactly
        n = 1
        while read_manifest(tmp_path).state is None:
            _fill(engine, docs, n + 1, 10, rng)
            n += 10
            assert n < 400
        m = read_manifest(tmp_path)
        snap = engine.snapshot()
        assert m.fit["vectors"] >= need and m.fit["sample"] == m.fit["vectors"]
        assert snap.state is not None and snap.state.compressor is not None
        assert snap.state.compressor.quantizer.centroids.shape == (32, DIM)  # the full K
        assert all(r.codes is not None for r in snap.readers)
        _fill(engine, docs, n + 1, 3, rng)  # later segments are written with the codes at once
        assert all(r.codes is not None and r.state == m.state for r in engine.snapshot().readers)
        q = torch.from_numpy(rng.standard_normal((4, DIM)).astype(np.float32))
        exact = _exact_top(docs, q, 5)
        got = engine.snapshot().search(q, top_k_hits=5, candidates=len(docs) * 4).hits
        assert [(h.doc_id, h.ordinal) for h in got] == exact  # a full rerank is exact
        assert not engine.needs_refit()
        _fill(engine, docs, n + 4, 8 * n, rng)
        assert engine.needs_refit()

    def test_coarse_state_is_a_tree_and_a_flat_state_of_an_earlier_release_still_serves(
        self, tmp_path: Path
    ) -> None:
        from patchseek.search.candidates import FaissCandidateGenerator

        rng = np.random.default_rng(9)
        engine = IndexEngine(tmp_path, DIM)
        docs: dict[int, list[PatchBag]] = {}
        _fill_one_segment(engine, docs, 1, 400, rng)  # 1,200 units: the dense stage 1 is fitted
        m = read_manifest(tmp_path)
        assert m.state is not None
        tree = tmp_path / m.state / "coarse_tree.npz"
        assert tree.exists()
        state = engine.snapshot().state
        assert state is not None and state.coarse_top is not None and state.coarse is not None
        reader = engine.snapshot().readers[0]
        x = np.concatenate([b.vectors.numpy() for d in sorted(docs) for b in docs[d] if b.n_patches])
        assert reader.coarse is not None
        np.testing.assert_array_equal(np.asarray(reader.coarse), state.assign(x.astype(np.float16)))
        # A state written before the tree has only coarse.npy: it is assigned through FAISS, as then.
        tree.unlink()
        old = IndexEngine(tmp_path, DIM)
        flat = old.snapshot().state
        assert flat is not None and flat.coarse_top is None
        _fill_one_segment(old, docs, 401, 30, rng)
        snap = old.snapshot()
        newest = max(snap.readers, key=lambda r: int(r.doc_ids.min()))
        x_new = np.concatenate([b.vectors.numpy() for d in range(401, 431) for b in docs[d] if b.n_patches])
        assert flat.coarse is not None and newest.coarse is not None
        expect = FaissCandidateGenerator.assign(x_new.astype(np.float16).astype(np.float32), flat.coarse)
        np.testing.assert_array_equal(np.asarray(newest.coarse), expect)
        q = torch.from_numpy(rng.standard_normal((4, DIM)).astype(np.float32))
        got = snap.search(q, top_k_hits=5, stage1="exact").hits
        assert [(h.doc_id, h.ordinal) for h in got] == _exact_top(docs, q, 5)
        assert len(snap.search(q, top_k_hits=5).hits) == 5  # the dense stage 1 serves too

    def test_a_fit_runs_outside_the_writer_lock(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While the first fit trains (held here until the other writer is done), another engine on the
        same folder publishes, deletes and merges without waiting; the fit's swap then re-derives what
        was published or merged meanwhile and keeps the delete. A second fit returns at once."""
        config = CompressionConfig(quantizer="kmeans", kmeans_k=32, keep="float16")
        rng = np.random.default_rng(14)
        docs: dict[int, list[PatchBag]] = {}
        engine = IndexEngine(tmp_path, DIM, config, auto_fit=False)
        other = IndexEngine(tmp_path, DIM, config, auto_fit=False, merge_factor=2)
        _fill_one_segment(engine, docs, 1, 300, rng)  # ~6.7k vectors: k-means K=32 needs 1,248
        _fill_one_segment(engine, docs, 301, 20, rng)
        trained, released = threading.Event(), threading.Event()
        original = IndexEngine._fit_state

        def held(self: IndexEngine, snap, k_coarse):  # type: ignore[no-untyped-def]
            out = original(self, snap, k_coarse)
            if self is engine:
                trained.set()
                assert released.wait(60)
            return out

        monkeypatch.setattr(IndexEngine, "_fit_state", held)
        result: list[bool] = []
        fitter = threading.Thread(target=lambda: result.append(engine.fit()))
        fitter.start()
        assert trained.wait(60)
        assert other.fit() is False  # one fit at a time; the second caller does not wait

        def write_meanwhile() -> None:
            _fill_one_segment(other, docs, 401, 20, rng)
            _fill_one_segment(other, docs, 421, 20, rng)
            other.delete_documents([5, 405])
            other.maybe_merge()  # the two new segments of ~60 units merge (factor 2)

        writer = threading.Thread(target=write_meanwhile)
        writer.start()
        writer.join(60)
        blocked = writer.is_alive()
        released.set()
        fitter.join(60)
        writer.join(60)
        assert not blocked, "a writer waited for the fit"
        assert result == [True]
        del docs[5], docs[405]
        m = read_manifest(tmp_path)
        snap = engine.snapshot()
        assert m.state is not None and m.fit["units"] == 320 * 3
        assert all(r.state == m.state and r.codes is not None for r in snap.readers)
        assert set(snap.doc_ids().tolist()) == set(docs)
        assert set(list_segment_names(tmp_path)) == set(m.segments)  # no copy left behind
        q = torch.from_numpy(rng.standard_normal((4, DIM)).astype(np.float32))
        got = snap.search(q, top_k_hits=5, candidates=len(docs) * 3).hits
        assert [(h.doc_id, h.ordinal) for h in got] == _exact_top(docs, q, 5)

    @pytest.mark.parametrize("keep", ["int8", "none"])
    def test_keep_decides_the_rerank_column(self, tmp_path: Path, keep: str) -> None:
        config = CompressionConfig(quantizer="pq", pq_m=4, pq_opq=False, keep=keep)  # type: ignore[arg-type]
        rng = np.random.default_rng(5)
        engine = IndexEngine(tmp_path, DIM, config)
        docs: dict[int, list[PatchBag]] = {}
        _fill_one_segment(engine, docs, 1, 1500, rng)  # ~11k vectors: PQ needs 39·256
        snap = engine.snapshot()
        assert snap.state is not None
        parts = {k for r in snap.readers for k in r.file.parts}
        assert ("vectors_i8" in parts) == (keep == "int8") and "vectors" not in parts
        q = torch.from_numpy(rng.standard_normal((4, DIM)).astype(np.float32))
        hits = snap.search(q, top_k_hits=5, candidates=10_000).hits
        if keep == "int8":  # int8 rows with per-patch scales: close to exact
            assert len({(h.doc_id, h.ordinal) for h in hits} & set(_exact_top(docs, q, 5))) >= 4


class TestOpenFiles:
    def test_descriptors_grow_with_segments_not_documents(self, tmp_path: Path) -> None:
        """600 documents published one by one (600 segments before merges): after merges a snapshot holds
        one descriptor per segment, a few dozen in all."""
        rng = np.random.default_rng(6)
        engine = IndexEngine(tmp_path, DIM)
        docs: dict[int, list[PatchBag]] = {}
        before = len(os.listdir("/proc/self/fd"))
        for start in range(1, 601, 50):
            _fill(engine, docs, start, 50, rng)
            engine.maybe_merge()
        snap = engine.snapshot()
        assert snap.n_units == sum(len(b) for b in docs.values())
        assert len(snap.readers) <= 30
        assert len(os.listdir("/proc/self/fd")) - before <= len(snap.readers) + 5


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from patchseek.search.engine import IndexEngine, UnitBatch
    from patchseek.types import PatchBag
    root, start = sys.argv[1], int(sys.argv[2])
    engine = IndexEngine(root, 16, merge_factor=3)
    rng = np.random.default_rng(start)
    for d in range(start, start + 10_000):
        v = torch.from_numpy(rng.standard_normal((int(rng.integers(1, 300)), 16)).astype(np.float32))
        bag = PatchBag(v, torch.ones(len(v)), torch.zeros(len(v), 2, dtype=torch.int64), (4, 4))
        engine.publish([engine.write(UnitBatch.from_bags(d, "pdf", [bag, bag], 16))])
        print(d, flush=True)
        if d % 3 == 0:
            engine.delete_documents([d - 1])
        engine.maybe_merge()
    """
)


def test_kill_9_while_writing_merging_and_swapping_leaves_a_consistent_index(tmp_path: Path) -> None:
    """A writer process that publishes, deletes and merges is killed at random moments (inside a segment
    write, a merge or a manifest swap); every restart opens an index whose listed segments all exist,
    whose documents are each whole and live at most once, and that answers searches."""
    root = tmp_path / "idx"
    rnd = random.Random(7)
    start = 1
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(start)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # started and publishing
        assert line.strip(), "the writer did not start"
        time.sleep(rnd.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        engine = IndexEngine(root, 16)
        snap = engine.snapshot()
        assert all((root / f"seg-{n}.seg").exists() for n in snap.manifest.segments)
        seen: dict[int, int] = {}
        for r, deleted in zip(snap.readers, snap.deleted, strict=True):
            for d in r.doc_ids[~deleted].tolist():
                seen[d] = seen.get(d, 0) + 1
        assert all(n == 2 for n in seen.values())  # both units of a document, once each
        assert snap.search(torch.randn(3, 16), top_k_hits=3).hits
        engine.gc(grace_s=0)  # orphans of the killed writer go; listed segments stay
        assert set(list_segment_names(root)) == set(read_manifest(root).segments)
        start = max(seen) + 1 if seen else start + 10_000
