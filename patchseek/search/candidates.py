"""Stage-1 candidate generators: ``ExactCandidateGenerator`` (scan every unit) and
``FaissCandidateGenerator`` (PLAID-style inverted file over k-means centroids of the patch vectors).

``FaissCandidateGenerator`` in short: every stored patch belongs to its nearest of ``K`` k-means
centroids; an inverted list maps each centroid to the units that own at least one of its patches. For a
query, each token's ``nprobe`` most similar centroids are found with a FAISS inner-product index; the
units of their lists are the candidates, ranked by the centroid interaction

``s(u) = Σ_i max(floor_i, max_{c ∈ probes(i) ∩ C(u)} q_i · c)``

where ``floor_i`` is token ``i``'s ``nprobe``-th best centroid similarity, an upper bound of what any
unprobed centroid could give (so units are not punished below what they might score). It reads only the
lists, never the patches: the work grows with the probed lists, not the collection.

Why centroids and not a per-patch ANN (IVF-PQ / HNSW over every patch vector): a ColPali page has ~1000
patches, so a patch-level index holds 10^7 entries per 10^4 pages; the per-token nearest patches
crowd into the few pages that repeat a word, and the union must then be re-aggregated per page. A
centroid list is already per page (one entry per (centroid, page)), about 10x smaller than the patch
count, and when the collection's codec is k-means its codes are the assignments (PLAID): the index costs
no extra pass over the vectors.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse import csr_matrix

from patchseek.errors import InvalidInputError, MissingDependencyError
from patchseek.kernels import code_maxsim, maxsim
from patchseek.search.base import CandidateGenerator, Candidates, top_k

Stage1 = Literal["auto", "exact", "faiss", "dense"]
STAGE1_CHOICES = ("auto", "exact", "faiss", "dense")
EXACT_THRESHOLD = 2000  # below this many units, scanning all of them is as fast as any index
DEFAULT_NPROBE = 32
ASSIGN_CHUNK = 65536
EXACT_ASSIGN_MAX = 1024
TREE_PROBE = 2  # top cells searched per vector: 1 left 0.950 of the exact top 10 at 10^4 pages, 2 kept more
IVF_JSON = "ivf.json"
IVF_NPZ = "ivf.npz"


def import_faiss() -> Any:
    """The ``faiss`` module, or ``MissingDependencyError`` saying how to install it."""
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise MissingDependencyError(
            "FAISS is not installed: `pip install faiss-cpu` (or faiss-gpu on a CUDA 12 machine), or "
            "search with stage1='exact'"
        ) from exc


def has_faiss() -> bool:
    try:
        import_faiss()
    except MissingDependencyError:
        return False
    return True


def choose_stage1(n_units: int, requested: str = "auto", *, threshold: int = EXACT_THRESHOLD) -> str:
    """``"exact"`` or ``"faiss"`` (or ``"dense"`` when asked): what ``requested`` means for a collection
    of ``n_units`` units.

    ``"auto"`` scans collections smaller than ``threshold`` units and uses FAISS above it when FAISS is
    installed (else the exact scan, which is slower but right). ``MultiStageRetriever.stage1_kind``
    prefers its dense generator (``patchseek.search.dense``) over FAISS when it has one.
    """
    if requested not in STAGE1_CHOICES:
        raise InvalidInputError(f"stage1={requested!r}: expected one of {list(STAGE1_CHOICES)}")
    if requested != "auto":
        return requested
    return "faiss" if n_units >= threshold and has_faiss() else "exact"


# ------------------------------------------------------------------------------------------ exact
class ExactCandidateGenerator(CandidateGenerator):
    """Scan every unit: the allowed units themselves when there are at most ``k`` of them, else the
    ``k`` best by ``scorer`` (typically the codec's approximate MaxSim, or exact MaxSim).

    Parameters
    ----------
    n_units : int
        Units in the collection.
    scorer : callable
        ``scorer(query (n_q, dim) float32) -> (n_units,) float32`` scores of every unit.
    dim : int, optional
        Query dimension to check.
    """

    kind = "exact"

    def __init__(
        self, n_units: int, scorer: Callable[[torch.Tensor], torch.Tensor], *, dim: int | None = None
    ) -> None:
        self._n_units = int(n_units)
        self.scorer = scorer
        self._dim = dim

    @classmethod
    def from_vectors(cls, vectors: torch.Tensor, offsets: torch.Tensor) -> ExactCandidateGenerator:
        """Rank by exact MaxSim on vectors (n_patches_total, dim) with offsets (n_units + 1,)."""
        off = torch.as_tensor(offsets, dtype=torch.int64)  # (n_units + 1,)
        return cls(int(off.numel()) - 1, lambda q: maxsim(q, vectors, off), dim=int(vectors.shape[1]))

    @property
    def n_units(self) -> int:
        return self._n_units

    @property
    def dim(self) -> int | None:
        return self._dim

    def _impl(self, query: torch.Tensor, k: int, mask: np.ndarray | None) -> Candidates:
        allowed = np.arange(self._n_units, dtype=np.int64) if mask is None else np.flatnonzero(mask)
        if allowed.size <= k:
            return Candidates(allowed, None)
        scores = self.scorer(query).detach().cpu().numpy().astype(np.float32)  # (n_units,)
        units, best = top_k(scores[allowed], allowed, k)
        return Candidates(units, best)


# ------------------------------------------------------------------------------------------ faiss
class FaissCandidateGenerator(CandidateGenerator):
    """PLAID-style stage 1: inverted lists of units per k-means centroid (see the module docstring).

    Parameters
    ----------
    centroids : np.ndarray
        (K, dim) float32 centroids.
    list_offsets : np.ndarray
        (K + 1,) int64; centroid ``c``'s units are ``list_units[list_offsets[c]:list_offsets[c + 1]]``.
    list_units : np.ndarray
        (nnz,) int32 unit positions, ascending within a list.
    n_units : int
        Units in the collection (``list_units`` < ``n_units``).
    nprobe : int
        Centroids probed per query token.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``: the centroid search runs on a GPU where faiss-gpu and one
        are present (``"auto"``), on the CPU otherwise.
    """

    kind = "faiss"

    def __init__(
        self,
        centroids: np.ndarray,
        list_offsets: np.ndarray,
        list_units: np.ndarray,
        n_units: int,
        *,
        nprobe: int = DEFAULT_NPROBE,
        device: str = "auto",
        unit_offsets: np.ndarray | None = None,
        unit_centroids: np.ndarray | None = None,
        list_entries: np.ndarray | None = None,
    ) -> None:
        faiss = import_faiss()
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)  # (K, dim)
        self.list_offsets = np.asarray(list_offsets, dtype=np.int64)  # (K + 1,)
        self.list_units = np.asarray(list_units, dtype=np.int32)  # (nnz,)
        k_centroids = self.centroids.shape[0]
        if self.centroids.ndim != 2 or k_centroids < 1:
            raise InvalidInputError(f"centroids must be (K >= 1, dim), got {self.centroids.shape}")
        if (
            self.list_offsets.shape != (k_centroids + 1,)
            or int(self.list_offsets[-1]) != self.list_units.size
        ):
            raise InvalidInputError("list_offsets must be (K + 1,) and end at the number of list entries")
        if self.list_units.size and int(self.list_units.max()) >= n_units:
            raise InvalidInputError(f"list entries must be unit positions below n_units={n_units}")
        self._n_units = int(n_units)
        self.nprobe = int(nprobe)
        if unit_offsets is None or unit_centroids is None:  # the transpose of the lists
            order = np.argsort(self.list_units, kind="stable")
            cents = np.repeat(np.arange(k_centroids, dtype=np.int32), np.diff(self.list_offsets))
            unit_centroids = cents[order]
            unit_offsets = np.concatenate([[0], np.cumsum(np.bincount(self.list_units, minlength=n_units))])
        self.unit_offsets = np.asarray(unit_offsets, dtype=np.int64)  # (n_units + 1,)
        self.unit_centroids = np.asarray(unit_centroids, dtype=np.int32)  # (nnz,)
        # list_entries[j]: the unit-major position (units ascending, centroids ascending within a unit)
        # of list entry j; known when built by ``from_assignments``, needed by ``use_entry_vectors``.
        self.list_entries = None if list_entries is None else np.asarray(list_entries, dtype=np.int64)
        self.entry_vectors: np.ndarray | None = None  # (nnz,) unit-major rows, see use_entry_vectors
        self.device_centroids: torch.Tensor | None = None  # (K, dim) on a device, see use_device
        index = faiss.IndexFlatIP(self.centroids.shape[1])
        index.add(self.centroids)
        self.on_gpu = False
        if device in ("auto", "cuda") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            self.on_gpu = True
        elif device == "cuda":
            raise MissingDependencyError("device='cuda' needs faiss-gpu and a visible GPU")
        self.index = index

    # -------------------------------------------------------------------------------- building
    @staticmethod
    def fit_centroids(sample: np.ndarray, n_centroids: int, *, seed: int = 0, n_iter: int = 10) -> np.ndarray:
        """k-means centroids (min(K, n), dim) float32 of a sample (n, dim) of patch vectors (FAISS)."""
        faiss = import_faiss()
        x = np.ascontiguousarray(sample, dtype=np.float32)  # (n, dim)
        k = min(int(n_centroids), x.shape[0])
        km = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=seed, verbose=False, min_points_per_centroid=1)
        km.train(x)
        return np.ascontiguousarray(km.centroids, dtype=np.float32)

    @staticmethod
    def fit_tree(
        sample: np.ndarray, n_centroids: int, *, seed: int = 0, n_iter: int = 10
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A two-level k-means tree of about ``n_centroids`` leaves over a sample (n, dim).

        The top level is ``√K`` (a power of two) k-means centroids of the sample; each top cell's members
        are then split into leaves, as many as the cell's share of the sample (at least one; a cell
        without members keeps its top centroid as its one leaf). Assigning a vector is then two small
        exhaustive searches (``assign_tree``: √K + ~√K distances instead of K) done as matrix products,
        and fitting is √K + 1 small k-means instead of one with K centroids. Its leaves quantize a little
        more coarsely than a flat k-means of K (on the synthetic ColPali corpus of ``bench/``: mean
        squared error 0.307 against 0.273; see docs/BENCHMARKS.md for what that costs in recall).

        Returns
        -------
        leaves : np.ndarray
            (K', dim) float32, K' <= n_centroids, grouped by top cell.
        top : np.ndarray
            (k1, dim) float32 top-level centroids.
        offsets : np.ndarray
            (k1 + 1,) int64: the leaves of top cell j are ``leaves[offsets[j]:offsets[j + 1]]``.
        """
        x = np.ascontiguousarray(sample, dtype=np.float32)  # (n, dim)
        k = max(1, min(int(n_centroids), x.shape[0]))
        k1 = max(1, 1 << (max(0, round(np.log2(np.sqrt(k))))))
        top = FaissCandidateGenerator.fit_centroids(x, k1, seed=seed, n_iter=n_iter)  # (k1', dim)
        k1 = top.shape[0]
        cell = _nearest(x, top)  # (n,)
        counts = np.bincount(cell, minlength=k1)  # (k1,)
        share = np.maximum(1, np.floor(counts * (k / max(1, counts.sum())))).astype(np.int64)
        while share.sum() > k:  # the floors of 1 can overshoot K by a few
            share[int(np.argmax(share))] -= 1
        leaves = []
        for j in range(k1):
            members = x[cell == j]
            if members.shape[0] == 0:
                leaves.append(top[j : j + 1])
                continue
            leaves.append(
                FaissCandidateGenerator.fit_centroids(members, int(share[j]), seed=seed + j, n_iter=n_iter)
            )
        offsets = np.concatenate([[0], np.cumsum([c.shape[0] for c in leaves])]).astype(np.int64)
        return np.ascontiguousarray(np.concatenate(leaves), dtype=np.float32), top, offsets

    @staticmethod
    def assign_tree(
        vectors: np.ndarray,
        top: np.ndarray,
        offsets: np.ndarray,
        leaves: np.ndarray,
        *,
        probe: int = TREE_PROBE,
        chunk: int = ASSIGN_CHUNK,
    ) -> np.ndarray:
        """Leaf of each row in a ``fit_tree`` tree: the nearest leaf among those of its ``probe``
        nearest top cells.

        vectors (n, dim) -> (n,) int32 leaf ids. Each step is exhaustive (a matrix product per top
        cell), so the result is deterministic; with ``probe=1`` it is exactly the tree's path."""
        top = np.ascontiguousarray(top, dtype=np.float32)
        offsets = np.asarray(offsets, dtype=np.int64)
        leaves = np.ascontiguousarray(leaves, dtype=np.float32)
        leaf_norms = (leaves * leaves).sum(axis=1)  # (K,)
        top_norms = (top * top).sum(axis=1)  # (k1,)
        n_probe = min(int(probe), top.shape[0])
        out = np.empty(vectors.shape[0], dtype=np.int32)
        for start in range(0, vectors.shape[0], chunk):
            block = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)  # (b, dim)
            d_top = top_norms[None, :] - 2.0 * (block @ top.T)  # (b, k1)
            # (b, probe) nearest top cells first: one argmin per probe beats a sort of k1 distances
            cells = np.empty((block.shape[0], n_probe), dtype=np.int64)
            every = np.arange(block.shape[0])
            for p in range(n_probe):
                cells[:, p] = np.argmin(d_top, axis=1)
                if p + 1 < n_probe:
                    d_top[every, cells[:, p]] = np.inf
            ids = np.empty(block.shape[0], dtype=np.int32)
            best = np.full(block.shape[0], np.inf, dtype=np.float32)
            for p in range(n_probe):
                cell = cells[:, p]
                order = np.argsort(cell, kind="stable")
                bounds = np.searchsorted(cell[order], np.arange(top.shape[0] + 1))  # (k1 + 1,)
                for j in np.flatnonzero(np.diff(bounds)).tolist():
                    rows = order[bounds[j] : bounds[j + 1]]
                    lo, hi = int(offsets[j]), int(offsets[j + 1])
                    d = leaf_norms[None, lo:hi] - 2.0 * (block[rows] @ leaves[lo:hi].T)  # (m, leaves of j)
                    arg = np.argmin(d, axis=1)
                    dist = d[np.arange(rows.size), arg]
                    better = dist < best[rows]  # ties keep the nearer top cell's leaf
                    ids[rows[better]] = lo + arg[better]
                    best[rows[better]] = dist[better]
            out[start : start + block.shape[0]] = ids
        return out

    @staticmethod
    def assign(vectors: np.ndarray, centroids: np.ndarray, *, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
        """Nearest centroid (Euclidean) of each row: vectors (n, dim) -> (n,) int32.

        Up to ``EXACT_ASSIGN_MAX`` centroids the search is exhaustive (BLAS). Above, it goes through a
        FAISS IVF over the centroids (``√K`` cells, 4 probed): ~10x fewer distance computations for
        K = 4096, and an occasional second-nearest centroid, which only makes the codes a little
        coarser (scores stay those of the assigned centroids).
        """
        faiss = import_faiss()
        cents = np.ascontiguousarray(centroids, dtype=np.float32)  # (K, dim)
        k, dim = cents.shape
        if k <= EXACT_ASSIGN_MAX:
            index = faiss.IndexFlatL2(dim)
        else:
            cells = int(2 ** round(np.log2(np.sqrt(k))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, cells)
            index.cp.min_points_per_centroid = 1
            index.train(cents)
            index.nprobe = 4
        index.add(cents)
        out = np.empty(vectors.shape[0], dtype=np.int32)
        for start in range(0, vectors.shape[0], chunk):
            block = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)  # (b, dim)
            ids = index.search(block, 1)[1][:, 0]  # (b,), -1 where the probed cells were empty
            missing = ids < 0
            if missing.any():
                flat = faiss.IndexFlatL2(dim)
                flat.add(cents)
                ids[missing] = flat.search(block[missing], 1)[1][:, 0]
            out[start : start + block.shape[0]] = ids
        return out

    @classmethod
    def from_assignments(
        cls,
        centroids: np.ndarray,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        **kwargs: Any,
    ) -> FaissCandidateGenerator:
        """Build the lists from patch assignments given unit by unit, in chunks.

        Parameters
        ----------
        centroids : np.ndarray
            (K, dim) float32.
        chunks : iterable of (assignments, lengths)
            Consecutive runs of units: ``assignments`` (n_rows,) int centroid of each patch, ``lengths``
            (n_chunk_units,) patches per unit (summing to ``n_rows``). Units are numbered in order.
        **kwargs
            Forwarded to the constructor (``nprobe``, ``device``).
        """
        k_centroids = int(centroids.shape[0])
        units_parts: list[np.ndarray] = []
        cents_parts: list[np.ndarray] = []
        n_units = 0
        for assignments, lengths in chunks:
            lengths = np.asarray(lengths, dtype=np.int64)
            ids = np.asarray(assignments).astype(np.int64)  # (n_rows,)
            if ids.dtype.kind == "i" and ids.size and ids.min() < 0:  # int16 view of uint16 codes
                ids = ids & 0xFFFF
            if ids.size != int(lengths.sum()):
                raise InvalidInputError("assignments must have one entry per patch of the chunk's units")
            if ids.size and (ids.min() < 0 or ids.max() >= k_centroids):
                raise InvalidInputError(f"assignments must be centroid ids in [0, {k_centroids})")
            unit = np.repeat(np.arange(n_units, n_units + lengths.size, dtype=np.int64), lengths)  # (n_rows,)
            # One entry per (unit, centroid), unit-major; units of different chunks never collide.
            keys = np.unique(unit * (1 << 32) + ids)  # (nnz_chunk,)
            units_parts.append((keys >> 32).astype(np.int32))
            cents_parts.append((keys & 0xFFFFFFFF).astype(np.int32))
            n_units += int(lengths.size)
        units = np.concatenate(units_parts) if units_parts else np.zeros(0, dtype=np.int32)  # (nnz,)
        cents = np.concatenate(cents_parts) if cents_parts else np.zeros(0, dtype=np.int32)  # (nnz,)
        order = np.argsort(cents, kind="stable")  # centroid-major, units ascending within a list
        list_offsets = np.concatenate([[0], np.cumsum(np.bincount(cents, minlength=k_centroids))])
        unit_offsets = np.concatenate([[0], np.cumsum(np.bincount(units, minlength=n_units))])
        return cls(
            centroids,
            list_offsets,
            units[order],
            n_units,
            unit_offsets=unit_offsets,
            unit_centroids=cents,
            list_entries=order,
            **kwargs,
        )

    def use_entry_vectors(self, vectors: np.ndarray) -> None:
        """Score list entries by their own vectors instead of their centroid's.

        ``vectors`` (nnz, dim): one row per (unit, centroid) entry in unit-major order (units ascending,
        centroids ascending within a unit), i.e. each unit's patches pooled per centroid as
        ``pool_by_centroid`` returns them. A probed entry then counts ``q_i · v`` (the pooled row's own
        similarity) rather than ``q_i · c``: the same lists are read, but pages whose rendering of a word
        matches the query token better rank higher, which the centroid alone cannot tell apart.
        """
        if self.list_entries is None:
            raise InvalidInputError("entry vectors need lists built by from_assignments")
        if vectors.ndim != 2 or vectors.shape != (self.list_units.size, self.centroids.shape[1]):
            want = (self.list_units.size, self.centroids.shape[1])
            raise InvalidInputError(f"entry vectors must be {want}, got {vectors.shape}")
        self.entry_vectors = vectors

    @classmethod
    def build(
        cls,
        vectors: np.ndarray | torch.Tensor,
        offsets: np.ndarray | torch.Tensor,
        *,
        n_centroids: int | None = None,
        sample_size: int = 65536,
        seed: int = 0,
        **kwargs: Any,
    ) -> FaissCandidateGenerator:
        """Fit centroids on a sample of vectors (N, dim), assign every patch and build the lists.

        ``offsets`` (n_units + 1,) int64. ``n_centroids`` defaults to ``default_n_centroids(N)``.
        """
        x = vectors.detach().cpu().float().numpy() if isinstance(vectors, torch.Tensor) else vectors
        off = np.asarray(offsets.cpu() if isinstance(offsets, torch.Tensor) else offsets, dtype=np.int64)
        n = int(off[-1])
        if n == 0:
            raise InvalidInputError("cannot build a FAISS index over a collection without patch vectors")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))  # (n_sample,)
        centroids = cls.fit_centroids(
            np.asarray(x[rows], dtype=np.float32), n_centroids or default_n_centroids(n), seed=seed
        )
        ids = cls.assign(x, centroids)  # (N,)
        return cls.from_assignments(centroids, [(ids, np.diff(off))], **kwargs)

    # -------------------------------------------------------------------------------- persist
    def save(self, directory: str | Path) -> None:
        """Write ``ivf.json`` + ``ivf.npz`` into ``directory`` (created if missing)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(
            path / IVF_NPZ,
            centroids=self.centroids,
            list_offsets=self.list_offsets,
            list_units=self.list_units,
            unit_offsets=self.unit_offsets,
            unit_centroids=self.unit_centroids,
        )
        (path / IVF_JSON).write_text(
            json.dumps({"format": 1, "n_units": self._n_units, "nprobe": self.nprobe})
        )

    @classmethod
    def load(cls, directory: str | Path, **kwargs: Any) -> FaissCandidateGenerator:
        """Read what ``save`` wrote; ``kwargs`` override the saved ``nprobe`` / pick the ``device``."""
        path = Path(directory)
        meta = json.loads((path / IVF_JSON).read_text())
        with np.load(path / IVF_NPZ, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        kwargs.setdefault("nprobe", int(meta["nprobe"]))
        kwargs.setdefault("unit_offsets", arrays.get("unit_offsets"))
        kwargs.setdefault("unit_centroids", arrays.get("unit_centroids"))
        return cls(
            arrays["centroids"], arrays["list_offsets"], arrays["list_units"], int(meta["n_units"]), **kwargs
        )

    # -------------------------------------------------------------------------------- search
    @property
    def n_units(self) -> int:
        return self._n_units

    @property
    def dim(self) -> int | None:
        return int(self.centroids.shape[1])

    @property
    def nbytes(self) -> int:
        """Resident bytes of the lists (both directions) and centroids."""
        arrays = (self.centroids, self.list_offsets, self.list_units, self.unit_offsets, self.unit_centroids)
        return int(sum(a.nbytes for a in arrays))

    def centroid_scores(self, query: torch.Tensor, units: np.ndarray) -> torch.Tensor:
        """Centroid interaction of ``units`` (k,): ``Σ_i max_{c ∈ C(u)} q_i · c`` as (k,) float32.

        ``C(u)`` is the set of centroids the unit's patches are assigned to, so this equals k-means code
        MaxSim (``code_maxsim`` on every patch's centroid id) while reading each distinct id once.
        query (n_q, dim) float32.
        """
        units = np.asarray(units, dtype=np.int64)
        starts = self.unit_offsets[units]
        lengths = self.unit_offsets[units + 1] - starts  # (k,)
        sub_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (k + 1,)
        rows = np.arange(int(sub_offsets[-1]), dtype=np.int64) + np.repeat(starts - sub_offsets[:-1], lengths)
        ids = torch.from_numpy(self.unit_centroids[rows])  # (n_rows,) int32
        lut = query.float() @ torch.from_numpy(self.centroids).T  # (n_q, K)
        return code_maxsim(lut.contiguous(), ids, torch.from_numpy(sub_offsets))  # (k,)

    def _impl(self, query: torch.Tensor, k: int, mask: np.ndarray | None) -> Candidates:
        return self.search(query, k, mask=mask)

    def use_device(self, device: torch.device | str) -> None:
        """Run the centroid search on ``device`` by a torch matmul, unless faiss-gpu already runs it."""
        if not self.on_gpu:
            self.device_centroids = torch.from_numpy(self.centroids).to(device)  # (K, dim)

    def probe(self, query: torch.Tensor, probes: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``probes`` best centroids of each query token: sims (n_q, probes) float32, ids int64."""
        if self.device_centroids is not None:
            sims = query.to(self.device_centroids) @ self.device_centroids.T  # (n_q, K)
            top = sims.topk(probes, dim=1)
            return top.values.cpu().numpy(), top.indices.cpu().numpy()
        return self.index.search(np.ascontiguousarray(query.numpy(), dtype=np.float32), probes)

    def search(
        self, query: torch.Tensor, k: int, *, mask: np.ndarray | None = None, nprobe: int | None = None
    ) -> Candidates:
        """``candidates`` with an optional per-call ``nprobe`` (query validated by the caller)."""
        n_q = int(query.shape[0])
        probes = min(int(nprobe or self.nprobe), self.centroids.shape[0])
        sims, ids = self.probe(query, probes)  # (n_q, probes) each, each row best first
        starts = self.list_offsets[ids].ravel()  # (n_q·probes,)
        lengths = (self.list_offsets[ids + 1].ravel() - starts).astype(np.int64)
        total = int(lengths.sum())
        if total == 0:
            return Candidates.empty()
        # Concatenate the probed lists without a Python loop: entry j of the run of list r is
        # list_units[starts[r] + j].
        run_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (n_q·probes,)
        pos = np.arange(total, dtype=np.int64) - np.repeat(run_start - starts, lengths)  # (total,)
        units = self.list_units[pos].astype(np.int64)  # (total,)
        token = np.repeat(np.repeat(np.arange(n_q), probes), lengths)  # (total,)
        sim = np.repeat(sims.ravel(), lengths).astype(np.float32)  # (total,) the centroids' similarity
        if mask is not None:
            keep = mask[units]
            units, token, sim, pos = units[keep], token[keep], sim[keep], pos[keep]
            if units.size == 0:
                return Candidates.empty()
        if self.entry_vectors is not None and self.list_entries is not None:
            rows = torch.from_numpy(np.asarray(self.entry_vectors[self.list_entries[pos]], dtype=np.float32))
            sim = (rows * query[torch.from_numpy(token)]).sum(dim=1).numpy()  # (total,) q_i · v
        floor = sims[:, -1].astype(np.float32)  # (n_q,) best similarity any unprobed centroid could give
        best = torch.zeros(n_q * self._n_units, dtype=torch.float32)  # (n_q·n_units,) gain over the floor
        best.scatter_reduce_(
            0,
            torch.from_numpy(token * self._n_units + units),
            torch.from_numpy(sim - floor[token]),
            reduce="amax",
        )
        gain = best.view(n_q, self._n_units).sum(dim=0).numpy()  # (n_units,)
        hit = np.unique(units)  # (n_hit,) units with at least one probed centroid
        found, scores = top_k(gain[hit], hit, k)
        return Candidates(found, scores + float(floor.sum()))


def default_n_centroids(n_patches: int) -> int:
    """A power of two near ``4·sqrt(n_patches)`` in [16, 65536] (PLAID uses 2^⌊log2(16·sqrt(n))⌋;
    a quarter of that keeps the assignment pass affordable on a CPU)."""
    k = 4.0 * np.sqrt(max(1, n_patches))
    return int(min(65536, max(16, 2 ** int(np.round(np.log2(k))))))


def make_candidate_generator(kind: str, **kwargs: Any) -> CandidateGenerator:
    """Build a generator by name (``"exact"`` or ``"faiss"``), txtai-style.

    ``"faiss"`` forwards ``kwargs`` to ``FaissCandidateGenerator.build`` (``vectors``, ``offsets``, …) and
    raises ``MissingDependencyError`` when FAISS is not installed; ``"exact"`` to
    ``ExactCandidateGenerator.from_vectors``.
    """
    if kind == "exact":
        return ExactCandidateGenerator.from_vectors(**kwargs)
    if kind == "faiss":
        import_faiss()
        return FaissCandidateGenerator.build(**kwargs)
    raise InvalidInputError(f"unknown candidate generator {kind!r}; use 'exact' or 'faiss'")


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest (Euclidean) centroid (k, dim) of each row of x (n, dim): (n,) int64."""
    d = (centroids * centroids).sum(axis=1)[None, :] - 2.0 * (x @ centroids.T)  # (n, k)
    return np.argmin(d, axis=1)


def pool_by_centroid(
    vectors: np.ndarray, assignments: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge each unit's patches that share a stage-1 centroid into their L2-normalised mean.

    A page's patches of one visual word are near-duplicates that land on one centroid; their mean keeps
    what distinguishes this page's rendering of the word (which the centroid id alone loses), so
    MaxSim on the pooled vectors ranks almost like MaxSim on the patches at ~1/5 of the rows. The
    pooled rows of a unit are its distinct centroids, in ascending centroid order: exactly the
    generator's ``C(u)``.

    Parameters
    ----------
    vectors : np.ndarray
        (n_rows, dim) patch vectors of consecutive units.
    assignments : np.ndarray
        (n_rows,) int centroid of each patch.
    lengths : np.ndarray
        (n_units,) patches per unit.

    Returns
    -------
    pooled : np.ndarray
        (n_pooled, dim) float32 unit-normalised means.
    centroid_ids : np.ndarray
        (n_pooled,) int32 centroid of each pooled row.
    pooled_lengths : np.ndarray
        (n_units,) int64 pooled rows per unit.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if int(lengths.sum()) == 0:  # only text-less units (a blank image): nothing to pool
        dim = int(np.shape(vectors)[1]) if np.ndim(vectors) == 2 else 0
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int32), np.zeros(lengths.size, np.int64)
    ids = np.asarray(assignments).astype(np.int64) & 0xFFFFFFFF  # int16 views of uint16 codes too
    unit = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)  # (n_rows,)
    key = unit * (1 << 32) + ids  # (n_rows,)
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    new_group = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])  # (n_rows,) in sorted order
    starts = np.flatnonzero(new_group)  # (n_pooled,)
    group = np.empty(order.size, dtype=np.int64)  # (n_rows,) pooled row of each input row
    group[order] = np.cumsum(new_group) - 1
    # The sums as one sparse (n_pooled, n_rows) 0/1 matrix times the rows: ~10x faster than
    # np.add.reduceat over a gathered copy.
    members = csr_matrix(
        (np.ones(order.size, dtype=np.float32), (group, np.arange(order.size))),
        shape=(starts.size, order.size),
    )
    sums = np.asarray(members @ np.asarray(vectors, dtype=np.float32))  # (n_pooled, dim)
    norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))[:, None]  # (n_pooled, 1)
    pooled = np.asarray(sums / np.where(norms > 0, norms, 1.0), dtype=np.float32)
    group_keys = sorted_keys[starts]
    pooled_lengths = np.bincount(group_keys >> 32, minlength=lengths.size).astype(np.int64)
    return pooled, (group_keys & 0xFFFFFFFF).astype(np.int32), pooled_lengths
