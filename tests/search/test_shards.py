"""Shards of a snapshot and the merge of their shortlists (engine level, no Ray).

A collection above the exact-scan threshold (so stage 1 is the dense scan or FAISS lists, not exact),
split into 2 and 3 shards by segment: the merged answer must be the unsharded one, unit for unit and
score for score, for every stage-1 kind, with and without a rerank, under filters and tombstones and
with ties; the ``union`` merge may only find better-scored units; a missing shard leaves the others'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from patchseek.indexer.compress import CompressionConfig
from patchseek.search.base import top_k
from patchseek.search.candidates import EXACT_THRESHOLD, has_faiss
from patchseek.search.engine import Filter, IndexEngine, Snapshot, UnitBatch, shard_of
from patchseek.search.shards import merge_shortlists

DIM = 32
N_SEGMENTS = 12
UNITS_PER_SEGMENT = 200  # 2,400 units: above EXACT_THRESHOLD
N_QUERIES = 8


def _segment(rng: np.random.Generator, first_doc: int, centers: np.ndarray) -> UnitBatch:
    """UNITS_PER_SEGMENT units (4 per document) of 1-8 patches near random topic centers."""
    lengths = rng.integers(1, 9, UNITS_PER_SEGMENT)
    n = int(lengths.sum())
    topic = np.repeat(rng.integers(0, len(centers), UNITS_PER_SEGMENT), lengths)
    v = centers[topic] + 0.6 * rng.standard_normal((n, DIM))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    docs = first_doc + np.arange(UNITS_PER_SEGMENT) // 4
    return UnitBatch(
        doc_ids=docs.astype(np.int64),
        ordinals=(np.arange(UNITS_PER_SEGMENT) % 4).astype(np.int32),
        media=np.where(docs % 3 == 0, 1, 0).astype(np.int8),
        lengths=lengths.astype(np.int64),
        vectors=v.astype(np.float16),
        positions=np.zeros((n, 2), np.int16),
        salience=np.ones(n, np.float16),
    )


def _build(root: Path, compression: dict) -> tuple[IndexEngine, list[torch.Tensor]]:
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((40, DIM))
    engine = IndexEngine(root, DIM, CompressionConfig.from_dict(compression))
    for s in range(N_SEGMENTS):
        engine.publish([engine.write(_segment(rng, s * 1000, centers))])
    queries = []
    for _ in range(N_QUERIES):
        q = centers[rng.integers(0, len(centers))] + 0.8 * rng.standard_normal((5, DIM))
        queries.append(torch.from_numpy((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)))
    return engine, queries


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[IndexEngine, list[torch.Tensor]]:
    """A codec-less collection: dense summary rows for stage 1, exact rerank."""
    return _build(tmp_path_factory.mktemp("dense"), {})


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> tuple[IndexEngine, list[torch.Tensor]]:
    """A sign-binary collection: FAISS lists for stage 1, the codec's scores for stage 2."""
    if not has_faiss():
        pytest.skip("faiss is not installed")
    return _build(tmp_path_factory.mktemp("coded"), {"quantizer": "binary"})


def _sharded(snap: Snapshot, n: int, q: torch.Tensor, mode: str = "unsharded", **kw):  # type: ignore[no-untyped-def]
    parts = [snap.shard(i, n).shortlist(q, **kw) for i in range(n)]
    return merge_shortlists(parts, kw.get("top_k_hits", 10), mode=mode)  # type: ignore[arg-type]


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert [(h.doc_id, h.ordinal) for h in a.hits] == [(h.doc_id, h.ordinal) for h in b.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=0, atol=1e-5)
    assert a.n_units == b.n_units and a.stage1 == b.stage1


class TestShardView:
    def test_shards_partition_the_segments_by_a_stable_hash(self, dense) -> None:  # type: ignore[no-untyped-def]
        snap = dense[0].snapshot()
        assert len(snap.readers) >= 3
        for n in (1, 2, 3):
            views = [snap.shard(i, n) for i in range(n)]
            names = [r.name for v in views for r in v.readers]
            assert sorted(names) == sorted(r.name for r in snap.readers)  # each segment in exactly one
            assert sum(v.n_units for v in views) == snap.n_units
            for i, v in enumerate(views):
                assert all(shard_of(r.name, n) == i for r in v.readers)
        # The same name always lands on the same shard (CRC-32, not Python's salted hash).
        assert shard_of("0123abcd", 7) == 2366526479 % 7  # zlib.crc32(b"0123abcd"), pinned

    def test_a_shard_out_of_range_is_refused(self, dense) -> None:  # type: ignore[no-untyped-def]
        from patchseek.errors import InvalidInputError

        with pytest.raises(InvalidInputError):
            dense[0].snapshot().shard(2, 2)

    def test_a_shard_resolves_stage1_on_the_whole_collection(self, dense) -> None:  # type: ignore[no-untyped-def]
        snap = dense[0].snapshot()
        assert snap.n_units >= EXACT_THRESHOLD and snap.stage1_kind() == "dense"
        small = snap.shard(0, 3)
        assert small.n_units < EXACT_THRESHOLD  # alone it would scan exactly
        assert small.stage1_kind() == "dense"


class TestMergeEqualsUnsharded:
    @pytest.mark.parametrize("n", [2, 3])
    @pytest.mark.parametrize(
        "kw",
        [
            {},
            {"candidates": 12},
            {"rerank": False},
            {"stage1": "exact"},
            {"top_k_hits": 25, "candidates": 30, "stage1_k": 40},
        ],
        ids=["default", "short-shortlist", "no-rerank", "exact-scan", "top25"],
    )
    def test_dense_stage1(self, dense, n, kw) -> None:  # type: ignore[no-untyped-def]
        engine, queries = dense
        snap = engine.snapshot()
        for q in queries:
            whole = snap.search(q, **kw)
            assert whole.hits and whole.stage1 == kw.get("stage1", "dense")
            _same(_sharded(snap, n, q, **kw), whole)

    @pytest.mark.parametrize("n", [2, 3])
    @pytest.mark.parametrize("kw", [{}, {"candidates": 12, "nprobe": 4}, {"rerank": False}], ids=str)
    def test_faiss_stage1_and_codec_scores(self, coded, n, kw) -> None:  # type: ignore[no-untyped-def]
        engine, queries = coded
        snap = engine.snapshot()
        assert snap.state is not None and snap.state.compressor is not None
        for q in queries:
            whole = snap.search(q, **kw)
            assert whole.hits and whole.stage1 == "faiss"
            _same(_sharded(snap, n, q, **kw), whole)

    def test_the_shortlist_cut_matters_so_the_test_can_fail(self, dense) -> None:  # type: ignore[no-untyped-def]
        """Each shard's own top 10 merged by exact score (no global stage-2 cut) is *not* always the
        unsharded answer with a short shortlist: the ``unsharded`` mode's cut is what makes it equal."""
        engine, queries = dense
        snap = engine.snapshot()
        differs = 0
        for q in queries:
            whole = snap.search(q, candidates=10)
            union = _sharded(snap, 3, q, mode="union", candidates=10)
            differs += [(h.doc_id, h.ordinal) for h in whole.hits] != [
                (h.doc_id, h.ordinal) for h in union.hits
            ]
        assert differs > 0

    def test_filters_and_tombstones(self, tmp_path: Path) -> None:
        engine, queries = _build(tmp_path, {})
        snap = engine.snapshot()
        top = [snap.search(q).hits[0].doc_id for q in queries[:4]]
        engine.delete_documents(top)
        snap = engine.snapshot()
        visible = np.setdiff1d(snap.doc_ids(), np.arange(0, 12_000, 7))  # a "ready documents" filter
        flt = Filter(visible=visible, key=1, media=np.array([0], np.int8))
        for q in queries:
            whole = snap.search(q, flt=flt)
            assert not {h.doc_id for h in whole.hits} & set(top)
            assert all(h.doc_id % 3 != 0 and h.doc_id % 7 != 0 for h in whole.hits)
            _same(_sharded(snap, 2, q, flt=flt), whole)
        ids = Filter(doc_ids=np.array(sorted(visible[:40]), np.int64))
        _same(_sharded(snap, 3, queries[0], flt=ids), snap.search(queries[0], flt=ids))

    def test_ties_break_on_manifest_wide_keys(self, tmp_path: Path) -> None:
        """Identical units in several segments tie exactly: shards must rank them as the whole does."""
        rng = np.random.default_rng(3)
        unit = rng.standard_normal((3, DIM)).astype(np.float16)
        engine = IndexEngine(tmp_path, DIM, CompressionConfig())
        for s in range(8):
            n = 6
            engine.publish(
                [
                    engine.write(
                        UnitBatch(
                            np.arange(s * 10, s * 10 + n, dtype=np.int64),
                            np.zeros(n, np.int32),
                            np.zeros(n, np.int8),
                            np.full(n, 3, np.int64),
                            np.tile(unit, (n, 1)),
                            np.zeros((3 * n, 2), np.int16),
                            np.ones(3 * n, np.float16),
                        )
                    )
                ]
            )
        snap = engine.snapshot()
        q = torch.from_numpy(unit[:2].astype(np.float32))
        for n in (2, 3, 5):
            for kw in ({"top_k_hits": 7}, {"top_k_hits": 7, "stage1": "exact", "rerank": False}):
                whole = snap.search(q, **kw)
                assert len({h.score for h in whole.hits}) == 1  # all tied
                _same(_sharded(snap, n, q, **kw), whole)


class TestMergeModesAndGaps:
    def test_union_only_finds_better_scored_units(self, dense) -> None:  # type: ignore[no-untyped-def]
        engine, queries = dense
        snap = engine.snapshot()
        for q in queries:
            exact = [h.score for h in snap.search(q, stage1="exact").hits]
            whole = [h.score for h in snap.search(q, candidates=10).hits]
            union = [h.score for h in _sharded(snap, 3, q, mode="union", candidates=10).hits]
            assert len(union) == len(whole) == 10
            assert all(u >= w - 1e-6 for u, w in zip(union, whole, strict=True))  # i-th best vs i-th best
            assert all(e >= u - 1e-6 for e, u in zip(exact, union, strict=True))  # exact is the ceiling

    def test_a_missing_shard_leaves_the_best_of_the_others(self, dense) -> None:  # type: ignore[no-untyped-def]
        engine, queries = dense
        snap = engine.snapshot()
        live = snap.shard(0, 2)
        docs = set(live.doc_ids().tolist())
        for q in queries[:4]:
            got = merge_shortlists([live.shortlist(q)], 10)
            assert got.hits and {h.doc_id for h in got.hits} <= docs
            assert [(h.doc_id, h.ordinal) for h in got.hits] == [
                (h.doc_id, h.ordinal) for h in live.search(q).hits
            ]
        assert merge_shortlists([], 10).hits == []

    def test_a_unit_listed_twice_counts_once_and_empty_shards_are_harmless(self, dense) -> None:  # type: ignore[no-untyped-def]
        engine, queries = dense
        snap = engine.snapshot()
        q = queries[0]
        parts = [snap.shard(i, 2).shortlist(q) for i in range(2)]
        twice = merge_shortlists([*parts, parts[0]], 10, mode="union")
        units = [(h.doc_id, h.ordinal) for h in twice.hits]
        assert len(set(units)) == len(units) == 10
        many = len(snap.readers) + 5  # more shards than segments: some hold nothing
        assert any(not snap.shard(i, many).readers for i in range(many))
        _same(_sharded(snap, many, q), snap.search(q))

    def test_an_unknown_mode_is_refused(self) -> None:
        with pytest.raises(ValueError):
            merge_shortlists([], 10, mode="best")  # type: ignore[arg-type]


def test_top_k_breaks_ties_at_the_cut_on_the_lower_unit() -> None:
    scores = np.array([1.0, 2.0, 2.0, 2.0, 0.5, 2.0], np.float32)
    units = np.array([9, 40, 30, 20, 1, 10], np.int64)
    for _ in range(5):
        perm = np.random.default_rng().permutation(units.size)
        got, s = top_k(scores[perm], units[perm], 2)
        assert got.tolist() == [10, 20] and s.tolist() == [2.0, 2.0]


class TestShardServer:
    """The shard server's logic as a plain object (Ray only transports it): it opens the version
    folder through the engine, follows the manifest, and answers like ``Snapshot.shard``."""

    def test_it_follows_new_segments_and_deletes_through_the_manifest(self, tmp_path: Path) -> None:
        from patchseek.search.engine import REGISTRY
        from patchseek.search.sharded import ShardRequest, ShardServer

        engine, queries = _build(tmp_path / "v1", {})
        root = str((tmp_path / "v1").resolve())
        servers = [ShardServer("c", i, 2) for i in range(2)]
        try:
            request = ShardRequest(root=root, dim=DIM, compression={}, query=queries[0].numpy())

            def ask() -> list:  # type: ignore[type-arg]
                return [s.search(request) for s in servers]

            first = ask()
            assert servers[0]._view(root, DIM, {}) is servers[0]._view(
                root, DIM, {}
            )  # reused while unchanged
            _same(merge_shortlists(first, 10), engine.snapshot().search(queries[0]))
            top = merge_shortlists(first, 10).hits[0]
            engine.delete_documents([top.doc_id])  # the engine of this process writes; the servers' reads
            after = merge_shortlists(ask(), 10)
            assert top.doc_id not in {h.doc_id for h in after.hits}
            q = queries[0].numpy().astype(np.float16)  # (5, DIM): two units that are the query itself
            fresh = UnitBatch(
                np.array([50_000, 50_001], np.int64),
                np.zeros(2, np.int32),
                np.zeros(2, np.int8),
                np.array([5, 5], np.int64),
                np.concatenate([q, q]),
                np.zeros((10, 2), np.int16),
                np.ones(10, np.float16),
            )
            engine.publish([engine.write(fresh)])
            got = merge_shortlists(ask(), 10)
            assert got.hits[0].doc_id >= 50_000
            _same(got, engine.snapshot().search(queries[0]))
            visible = np.array([50_000, 50_001], np.int64)  # the ``visible`` ids travel beside the request
            only = merge_shortlists([s.search(request, visible) for s in servers], 10)
            assert {h.doc_id for h in only.hits} <= {50_000, 50_001} and only.hits
            assert servers[1].ping()["shard"] == 1
            assert servers[0].warm(root, DIM, {})["stage1"] == "dense"
        finally:
            REGISTRY.drop_under(tmp_path)


def test_more_than_one_shard_needs_a_ray_address() -> None:
    from pydantic import ValidationError

    from patchseek.config import Settings

    with pytest.raises(ValidationError, match="PATCHSEEK_RAY_ADDRESS"):
        Settings(shards=2, ray_address=None)
    assert Settings(shards=2, ray_address="127.0.0.1:6379").shards == 2
