"""Patch merging: ``HierarchicalMerger`` for one unit, ``merge_video_segment`` for a video segment.

``HierarchicalMerger`` follows colpali-engine's ``HierarchicalTokenPooler`` (Light-ColPali): Ward
agglomerative clustering of a unit's patches into ``max(n // pool_factor, min_keep)`` clusters whose
L2-normalised means replace them. colpali-engine clusters the rows of the ``1 - cosine`` matrix; we
cluster the unit vectors themselves, where Euclidean distance is a monotone function of cosine, which is
the same criterion at O(n·dim) memory per observation instead of O(n²).

``merge_video_segment`` follows CenterCLIP: k-medoids over all patches of consecutive frames, so the
kept vectors are real patch vectors (medoids) and a segment of frames becomes one retrievable unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform
from sklearn.cluster import kmeans_plusplus

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import MergeResult, PatchMerger, check_bag
from patchseek.types import PatchBag


class HierarchicalMerger(PatchMerger):
    """Ward clustering of a unit's patches into ``n // pool_factor`` normalised means.

    Output rows are ordered by the first input patch of each cluster. A merged row's position is the
    rounded mean (row, col) of its members, its salience their sum.

    Parameters
    ----------
    pool_factor : int
        Reduction factor (≥ 1); 1 returns the bag unchanged.
    min_keep : int
        Floor on the number of output vectors (a unit with fewer patches is returned unchanged).

    Examples
    --------
    >>> import torch
    >>> from patchseek.types import PatchBag
    >>> v = torch.tensor([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [0.141, 0.99]])
    >>> v = v / v.norm(dim=1, keepdim=True)
    >>> bag = PatchBag(v, torch.ones(4), torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]), (2, 2))
    >>> HierarchicalMerger(pool_factor=2, min_keep=1).merge(bag).labels.tolist()
    [0, 0, 1, 1]
    """

    def __init__(self, pool_factor: int = 2, min_keep: int = 1) -> None:
        for name, value in (("pool_factor", pool_factor), ("min_keep", min_keep)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
        self.pool_factor = pool_factor
        self.min_keep = min_keep

    def n_out(self, n: int) -> int:
        """Number of vectors a unit of ``n`` patches is merged into."""
        return min(n, max(n // self.pool_factor, self.min_keep, 1))

    def _impl(self, bag: PatchBag) -> MergeResult:
        n = bag.n_patches
        k = self.n_out(n)
        if k >= n:
            return MergeResult(bag=bag, labels=torch.arange(n, dtype=torch.int64))
        labels = torch.from_numpy(ward_labels(bag.vectors.detach().cpu().numpy(), k))  # (n,) in 0..k'-1
        means = _segment_mean(bag.vectors.detach().float().cpu(), labels)  # (k', dim)
        return MergeResult(bag=_cluster_bag(bag, labels, means), labels=labels)


def ward_labels(x: np.ndarray, k: int) -> np.ndarray:
    """Ward clusters of the rows of x (n, dim) into at most ``k``: labels (n,) int64 in 0..k'-1,
    numbered in order of each cluster's first row (k' < k only when rows coincide).

    The Euclidean distances come from one matrix product (``|a|² + |b|² - 2a·b``, a third of the time of
    ``pdist`` at 128-d), scipy builds the Ward tree (nearest-neighbour chain, O(n²)), and the flat
    clusters are the trees of its first ``n - k`` merges: the tree cut at ``k`` clusters.
    Call it under ``threadpool_limits(1)`` (see ``summarize_units``) when it runs on many small units:
    a multi-threaded BLAS spends longer waking its threads than multiplying a few hundred rows.
    """
    n = x.shape[0]
    if n <= k:
        return np.arange(n, dtype=np.int64)
    x = np.asarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x)  # (n,)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)  # (n, n) squared distances
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    condensed = np.sqrt(squareform(d2, checks=False).astype(np.float64))  # (n(n-1)/2,)
    tree = linkage(condensed, method="ward")  # (n - 1, 4), merges by increasing distance
    merges = n - k
    # The first ``merges`` merges form a forest: node n + i is the parent of the two nodes merge i
    # joins. A row's cluster is its root, found by pointer doubling (⌈log2 depth⌉ gathers).
    parent = np.arange(n + merges, dtype=np.int64)  # (n + merges,) roots point at themselves
    parent[tree[:merges, :2].astype(np.int64).ravel()] = np.repeat(
        np.arange(n, n + merges, dtype=np.int64), 2
    )
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            break
        parent = up
    return _relabel_by_first_member(parent[:n])


def merge_video_segment(
    bags: Sequence[PatchBag], n_out: int, *, seed: int = 0, max_iter: int = 30
) -> PatchBag:
    """Merge the frames of one video segment into a single bag of ``n_out`` medoid patches.

    CenterCLIP-style k-medoids over the patches of all frames: k-means++ seeding on the patches, then
    alternating assignment (highest cosine to a medoid) and medoid update (the member with the highest
    summed cosine to its cluster) until the medoids stop changing.

    Parameters
    ----------
    bags : sequence of PatchBag
        Consecutive frames' bags, same ``dim`` (the first frame's grid is kept).
    n_out : int
        Number of medoids (≥ 1). If the frames hold ``n_out`` patches or fewer, they are concatenated.
    seed : int
        Seed of the k-means++ seeding.
    max_iter : int
        Cap on assignment/update rounds.

    Returns
    -------
    PatchBag
        ``min(n_out, total)`` rows, ordered by (frame, patch); each row is one of the input vectors with
        its position, and salience = the summed salience of its cluster. ``text`` joins the frames'
        distinct texts.
    """
    if not bags:
        raise InvalidInputError("merge_video_segment needs at least one frame")
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise InvalidInputError(f"n_out must be an integer >= 1, got {n_out!r}")
    for bag in bags:
        check_bag(bag)
    dims = {bag.dim for bag in bags}
    if len(dims) != 1:
        raise InvalidInputError(f"frames of a segment must share one dim, got {sorted(dims)}")
    texts = list(dict.fromkeys(b.text for b in bags if b.text))
    joined = PatchBag(
        vectors=torch.cat([b.vectors.detach().float().cpu() for b in bags]),  # (T, dim)
        salience=torch.cat([b.salience.detach().float().cpu() for b in bags]),  # (T,)
        positions=torch.cat([b.positions.detach().cpu().to(torch.int64) for b in bags]),  # (T, 2)
        grid=bags[0].grid,
        text=" ".join(texts),
    )
    total = joined.n_patches
    if total <= n_out:
        return joined
    x = joined.vectors.numpy()  # (T, dim)
    _, medoids = kmeans_plusplus(x, n_clusters=n_out, random_state=seed)  # (k,)
    medoids = np.unique(np.asarray(medoids, dtype=np.int64))  # (k,) distinct even on duplicate vectors
    k = medoids.size
    for _ in range(max_iter):
        labels = np.argmax(x @ x[medoids].T, axis=1)  # (T,)
        labels[medoids] = np.arange(k)  # a medoid always belongs to its own cluster
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)  # (k, dim)
        np.add.at(sums, labels, x)
        # Σ_j x_i·x_j over i's cluster = x_i · (Σ_j x_j): the best member is the new medoid
        within = np.einsum("td,td->t", x, sums[labels])  # (T,)
        order = np.lexsort((-within, labels))  # by cluster, then best first
        first = np.ones(total, dtype=bool)
        first[1:] = labels[order][1:] != labels[order][:-1]
        new = medoids.copy()
        new[labels[order][first]] = order[first]
        if np.array_equal(new, medoids):
            break
        medoids = new
    labels = np.argmax(x @ x[medoids].T, axis=1)  # (T,)
    labels[medoids] = np.arange(k)
    keep = np.sort(medoids)  # (k,) ordered by frame, then patch
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(medoids)] = np.arange(k)
    sal = np.zeros(k, dtype=np.float64)  # (k,)
    np.add.at(sal, rank[labels], joined.salience.numpy().astype(np.float64))
    idx = torch.from_numpy(keep)
    return PatchBag(
        vectors=joined.vectors[idx],  # (k, dim)
        salience=torch.from_numpy(sal.astype(np.float32)),  # (k,)
        positions=joined.positions[idx],  # (k, 2)
        grid=joined.grid,
        text=joined.text,
    )


def _relabel_by_first_member(raw: np.ndarray) -> np.ndarray:
    """Cluster ids (n,) renumbered 0.. in order of each cluster's first member."""
    _, first = np.unique(raw, return_index=True)  # per raw label, its first position
    order = np.argsort(first)  # raw labels sorted by first appearance
    remap = np.empty(int(raw.max()) + 1, dtype=np.int64)
    remap[np.unique(raw)[order]] = np.arange(order.size)
    return remap[raw]  # (n,)


def _segment_mean(vectors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-cluster mean (k, dim) of vectors (n, dim), L2-normalised; a zero mean keeps its first member."""
    k = int(labels.max()) + 1
    sums = torch.zeros(k, vectors.shape[1], dtype=torch.float64)  # (k, dim)
    sums.index_add_(0, labels, vectors.double())
    norms = sums.norm(dim=1, keepdim=True)  # (k, 1)
    first = torch.full((k,), vectors.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, labels, torch.arange(vectors.shape[0]), reduce="amin")  # (k,)
    fallback = vectors[first].double()  # (k, dim)
    out = torch.where(norms > 1e-12, sums / norms.clamp_min(1e-12), fallback)  # (k, dim)
    return out.float()


def _cluster_bag(bag: PatchBag, labels: torch.Tensor, means: torch.Tensor) -> PatchBag:
    """The merged bag: means (k, dim), rounded mean positions, summed salience."""
    k = means.shape[0]
    counts = torch.bincount(labels, minlength=k).double()  # (k,)
    pos = torch.zeros(k, 2, dtype=torch.float64)  # (k, 2)
    pos.index_add_(0, labels, bag.positions.detach().cpu().double())
    pos = torch.round(pos / counts[:, None]).to(torch.int64)  # (k, 2)
    sal = torch.zeros(k, dtype=torch.float64)  # (k,)
    sal.index_add_(0, labels, bag.salience.detach().cpu().double())
    return PatchBag(
        vectors=means.to(bag.vectors.dtype),  # (k, dim)
        salience=sal.to(torch.float32),  # (k,)
        positions=pos,  # (k, 2)
        grid=bag.grid,
        text=bag.text,
    )
