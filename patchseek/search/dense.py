"""Stage 1 by a dense scan: every unit summarised as a fixed number of rows, all scored per query.

``DenseCandidateGenerator`` holds each unit as ``R`` summary rows, (n_units, R, dim), and scores every
allowed unit with MaxSim on them in one chunked matrix product per query (bfloat16 where the CPU has
bfloat16 dot-product instructions or on a GPU, float32 otherwise). The summary rows are the unit's
(pooled) patch vectors merged by Ward clustering into ``R`` L2-normalised means
(``summarize_units``): a page's patches form a few dozen tight groups (one per rendered word, glyph or
texture), and the mean of a group answers a query token almost exactly as its best member does.

Why a scan and not per-token probing (``FaissCandidateGenerator``): the exact top 10 of a MaxSim query
over 10^4 pages is decided by small differences summed over all query tokens. Probing a few inverted
lists per token gives the unprobed (token, page) pairs a floor value, and that error is the same size as
the gaps between rank 10 and rank 1000; on the synthetic corpus of ``bench/search.py`` it kept 0.88 of
the exact top 10, against 0.99 for this scan of 96 rows per page, which costs ~1/16 of brute force
(see docs/BENCHMARKS.md, "Search at scale"). Its cost grows linearly with the collection: it is the
default up to ``DENSE_MAX_UNITS`` units; above that, the inverted lists are the only sublinear choice.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.merge import ward_labels
from patchseek.search.base import CandidateGenerator, Candidates, top_k

logger = logging.getLogger(__name__)

DEFAULT_ROWS = 96  # summary rows per unit; 64 lost a third of the exact top 10 in the bench, 96 kept 0.99
DENSE_MAX_UNITS = 200_000  # above this many units a CPU scan is slower than the inverted lists
PARALLEL_MIN_UNITS = 64  # fewer units are summarised in this process: the hand-off costs more
SCAN_CHUNK_ROWS = 32_768  # rows per matrix product: the (n_q, rows) block of sims stays in the L2 cache


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bfloat16() -> bool:
    """True when the CPU advertises bfloat16 dot products (AVX512-BF16 or AMX), which make a bfloat16
    matrix product ~2-3x faster than float32 there; elsewhere bfloat16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def summarize_units(
    vectors: np.ndarray, lengths: np.ndarray, n_rows: int = DEFAULT_ROWS, *, workers: int = 1
) -> np.ndarray:
    """Each unit's rows merged into ``n_rows`` Ward-cluster means: (n_units, n_rows, dim) float16.

    Parameters
    ----------
    vectors : np.ndarray
        (n_total, dim) rows of consecutive units (patch vectors, or patches pooled per centroid).
    lengths : np.ndarray
        (n_units,) rows per unit.
    n_rows : int
        Summary rows per unit. A unit with fewer distinct groups keeps its rows and repeats its first
        one (a repeated row never changes a maximum); a unit without rows is all zeros.
    workers : int
        Processes that share the units (``SummaryPool``): the Ward loop holds the GIL, so threads do not
        help. The result is the same for any count; 1 (the default) runs here only.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 1:
        raise InvalidInputError(f"n_rows must be an integer >= 1, got {n_rows!r}")
    if int(lengths.sum()) != vectors.shape[0]:
        raise InvalidInputError("lengths must add up to the number of rows")
    if workers > 1 and lengths.size >= PARALLEL_MIN_UNITS:
        return SummaryPool(workers).summarize(vectors, lengths, n_rows)
    return _summarize_serial(vectors, lengths, n_rows)


def _summarize_serial(vectors: np.ndarray, lengths: np.ndarray, n_rows: int) -> np.ndarray:
    out = np.zeros((lengths.size, n_rows, vectors.shape[1]), dtype=np.float16)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    with threadpool_limits(1):  # one small product per unit: BLAS threads cost more than they give
        for u in range(lengths.size):
            x = np.asarray(vectors[starts[u] : starts[u + 1]], dtype=np.float32)  # (n, dim)
            if x.shape[0] == 0:
                continue
            labels = ward_labels(x, n_rows)  # (n,) in 0..k-1
            members = np.zeros((int(labels.max()) + 1, x.shape[0]), dtype=np.float32)  # (k, n) one-hot
            members[labels, np.arange(x.shape[0])] = 1.0
            sums = members @ x  # (k, dim)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            first = x[np.unique(labels, return_index=True)[1]]  # (k, dim) a zero mean keeps its first row
            means = np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), first)
            out[u, : means.shape[0]] = means
            out[u, means.shape[0] :] = means[0]
    return out


def default_index_workers() -> int:
    """Processes for the index-side work of one writer: the CPUs this process may run on, up to 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


_POOL_LOCK = threading.Lock()  # loky's reusable executor is one per process: one resize at a time


class SummaryPool:
    """Ward summaries of a batch's units split across ``workers`` processes: this one and
    ``workers - 1`` pool processes, each given a contiguous run of units with about the same rows.

    The pool is loky's reusable executor (joblib's process pool): its processes are started fresh
    (never a fork of this process, whose other threads may hold locks), without re-running the
    caller's ``__main__``, stay up between batches and stop after ``IDLE_S`` idle. A pool process
    that dies (killed, out of memory) costs only time: its units are summarised here, and the next
    batch gets a new pool.
    """

    IDLE_S = 300

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))

    def summarize(self, vectors: np.ndarray, lengths: np.ndarray, n_rows: int) -> np.ndarray:
        """Like ``summarize_units`` (the same array), with the units shared among the processes."""
        from joblib.externals.loky import get_reusable_executor

        starts = np.concatenate([[0], np.cumsum(lengths)])  # (n_units + 1,)
        # Cut into ``workers`` runs of about equal rows (Ward costs ~rows² per unit; units are alike).
        cuts = np.searchsorted(starts, np.linspace(0, starts[-1], self.workers + 1)[1:-1])
        bounds = [0, *sorted({int(c) for c in cuts if 0 < c < lengths.size}), lengths.size]
        runs = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

        def part(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            return np.asarray(vectors[starts[a] : starts[b]]), lengths[a:b]

        futures: list[Future[np.ndarray] | None] = []
        with _POOL_LOCK:
            executor = get_reusable_executor(max_workers=self.workers - 1, timeout=self.IDLE_S)
            for a, b in runs[:-1]:
                try:
                    futures.append(executor.submit(_summarize_serial, *part(a, b), n_rows))
                except BrokenProcessPool:
                    futures.append(None)
        own = _summarize_serial(*part(*runs[-1]), n_rows)  # this process takes the last run meanwhile
        out = []
        for future, (a, b) in zip(futures, runs[:-1], strict=True):
            try:
                if future is None:
                    raise BrokenProcessPool("the pool was broken before the task was submitted")
                out.append(future.result())
            except BrokenProcessPool:
                logger.warning("a summary worker process died; summarising its units here")
                out.append(_summarize_serial(*part(a, b), n_rows))
        out.append(own)
        return np.concatenate(out)


class DenseCandidateGenerator(CandidateGenerator):
    """Score every allowed unit by MaxSim on its summary rows; keep the ``k`` best.

    Parameters
    ----------
    rows : np.ndarray or torch.Tensor
        (n_units, R, dim) summary rows (``summarize_units``), copied once into a contiguous tensor of
        ``dtype``.
    valid : np.ndarray, optional
        (n_units,) bool, False for units without patches (never candidates). Default: all valid.
    dtype : torch.dtype, optional
        Scan precision; default bfloat16 on a GPU or a CPU with fast bfloat16, else float32. Scores are
        accumulated in float32 either way.
    device : str
        Where the rows live and the scan runs (``"cpu"`` or ``"cuda"``).

    Examples
    --------
    >>> import torch
    >>> rows = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.6, 0.8]]])  # (2 units, 2 rows, 2)
    >>> gen = DenseCandidateGenerator(rows, dtype=torch.float32)
    >>> c = gen.candidates(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 2)
    >>> c.units.tolist(), [round(s, 2) for s in c.scores.tolist()]
    ([0, 1], [2.0, 1.4])
    """

    kind = "dense"

    def __init__(
        self,
        rows: np.ndarray | torch.Tensor,
        valid: np.ndarray | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: str = "cpu",
    ) -> None:
        if dtype is None:
            dtype = torch.bfloat16 if device != "cpu" or cpu_has_fast_bfloat16() else torch.float32
        data = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows))
        if data.dim() != 3:
            raise InvalidInputError(f"rows must be (n_units, R, dim), got {tuple(data.shape)}")
        self.rows = data.to(device=device, dtype=dtype).contiguous()  # (n_units, R, dim)
        n = int(self.rows.shape[0])
        self.valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        if self.valid.shape != (n,):
            raise InvalidInputError(f"valid must be ({n},), got {self.valid.shape}")

    @classmethod
    def from_chunks(
        cls, chunks: Iterable[tuple[np.ndarray, np.ndarray]], n_rows: int = DEFAULT_ROWS, **kwargs: object
    ) -> DenseCandidateGenerator:
        """Summarise units given chunk by chunk as ``(vectors (n_rows_chunk, dim), lengths (n_units,))``."""
        parts, valid = [], []
        for vectors, lengths in chunks:
            parts.append(summarize_units(vectors, lengths, n_rows))
            valid.append(np.asarray(lengths) > 0)
        if not parts:
            raise InvalidInputError("a dense generator needs at least one unit")
        return cls(np.concatenate(parts), np.concatenate(valid), **kwargs)  # type: ignore[arg-type]

    @property
    def n_units(self) -> int:
        return int(self.rows.shape[0])

    @property
    def dim(self) -> int | None:
        return int(self.rows.shape[2])

    @property
    def nbytes(self) -> int:
        """Resident bytes of the summary rows."""
        return int(self.rows.element_size() * self.rows.nelement())

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """MaxSim of query (n_q, dim) on every unit's summary rows: (n_units,) float32 on the CPU."""
        q = query.to(self.rows.device, self.rows.dtype)  # (n_q, dim)
        n, r, dim = self.rows.shape
        out = torch.empty(n, dtype=torch.float32, device=self.rows.device)
        per = max(1, SCAN_CHUNK_ROWS // r)  # units per matrix product
        flat = self.rows.view(n * r, dim)  # (n·R, dim)
        for s in range(0, n, per):
            e = min(n, s + per)
            # Tokens × rows, not rows × tokens: the max over a unit's R rows is then a reduction over
            # the last, contiguous axis (~25% faster overall on a CPU than the strided one). The max runs
            # in float32: torch's CPU bfloat16 max is not vectorised, and casting the block first made
            # the whole scan ~1.6x faster (bench/engine.py, docs/BENCHMARKS.md).
            sims = (q @ flat[s * r : e * r].T).float().view(-1, e - s, r)  # (n_q, units, R)
            out[s:e] = sims.amax(dim=2).sum(dim=0)
        return out.cpu()

    def _impl(self, query: torch.Tensor, k: int, mask: np.ndarray | None) -> Candidates:
        allowed = self.valid if mask is None else self.valid & mask  # (n_units,)
        units = np.flatnonzero(allowed)
        if units.size == 0:
            return Candidates.empty()
        scores = self.scores(query).numpy()  # (n_units,)
        found, best = top_k(scores[units], units, k)
        return Candidates(found, best)
