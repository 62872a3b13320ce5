"""Stage-1 candidate generators: the exact scan, the dense summary scan and the FAISS (PLAID-style)
inverted lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchseek.errors import InvalidInputError, MissingDependencyError
from patchseek.kernels import code_maxsim, maxsim
from patchseek.search import (
    CandidateGenerator,
    DenseCandidateGenerator,
    ExactCandidateGenerator,
    FaissCandidateGenerator,
    choose_stage1,
    make_candidate_generator,
)

pytest.importorskip("faiss")


def clustered(n_units: int = 120, patches: int = 24, dim: int = 16, n_words: int = 40, seed: int = 0):  # type: ignore[no-untyped-def]
    """Units made of noisy copies of a few shared 'words': (vectors (N, dim), offsets (n_units + 1,))."""
    rng = np.random.default_rng(seed)
    words = rng.standard_normal((n_words, dim))
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    rows = []
    for _ in range(n_units):
        own = rng.choice(n_words, size=4, replace=False)
        x = words[rng.choice(own, size=patches)] + 0.1 * rng.standard_normal((patches, dim))
        rows.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    vectors = torch.from_numpy(np.concatenate(rows).astype(np.float32))  # (N, dim)
    offsets = torch.arange(0, n_units * patches + 1, patches, dtype=torch.int64)  # (n_units + 1,)
    return vectors, offsets


def query_from(
    vectors: torch.Tensor, offsets: torch.Tensor, unit: int, n_q: int = 4, seed: int = 0
) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    lo, hi = int(offsets[unit]), int(offsets[unit + 1])
    q = vectors[rng.integers(lo, hi, size=n_q)] + 0.05 * torch.from_numpy(
        rng.standard_normal((n_q, vectors.shape[1]))
    )
    return torch.nn.functional.normalize(q.float(), dim=1)  # (n_q, dim)


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    vectors, offsets = clustered()
    faiss_gen = FaissCandidateGenerator.build(vectors, offsets, n_centroids=32, nprobe=8)
    return vectors, offsets, faiss_gen


class TestContract:
    """Every generator: validation, empty inputs, filters."""

    @pytest.fixture(params=["exact", "dense", "faiss"])
    def gen(self, request, data) -> CandidateGenerator:  # type: ignore[no-untyped-def]
        vectors, offsets, faiss_gen = data
        if request.param == "dense":
            return DenseCandidateGenerator.from_chunks(
                [(vectors.numpy(), np.diff(offsets.numpy()))], n_rows=6
            )
        return (
            faiss_gen if request.param == "faiss" else ExactCandidateGenerator.from_vectors(vectors, offsets)
        )

    def test_shortlist_is_bounded_unique_and_filtered(self, gen, data) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, _ = data
        q = query_from(vectors, offsets, 7)
        cands = gen.candidates(q, 10)
        assert 0 < len(cands) <= 10 and len(set(cands.units.tolist())) == len(cands)
        mask = np.zeros(gen.n_units, dtype=bool)
        mask[::3] = True
        filtered = gen.candidates(q, 10, unit_mask=mask)
        assert len(filtered) and all(u % 3 == 0 for u in filtered.units.tolist())
        assert len(gen.candidates(q, 10, unit_mask=np.zeros(gen.n_units, dtype=bool))) == 0

    def test_empty_query_and_bad_arguments(self, gen) -> None:  # type: ignore[no-untyped-def]
        assert len(gen.candidates(torch.zeros(0, 16), 5)) == 0
        with pytest.raises(InvalidInputError):
            gen.candidates(torch.ones(2, 15), 5)
        with pytest.raises(InvalidInputError):
            gen.candidates(torch.ones(2, 16), 0)
        with pytest.raises(InvalidInputError):
            gen.candidates(torch.ones(2, 16), 5, unit_mask=np.ones(3, dtype=bool))

    def test_scores_descend(self, gen, data) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, _ = data
        cands = gen.candidates(query_from(vectors, offsets, 3), 20)
        assert cands.scores is not None and bool(np.all(np.diff(cands.scores) <= 0))


class TestExact:
    def test_returns_every_allowed_unit_when_few(self) -> None:
        gen = ExactCandidateGenerator(5, lambda q: pytest.fail("no scoring needed"))  # type: ignore[arg-type,return-value]
        cands = gen.candidates(torch.ones(1, 4), 10, unit_mask=np.array([True, False, True, True, False]))
        assert cands.units.tolist() == [0, 2, 3] and cands.scores is None

    def test_top_k_by_scorer(self) -> None:
        gen = ExactCandidateGenerator(4, lambda q: torch.tensor([0.1, 0.9, 0.5, 0.9]))
        cands = gen.candidates(torch.ones(1, 4), 2)
        assert cands.units.tolist() == [1, 3]  # ties: lower unit first

    def test_empty_collection(self) -> None:
        empty = ExactCandidateGenerator.from_vectors(torch.zeros(0, 4), torch.zeros(1, dtype=torch.int64))
        assert len(empty.candidates(torch.ones(2, 4), 3)) == 0


class TestFaiss:
    def test_recall_against_exact(self, data) -> None:  # type: ignore[no-untyped-def]
        """The exact top 5 of queries drawn from a unit are inside the FAISS top 30 (of 120 units)."""
        vectors, offsets, gen = data
        found = []
        for unit in range(0, 120, 6):
            q = query_from(vectors, offsets, unit, seed=unit)
            exact_top = set(torch.topk(maxsim(q, vectors, offsets), 5).indices.tolist())
            found.append(len(exact_top & set(gen.candidates(q, 30).units.tolist())) / 5)
        assert np.mean(found) >= 0.9

    def test_probing_every_list_finds_every_unit(self, data) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, gen = data
        cands = gen.search(query_from(vectors, offsets, 0), 1000, nprobe=gen.centroids.shape[0])
        assert sorted(cands.units.tolist()) == list(range(gen.n_units))

    def test_units_without_patches_are_never_candidates(self) -> None:
        vectors, offsets = clustered(n_units=10)
        lengths = np.diff(offsets.numpy())
        lengths[[2, 5]] = 0
        keep = np.concatenate(
            [np.arange(o, o + n) for o, n in zip(offsets[:-1].tolist(), lengths, strict=True)]
        )
        off = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
        gen = FaissCandidateGenerator.build(vectors[keep], off, n_centroids=8)
        cands = gen.search(torch.ones(1, 16), 100, nprobe=8)
        assert set(cands.units.tolist()) == set(range(10)) - {2, 5}

    def test_centroid_scores_equal_code_maxsim(self, data) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, gen = data
        ids = FaissCandidateGenerator.assign(vectors.numpy(), gen.centroids)  # (N,)
        q = query_from(vectors, offsets, 11)
        lut = q @ torch.from_numpy(gen.centroids).T  # (n_q, K)
        expected = code_maxsim(lut, torch.from_numpy(ids), offsets)  # (n_units,) over every patch
        units = np.array([0, 11, 57, 119])
        got = gen.centroid_scores(q, units)
        torch.testing.assert_close(got, expected[units], rtol=0, atol=1e-6)

    def test_save_load_round_trip(self, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, gen = data
        gen.save(tmp_path / "ivf")
        loaded = FaissCandidateGenerator.load(tmp_path / "ivf")
        q = query_from(vectors, offsets, 9)
        a, b = gen.candidates(q, 15), loaded.candidates(q, 15)
        assert a.units.tolist() == b.units.tolist()
        np.testing.assert_array_equal(a.scores, b.scores)

    def test_chunked_build_equals_one_shot(self, data) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, gen = data
        ids = FaissCandidateGenerator.assign(vectors.numpy(), gen.centroids)
        lengths = np.diff(offsets.numpy())
        cut = int(offsets[50])
        chunked = FaissCandidateGenerator.from_assignments(
            gen.centroids, [(ids[:cut], lengths[:50]), (ids[cut:], lengths[50:])]
        )
        one = FaissCandidateGenerator.from_assignments(gen.centroids, [(ids, lengths)])
        np.testing.assert_array_equal(chunked.list_offsets, one.list_offsets)
        np.testing.assert_array_equal(chunked.list_units, one.list_units)
        np.testing.assert_array_equal(chunked.unit_centroids, one.unit_centroids)


class TestFactory:
    def test_choose_stage1(self) -> None:
        assert choose_stage1(10) == "exact"
        assert choose_stage1(5000) == "faiss"
        assert choose_stage1(10, "faiss") == "faiss" and choose_stage1(5000, "exact") == "exact"
        with pytest.raises(InvalidInputError):
            choose_stage1(10, "hnsw")

    def test_make_by_name(self, data) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, _ = data
        assert isinstance(
            make_candidate_generator("exact", vectors=vectors, offsets=offsets), ExactCandidateGenerator
        )
        gen = make_candidate_generator("faiss", vectors=vectors, offsets=offsets, n_centroids=16)
        assert isinstance(gen, FaissCandidateGenerator) and gen.n_units == 120
        with pytest.raises(InvalidInputError):
            make_candidate_generator("annoy")

    def test_missing_faiss_is_a_clear_error(self, monkeypatch, data) -> None:  # type: ignore[no-untyped-def]
        vectors, offsets, _ = data
        import patchseek.search.candidates as candidates

        real = candidates.importlib.import_module

        def no_faiss(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
            if name == "faiss":
                raise ImportError("No module named 'faiss'")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(candidates.importlib, "import_module", no_faiss)
        with pytest.raises(MissingDependencyError) as err:
            make_candidate_generator("faiss", vectors=vectors, offsets=offsets)
        assert err.value.code == "missing_dependency"
        assert choose_stage1(5000) == "exact"  # auto falls back to the scan


def test_entry_vectors_score_probed_lists_by_pooled_rows(data) -> None:  # type: ignore[no-untyped-def]
    """With every centroid probed, a unit's stage-1 score is Σ_i max(floor_i, max_v q_i · v) over its
    pooled rows v (one per distinct centroid), and the target unit comes first."""
    from patchseek.search.candidates import pool_by_centroid

    vectors, offsets, _ = data
    gen = FaissCandidateGenerator.build(vectors, offsets, n_centroids=32, nprobe=32)
    ids = FaissCandidateGenerator.assign(vectors.numpy(), gen.centroids)
    pooled, pooled_ids, pooled_lengths = pool_by_centroid(vectors.numpy(), ids, np.diff(offsets.numpy()))
    with pytest.raises(InvalidInputError):
        gen.use_entry_vectors(pooled[:-1])
    gen.use_entry_vectors(pooled.astype(np.float16))
    q = query_from(vectors, offsets, unit=7)
    found = gen.candidates(q, 10)
    assert found.units[0] == 7
    lut = q @ torch.from_numpy(gen.centroids).T  # (n_q, K)
    floor = lut.min(dim=1).values  # (n_q,) the K-th best centroid: every centroid is probed
    sims = q @ torch.from_numpy(pooled.astype(np.float16).astype(np.float32)).T  # (n_q, n_pooled)
    starts = np.concatenate([[0], np.cumsum(pooled_lengths)])
    expect = [
        float(torch.maximum(sims[:, starts[u] : starts[u + 1]].max(dim=1).values, floor).sum())
        for u in found.units.tolist()
    ]
    np.testing.assert_allclose(found.scores, expect, rtol=1e-4, atol=1e-4)


class TestCoarseTree:
    """The two-level coarse quantizer: its assignment is exactly the tree's (nearest top cell, then that
    cell's nearest leaf), its leaves are a real k-means (far closer than random centroids), and cells
    with no sample member still get a leaf."""

    def _data(self, n: int = 6000, dim: int = 16, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(40, dim)).astype(np.float32)
        return (centers[rng.integers(0, 40, n)] + 0.1 * rng.normal(size=(n, dim))).astype(np.float32)

    def test_assignment_is_the_tree_path_and_the_leaves_quantize_well(self) -> None:
        x = self._data()
        leaves, top, offsets = FaissCandidateGenerator.fit_tree(x, 256, seed=0)
        assert top.shape == (16, 16) and offsets[0] == 0 and offsets[-1] == leaves.shape[0] <= 256
        assert np.all(np.diff(offsets) >= 1)
        ids = FaissCandidateGenerator.assign_tree(x, top, offsets, leaves, probe=1, chunk=1000)
        cell = ((x[:, None, :] - top[None]) ** 2).sum(-1).argmin(1)  # (n,) brute-force top cell
        assert np.all(ids >= offsets[cell]) and np.all(ids < offsets[cell + 1])
        for j in range(top.shape[0]):  # within its cell, each row's leaf is the nearest leaf
            rows = np.flatnonzero(cell == j)
            if rows.size:
                d = ((x[rows, None, :] - leaves[None, offsets[j] : offsets[j + 1]]) ** 2).sum(-1)
                np.testing.assert_array_equal(ids[rows], offsets[j] + d.argmin(1))
        mse = ((x - leaves[ids]) ** 2).sum(1).mean()
        rng = np.random.default_rng(1)
        rand = x[rng.choice(x.shape[0], leaves.shape[0], replace=False)]
        rand_mse = ((x[:, None, :] - rand[None]) ** 2).sum(-1).min(1).mean()
        assert mse < 0.8 * rand_mse

    def test_a_tiny_sample_still_gives_every_cell_a_leaf(self) -> None:
        x = self._data(n=40)
        leaves, top, offsets = FaissCandidateGenerator.fit_tree(x, 4096, seed=0)
        assert leaves.shape[0] <= 40 and np.all(np.diff(offsets) >= 1)
        ids = FaissCandidateGenerator.assign_tree(self._data(n=500, seed=3), top, offsets, leaves)
        assert ids.min() >= 0 and ids.max() < leaves.shape[0]

    def test_probing_two_cells_picks_the_nearest_of_their_leaves(self) -> None:
        x = self._data(seed=5)
        leaves, top, offsets = FaissCandidateGenerator.fit_tree(x, 256, seed=0)
        ids = FaissCandidateGenerator.assign_tree(x, top, offsets, leaves, probe=2, chunk=700)
        d_top = ((x[:, None, :] - top[None]) ** 2).sum(-1)
        two = np.argsort(d_top, axis=1)[:, :2]  # (n, 2)
        for i in range(0, x.shape[0], 97):
            cand = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in two[i]])
            d = ((leaves[cand] - x[i]) ** 2).sum(-1)
            assert np.isclose(d.min(), ((leaves[ids[i]] - x[i]) ** 2).sum(), rtol=1e-4, atol=1e-5)
        one = FaissCandidateGenerator.assign_tree(x, top, offsets, leaves, probe=1)
        err = lambda a: ((x - leaves[a]) ** 2).sum(1).mean()  # noqa: E731
        assert err(ids) <= err(one)
