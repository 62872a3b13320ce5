"""Pruning (top-p, adaptive), hierarchical merging and video k-medoids merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress import AdaptivePruner, HierarchicalMerger, TopPPruner, merge_video_segment
from tests.indexer.compress.compress_helpers import make_bag, unit_rows


class TestTopPPruner:
    def test_keeps_the_most_salient_share_in_order(self) -> None:
        sal = np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.0])
        bag = make_bag(np.eye(6, dtype=np.float32), sal)
        out = TopPPruner(ratio=0.5, min_keep=1).prune(bag)
        assert out.indices.tolist() == [1, 2, 4]
        assert torch.equal(out.bag.vectors, bag.vectors[[1, 2, 4]])
        assert torch.equal(out.bag.positions, bag.positions[[1, 2, 4]])
        assert out.bag.grid == bag.grid

    def test_floor_wins_over_ratio(self) -> None:
        bag = make_bag(np.eye(10, dtype=np.float32), np.arange(10.0))
        assert TopPPruner(ratio=0.1, min_keep=4).prune(bag).indices.tolist() == [6, 7, 8, 9]

    def test_unit_at_or_below_floor_is_kept_whole(self) -> None:
        bag = make_bag(np.eye(3, dtype=np.float32))
        assert TopPPruner(ratio=0.1, min_keep=8).prune(bag).bag is bag

    @pytest.mark.parametrize("n,ratio,floor", [(7, 0.5, 2), (100, 0.3, 8), (33, 0.9, 40), (1030, 0.5, 8)])
    def test_property_floor_and_highest_salience(self, n: int, ratio: float, floor: int) -> None:
        rng = np.random.default_rng(n)
        sal = rng.random(n)
        out = TopPPruner(ratio=ratio, min_keep=floor).prune(
            make_bag(unit_rows(rng.standard_normal((n, 4))), sal)
        )
        kept = out.indices.numpy()
        assert kept.size == min(n, max(floor, int(np.ceil(ratio * n))))
        assert np.all(np.diff(kept) > 0)
        dropped = np.setdiff1d(np.arange(n), kept)
        if dropped.size:
            assert sal[kept].min() >= sal[dropped].max()

    def test_rejects_bad_ratio_and_nan_salience(self) -> None:
        with pytest.raises(InvalidInputError):
            TopPPruner(ratio=0.0)
        with pytest.raises(InvalidInputError):
            TopPPruner(min_keep=0)
        bag = make_bag(np.eye(12, dtype=np.float32), np.array([np.nan] + [1.0] * 11))
        with pytest.raises(InvalidInputError):
            TopPPruner(min_keep=1).prune(bag)


class TestAdaptivePruner:
    def test_keeps_patches_above_mean(self) -> None:
        bag = make_bag(np.eye(6, dtype=np.float32), np.array([0.0, 0.0, 0.0, 1.0, 0.0, 2.0]))
        assert AdaptivePruner(k=0.0, min_keep=1).prune(bag).indices.tolist() == [3, 5]

    def test_higher_k_prunes_harder(self) -> None:
        sal = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 2.0])  # mean 0.5, std ~0.76
        bag = make_bag(np.eye(6, dtype=np.float32), sal)
        assert AdaptivePruner(k=1.0, min_keep=1).prune(bag).indices.tolist() == [5]

    def test_constant_salience_keeps_everything(self) -> None:
        bag = make_bag(np.eye(20, dtype=np.float32), np.full(20, 0.3))
        assert AdaptivePruner(k=0.0, min_keep=2).prune(bag).indices.numel() == 20

    def test_floor_tops_up_with_most_salient(self) -> None:
        sal = np.array([0.0] * 9 + [10.0] + [1.0, 2.0])
        bag = make_bag(np.eye(12, dtype=np.float32), sal)
        assert AdaptivePruner(k=2.0, min_keep=3).prune(bag).indices.tolist() == [9, 10, 11]

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_property_floor_and_highest_salience(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = int(rng.integers(20, 300))
        sal = rng.lognormal(size=n)
        kept = (
            AdaptivePruner(k=0.5, min_keep=8).prune(make_bag(np.zeros((n, 4), np.float32) + 0.5, sal)).indices
        )
        kept_np = kept.numpy()
        assert kept_np.size >= 8
        dropped = np.setdiff1d(np.arange(n), kept_np)
        assert sal[kept_np].min() >= sal[dropped].max()


class TestHierarchicalMerger:
    def test_two_obvious_clusters(self) -> None:
        v = unit_rows(np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]]))
        bag = make_bag(v, np.array([1.0, 2.0, 3.0, 4.0]), cols=2)
        out = HierarchicalMerger(pool_factor=2, min_keep=1).merge(bag)
        assert out.labels.tolist() == [0, 0, 1, 1]
        expected = unit_rows(np.stack([v[:2].sum(0), v[2:].sum(0)]))
        torch.testing.assert_close(out.bag.vectors, torch.from_numpy(expected))
        assert out.bag.salience.tolist() == [3.0, 7.0]
        # members at (0,0),(0,1) -> mean (0, 0.5) -> rounds to (0, 0); (1,0),(1,1) -> (1, 0)
        assert out.bag.positions.tolist() == [[0, 0], [1, 0]]

    @pytest.mark.parametrize("n,pool,floor", [(50, 3, 1), (50, 2, 8), (9, 4, 1), (30, 20, 4)])
    def test_pool_factor_respected_and_unit_norm(self, n: int, pool: int, floor: int) -> None:
        rng = np.random.default_rng(n + pool)
        bag = make_bag(unit_rows(rng.standard_normal((n, 16))), rng.random(n))
        merger = HierarchicalMerger(pool_factor=pool, min_keep=floor)
        out = merger.merge(bag)
        assert out.bag.n_patches <= max(n // pool, floor)
        assert out.bag.n_patches >= 1
        assert merger.n_out(n) == min(n, max(n // pool, floor, 1))
        torch.testing.assert_close(out.bag.vectors.norm(dim=1), torch.ones(out.bag.n_patches))
        assert out.labels.shape == (n,)
        assert float(out.bag.salience.sum()) == pytest.approx(float(bag.salience.sum()), rel=1e-5)

    def test_pool_factor_one_is_identity(self) -> None:
        bag = make_bag(unit_rows(np.random.default_rng(0).standard_normal((10, 4))))
        out = HierarchicalMerger(pool_factor=1).merge(bag)
        assert out.bag is bag
        assert out.labels.tolist() == list(range(10))


@pytest.mark.parametrize(("n", "k", "seed"), [(50, 7, 0), (400, 96, 1), (1030, 96, 2), (97, 96, 3)])
def test_ward_labels_match_scipy_pdist_and_fcluster(n: int, k: int, seed: int) -> None:
    """The matrix-product distances and the components cut give scipy's reference partition (pdist +
    linkage + fcluster maxclust) on clustered unit vectors."""
    from scipy.cluster.hierarchy import fcluster, linkage

    from patchseek.indexer.compress.merge import _relabel_by_first_member, ward_labels

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(k // 2, 2), 128))
    x = centers[rng.integers(0, centers.shape[0], n)] + 0.4 * rng.standard_normal((n, 128))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    reference = _relabel_by_first_member(
        fcluster(linkage(x.astype(np.float64), method="ward"), t=k, criterion="maxclust")
    )
    labels = ward_labels(x, k)
    assert labels.max() + 1 == k
    np.testing.assert_array_equal(labels, reference)


class TestVideoSegmentMerge:
    def test_medoids_are_real_patches_and_cover_each_direction(self) -> None:
        rng = np.random.default_rng(0)
        base = np.eye(4, 8, dtype=np.float32)  # 4 orthogonal directions
        frames = [
            make_bag(unit_rows(base + 0.01 * rng.standard_normal(base.shape)), np.ones(4)) for _ in range(3)
        ]
        out = merge_video_segment(frames, n_out=4, seed=0)
        assert out.n_patches == 4
        all_vecs = torch.cat([f.vectors for f in frames])  # (12, 8)
        for row in out.vectors:
            assert bool((all_vecs == row).all(dim=1).any()), "a medoid must be one of the input vectors"
        assert sorted(out.vectors.argmax(dim=1).tolist()) == [0, 1, 2, 3]
        assert out.salience.tolist() == [3.0, 3.0, 3.0, 3.0]

    def test_deterministic_and_fewer_patches_than_n_out_concatenates(self) -> None:
        rng = np.random.default_rng(1)
        frames = [make_bag(unit_rows(rng.standard_normal((10, 8))), rng.random(10)) for _ in range(3)]
        a = merge_video_segment(frames, n_out=7, seed=3)
        b = merge_video_segment(frames, n_out=7, seed=3)
        assert torch.equal(a.vectors, b.vectors)
        assert a.n_patches == 7
        assert float(a.salience.sum()) == pytest.approx(
            float(sum(f.salience.sum() for f in frames)), rel=1e-5
        )
        whole = merge_video_segment(frames, n_out=30)
        assert whole.n_patches == 30

    def test_rejects_empty_and_mixed_dims(self) -> None:
        with pytest.raises(InvalidInputError):
            merge_video_segment([], n_out=3)
        frames = [make_bag(np.eye(4, dtype=np.float32)), make_bag(np.eye(5, dtype=np.float32))]
        with pytest.raises(InvalidInputError):
            merge_video_segment(frames, n_out=2)
