"""The three-stage retriever: equal to exact search when no stage cuts anything, filters, knobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress import CompressionConfig, Compressor
from patchseek.kernels import maxsim
from patchseek.search import (
    FaissCandidateGenerator,
    MultiStageRetriever,
    PackedIndex,
    SearchParams,
    UnitRows,
    UnitVectors,
    search,
)
from patchseek.types import PatchBag
from tests.search.test_candidates import clustered, query_from

pytest.importorskip("faiss")


def exact_top(vectors16: np.ndarray, offsets: np.ndarray, q: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """Reference: exact MaxSim over the float16-stored vectors as brute force computes it (``maxsim`` on
    float16 documents: the query rounded to float16, float32 products and sums)."""
    docs = torch.from_numpy(vectors16)  # (N, dim) float16
    scores = maxsim(q, docs, torch.from_numpy(offsets))  # (n_units,)
    order = sorted(range(len(scores)), key=lambda u: (-float(scores[u]), u))[:k]
    return [(u, float(scores[u])) for u in order]


@pytest.fixture(scope="module")
def index():  # type: ignore[no-untyped-def]
    vectors, offsets = clustered(n_units=150, patches=20)
    vectors16 = vectors.numpy().astype(np.float16)  # what the segment files store
    off = offsets.numpy()
    comp = Compressor(CompressionConfig(quantizer="kmeans", kmeans_k=32, keep="float16"))
    bags = [
        PatchBag(
            torch.from_numpy(vectors16[a:b].astype(np.float32)),
            torch.ones(b - a),
            torch.zeros(b - a, 2),
            (0, 0),
        )
        for a, b in zip(off[:-1], off[1:], strict=True)
    ]
    comp.fit(bags, compressed=True)
    codes = comp.quantizer.encode(vectors16.astype(np.float32))  # (N,) uint8
    gen = FaissCandidateGenerator.from_assignments(
        comp.quantizer.centroids, [(codes, np.diff(off))], nprobe=4
    )
    retriever = MultiStageRetriever(
        UnitVectors.packed(vectors16, off), compressor=comp, codes=codes, generator=gen, exact_threshold=100
    )
    return retriever, vectors16, off, comp, codes


class TestEqualsExact:
    """With every stage keeping every unit, the result is exact MaxSim's, scores included."""

    @pytest.mark.parametrize("stage1", ["exact", "faiss"])
    def test_no_cut_equals_exact(self, index, stage1) -> None:  # type: ignore[no-untyped-def]
        retriever, vectors16, off, _, _ = index
        n = retriever.n_units
        params = SearchParams(top_k=10, candidates=n, stage1=stage1, stage1_k=n, nprobe=32)
        for unit in (0, 42, 149):
            q = query_from(
                torch.from_numpy(vectors16.astype(np.float32)), torch.from_numpy(off), unit, seed=unit
            )
            got = [(h.unit_id, h.score) for h in retriever.search(q, params)]
            want = exact_top(vectors16, off, q, 10)
            assert [u for u, _ in got] == [u for u, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-5)

    def test_no_codec_is_exact_and_matches_packed_index(self) -> None:
        e = np.eye(4, dtype=np.float32)
        arrays = {
            10: np.stack([e[0], e[1], e[2]]).astype(np.float16),
            20: np.stack([e[3], e[0]]).astype(np.float16),
        }
        rows = [UnitRows(1, 10, 0, 2), UnitRows(2, 10, 2, 1), UnitRows(3, 20, 0, 0), UnitRows(4, 20, 0, 2)]
        retriever = MultiStageRetriever(
            UnitVectors.from_rows(rows, arrays, 4), unit_ids=np.array([1, 2, 3, 4])
        )
        q = torch.eye(4)[[0, 1]]
        got = [(h.unit_id, h.score) for h in retriever.search(q, SearchParams(top_k=10))]
        packed = PackedIndex.build(rows, {k: v.astype(np.float32) for k, v in arrays.items()}, dim=4)
        assert got == [(h.unit_id, h.score) for h in search(packed, q, 10)] == [(1, 2.0), (4, 1.0), (2, 0.0)]


class TestStages:
    def test_auto_picks_by_size(self, index) -> None:  # type: ignore[no-untyped-def]
        retriever = index[0]
        assert retriever.stage1_kind("auto") == "faiss"  # 150 units >= exact_threshold=100
        small = MultiStageRetriever(retriever.vectors)
        assert small.stage1_kind("auto") == "exact"
        with pytest.raises(InvalidInputError):
            small.stage1_kind("faiss")  # no generator was given

    def test_stage_sizes_follow_the_knobs(self, index) -> None:  # type: ignore[no-untyped-def]
        retriever, vectors16, off, _, _ = index
        q = query_from(torch.from_numpy(vectors16.astype(np.float32)), torch.from_numpy(off), 5)
        res = retriever.search_detailed(q, SearchParams(top_k=3, candidates=12, stage1="faiss", stage1_k=40))
        assert res.stage1 == "faiss" and res.n_stage1 <= 40 and res.n_stage2 == 12 and len(res.hits) == 3
        assert set(res.timings_ms) == {"stage1", "stage2", "stage3"}

    def test_without_rerank_scores_are_the_codecs(self, index) -> None:  # type: ignore[no-untyped-def]
        retriever, vectors16, off, comp, codes = index
        q = query_from(torch.from_numpy(vectors16.astype(np.float32)), torch.from_numpy(off), 77)
        hits = retriever.search(q, SearchParams(top_k=5, rerank=False, stage1="exact", stage1_k=1000))
        approx = comp.quantizer.score(q, codes, off)  # (n_units,) over every patch's code
        for h in hits:
            assert h.score == pytest.approx(float(approx[h.unit_id]), abs=1e-5)
        assert [h.unit_id for h in hits] == torch.topk(approx, 5).indices.tolist()

    def test_high_recall_with_default_shortlists(self, index) -> None:  # type: ignore[no-untyped-def]
        retriever, vectors16, off, _, _ = index
        rec = []
        for unit in range(0, 150, 10):
            q = query_from(
                torch.from_numpy(vectors16.astype(np.float32)), torch.from_numpy(off), unit, seed=unit
            )
            want = {u for u, _ in exact_top(vectors16, off, q, 5)}
            got = retriever.search(q, SearchParams(top_k=5, candidates=30, stage1="faiss", stage1_k=60))
            rec.append(len(want & {h.unit_id for h in got}) / 5)
        assert np.mean(rec) >= 0.9


class TestFilters:
    @pytest.mark.parametrize("stage1", ["exact", "faiss"])
    def test_masked_units_never_hit(self, index, stage1) -> None:  # type: ignore[no-untyped-def]
        retriever, vectors16, off, _, _ = index
        q = query_from(torch.from_numpy(vectors16.astype(np.float32)), torch.from_numpy(off), 10)
        allowed = np.zeros(retriever.n_units, dtype=bool)
        allowed[[3, 10, 99]] = True
        hits = retriever.search(q, SearchParams(top_k=10, stage1=stage1), unit_mask=allowed)
        assert {h.unit_id for h in hits} == {3, 10, 99}
        assert (
            retriever.search(q, SearchParams(stage1=stage1), unit_mask=np.zeros(retriever.n_units, bool))
            == []
        )

    def test_empty_collection_and_query(self) -> None:
        empty = MultiStageRetriever(UnitVectors.packed(np.zeros((0, 4), np.float16), np.zeros(1, np.int64)))
        assert empty.search(torch.ones(2, 4)) == []
        assert MultiStageRetriever(empty.vectors).search(torch.zeros(0, 4)) == []


def test_params_are_validated() -> None:
    for bad in ({"top_k": 0}, {"candidates": -1}, {"stage1": "hnsw"}, {"stage1_k": 0}, {"nprobe": 0}):
        with pytest.raises(InvalidInputError):
            SearchParams(**bad)  # type: ignore[arg-type]
