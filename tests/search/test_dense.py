"""The dense stage 1: Ward summary rows per unit, one chunked MaxSim scan over all of them."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

import patchseek.search.dense as dense_module
from patchseek.errors import InvalidInputError
from patchseek.kernels import maxsim
from patchseek.search import DenseCandidateGenerator, MultiStageRetriever, SearchParams, UnitVectors
from patchseek.search.dense import summarize_units
from tests.search.test_candidates import clustered, query_from


def exact_scores(vectors: torch.Tensor, offsets: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    return maxsim(q, vectors, offsets).numpy()  # (n_units,)


class TestSummarize:
    def test_short_units_keep_their_rows_and_repeat_the_first(self) -> None:
        x = np.eye(4, dtype=np.float32)[:3]  # one unit of 3 orthogonal rows
        out = summarize_units(x, np.array([3]), n_rows=5)  # (1, 5, 4)
        assert out.shape == (1, 5, 4) and out.dtype == np.float16
        np.testing.assert_array_equal(out[0, :3], x)
        np.testing.assert_array_equal(out[0, 3:], np.repeat(x[:1], 2, axis=0))

    def test_merges_near_duplicates_into_unit_means(self) -> None:
        a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        x = np.stack([a, a + [0, 0.01, 0], b, b + [0.01, 0, 0]]).astype(np.float32)  # two tight pairs
        out = summarize_units(x, np.array([4]), n_rows=2)[0].astype(np.float32)  # (2, 3)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)
        assert out[0] @ a > 0.99 and out[1] @ b > 0.99  # in order of each group's first row

    def test_empty_unit_is_zero_and_lengths_are_checked(self) -> None:
        x = np.ones((2, 3), dtype=np.float32)
        out = summarize_units(x, np.array([0, 2, 0]), n_rows=2)
        assert not out[0].any() and not out[2].any() and out[1].any()
        with pytest.raises(InvalidInputError):
            summarize_units(x, np.array([3]), n_rows=2)
        with pytest.raises(InvalidInputError):
            summarize_units(x, np.array([2]), n_rows=0)

    @staticmethod
    def _units(n_units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        lengths = rng.integers(0, 160, n_units)  # (n_units,) some units without rows
        lengths[::17] = 0
        x = rng.standard_normal((int(lengths.sum()), 16)).astype(np.float16)  # (rows, 16)
        return x, lengths

    def test_processes_give_the_same_rows_as_one(self) -> None:
        x, lengths = self._units(3 * dense_module.PARALLEL_MIN_UNITS)
        one = summarize_units(x, lengths, n_rows=24)
        for workers in (2, 3):
            np.testing.assert_array_equal(summarize_units(x, lengths, n_rows=24, workers=workers), one)

    def test_a_killed_pool_process_costs_only_time(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        x, lengths = self._units(2 * dense_module.PARALLEL_MIN_UNITS, seed=1)
        one = summarize_units(x, lengths, n_rows=24)
        np.testing.assert_array_equal(summarize_units(x, lengths, n_rows=24, workers=2), one)
        executor = get_reusable_executor(max_workers=1, timeout=dense_module.SummaryPool.IDLE_S)
        pids = list(executor._processes)  # the pool's live process ids
        assert pids, "the pool ran no process"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        np.testing.assert_array_equal(summarize_units(x, lengths, n_rows=24, workers=2), one)
        np.testing.assert_array_equal(summarize_units(x, lengths, n_rows=24, workers=2), one)  # a new pool


class TestDenseGenerator:
    def test_without_merging_scores_are_exact_maxsim(self) -> None:
        """When every unit fits in R rows, the scan is exact MaxSim (float32 scan)."""
        vectors, offsets = clustered(n_units=30, patches=10)
        gen = DenseCandidateGenerator.from_chunks(
            [(vectors.numpy(), np.diff(offsets.numpy()))], n_rows=10, dtype=torch.float32
        )
        q = query_from(vectors, offsets, 4)
        # float16 summary rows: scores agree with float32 MaxSim to float16 rounding
        np.testing.assert_allclose(gen.scores(q).numpy(), exact_scores(vectors, offsets, q), atol=5e-3)

    def test_chunked_scan_equals_one_block(self, monkeypatch: pytest.MonkeyPatch) -> None:
        vectors, offsets = clustered(n_units=37, patches=12)
        gen = DenseCandidateGenerator.from_chunks(
            [(vectors.numpy(), np.diff(offsets.numpy()))], n_rows=5, dtype=torch.float32
        )
        q = query_from(vectors, offsets, 9)
        whole = gen.scores(q)
        monkeypatch.setattr(dense_module, "SCAN_CHUNK_ROWS", 7 * 5)  # 7 units per product, last one short
        torch.testing.assert_close(gen.scores(q), whole)

    def test_bfloat16_scan_ranks_like_float32(self) -> None:
        vectors, offsets = clustered(n_units=80, patches=16)
        chunks = [(vectors.numpy(), np.diff(offsets.numpy()))]
        g32 = DenseCandidateGenerator.from_chunks(chunks, n_rows=8, dtype=torch.float32)
        g16 = DenseCandidateGenerator.from_chunks(chunks, n_rows=8, dtype=torch.bfloat16)
        q = query_from(vectors, offsets, 11)
        np.testing.assert_allclose(g16.scores(q).numpy(), g32.scores(q).numpy(), atol=0.05)
        assert g16.nbytes * 2 == g32.nbytes

    def test_recall_against_exact_when_merging(self) -> None:
        """Units of 4 words × 6 noisy copies summarised in 6 rows: the exact top 5 is in the top 15."""
        vectors, offsets = clustered(n_units=120, patches=24)
        gen = DenseCandidateGenerator.from_chunks([(vectors.numpy(), np.diff(offsets.numpy()))], n_rows=6)
        found = []
        for unit in range(0, 120, 6):
            q = query_from(vectors, offsets, unit, seed=unit)
            truth = set(np.argsort(-exact_scores(vectors, offsets, q), kind="stable")[:5].tolist())
            found.append(len(truth & set(gen.candidates(q, 15).units.tolist())) / 5)
        assert np.mean(found) >= 0.95

    def test_units_without_rows_are_never_candidates(self) -> None:
        vectors, offsets = clustered(n_units=6, patches=4)
        lengths = np.diff(offsets.numpy())
        lengths[[1, 4]] = 0
        keep = np.concatenate(
            [np.arange(o, o + n) for o, n in zip(offsets[:-1].tolist(), lengths, strict=True)]
        )
        gen = DenseCandidateGenerator.from_chunks([(vectors.numpy()[keep], lengths)], n_rows=4)
        assert sorted(gen.candidates(torch.ones(1, 16), 10).units.tolist()) == [0, 2, 3, 5]

    def test_bad_shapes(self) -> None:
        with pytest.raises(InvalidInputError):
            DenseCandidateGenerator(np.zeros((3, 4), dtype=np.float32))
        with pytest.raises(InvalidInputError):
            DenseCandidateGenerator(np.zeros((3, 2, 4), dtype=np.float32), np.ones(2, dtype=bool))


@pytest.fixture(scope="module")
def parts():  # type: ignore[no-untyped-def]
    vectors, offsets = clustered(n_units=150, patches=20)
    vectors16 = vectors.numpy().astype(np.float16)
    off = offsets.numpy()
    gen = DenseCandidateGenerator.from_chunks([(vectors16, np.diff(off))], n_rows=6)
    return vectors16, off, gen


class TestRetrieverWithDense:
    def test_auto_uses_dense_above_the_threshold_and_reranks_exactly(self, parts) -> None:  # type: ignore[no-untyped-def]
        vectors16, off, gen = parts
        retriever = MultiStageRetriever(UnitVectors.packed(vectors16, off), dense=gen, exact_threshold=100)
        assert retriever.stage1_kind() == "dense"
        small = MultiStageRetriever(UnitVectors.packed(vectors16, off), dense=gen, exact_threshold=1000)
        assert small.stage1_kind() == "exact" and small.stage1_kind("dense") == "dense"
        widened = torch.from_numpy(vectors16.astype(np.float32))
        recall = []
        for unit in range(0, 150, 10):
            q = query_from(widened, torch.from_numpy(off), unit, seed=unit)
            res = retriever.search_detailed(q, SearchParams(top_k=5, candidates=20))
            assert res.stage1 == "dense" and res.n_stage2 == 20 and "stage3" in res.timings_ms
            # exact MaxSim over the stored float16 rows, as brute force computes it
            exact = exact_scores(torch.from_numpy(vectors16), torch.from_numpy(off), q)
            truth = np.argsort(-exact, kind="stable")[:5]
            recall.append(len(set(truth.tolist()) & {h.unit_id for h in res.hits}) / 5)
            for h in res.hits:  # stage 3 scores are exact MaxSim
                assert h.score == pytest.approx(float(exact[h.unit_id]), abs=1e-5)
        assert np.mean(recall) >= 0.95

    def test_masked_units_never_hit_and_missing_dense_is_an_error(self, parts) -> None:  # type: ignore[no-untyped-def]
        vectors16, off, gen = parts
        retriever = MultiStageRetriever(UnitVectors.packed(vectors16, off), dense=gen, exact_threshold=100)
        mask = np.zeros(150, dtype=bool)
        mask[100:] = True
        q = torch.nn.functional.normalize(torch.ones(3, 16), dim=1)
        hits = retriever.search(q, SearchParams(top_k=10, stage1="dense"), unit_mask=mask)
        assert len(hits) == 10 and all(h.unit_id >= 100 for h in hits)
        with pytest.raises(InvalidInputError):
            MultiStageRetriever(UnitVectors.packed(vectors16, off)).search(q, SearchParams(stage1="dense"))
        with pytest.raises(InvalidInputError):
            MultiStageRetriever(UnitVectors.packed(vectors16[:20], off[:2]), dense=gen)
