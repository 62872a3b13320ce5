"""``Compressor``: prune → merge → quantize for a collection, and scoring against its codes.

This is the one object the indexer and search use::

    comp = Compressor(CompressionConfig(prune="topp", quantizer="kmeans", residual_bits=2, keep="float16"))
    comp.fit(bags)                          # fits the codec on a sample of the pruned/merged vectors
    batch = comp.encode(bags)               # CompressedBatch: packed codes + offsets (+ rerank copy)
    approx = comp.score(q, batch)           # (n_units,) stage-2 scores on the codes
    exact = comp.rerank(q, batch, top_ids)  # stage-3 MaxSim on the float16/int8 copy
    comp.save(dir); Compressor.load(dir)    # config + fitted codec (json + npz)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import (
    ArrayLike,
    Backend,
    PatchMerger,
    PatchPruner,
    Quantizer,
    as_code_tensor,
    check_bag,
)
from patchseek.indexer.compress.config import CompressionConfig
from patchseek.indexer.compress.merge import HierarchicalMerger, merge_video_segment
from patchseek.indexer.compress.prune import AdaptivePruner, TopPPruner
from patchseek.indexer.compress.quantize import make_quantizer
from patchseek.kernels import maxsim
from patchseek.types import PatchBag

COMPRESSION_JSON = "compression.json"
DEFAULT_SAMPLE = 50_000


@dataclass(frozen=True)
class CompressedBatch:
    """Encoded units packed in one array.

    Attributes
    ----------
    codes : np.ndarray
        (N, ...) the codec's codes of every kept patch, unit after unit (see the quantizer).
    offsets : np.ndarray
        (n_units + 1,) int64; unit ``u`` owns rows ``offsets[u]:offsets[u + 1]``.
    positions : np.ndarray
        (N, 2) int64 (row, col) of each kept or merged patch on its unit's grid (heat maps).
    keep : np.ndarray or None
        (N, dim) float16 or int8 copy of the kept vectors for the exact rerank.
    keep_scales : np.ndarray or None
        (N,) float32 per-patch scale of an int8 ``keep`` (value = ``keep[j] * keep_scales[j]``).
    """

    codes: np.ndarray
    offsets: np.ndarray
    positions: np.ndarray
    keep: np.ndarray | None = None
    keep_scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = int(self.codes.shape[0])
        off = self.offsets
        if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != n or bool((np.diff(off) < 0).any()):
            raise InvalidInputError(f"offsets must go from 0 to {n} without decreasing")
        if self.positions.shape != (n, 2):
            raise InvalidInputError(f"positions must be ({n}, 2), got {self.positions.shape}")
        if self.keep is not None and self.keep.shape[0] != n:
            raise InvalidInputError(f"keep must have {n} rows, got {self.keep.shape[0]}")
        if (self.keep is not None and self.keep.dtype == np.int8) != (self.keep_scales is not None):
            raise InvalidInputError("keep_scales go with an int8 keep copy, and only with one")

    @property
    def n_units(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_patches(self) -> int:
        return int(self.codes.shape[0])

    @property
    def code_bytes(self) -> int:
        """Bytes of the codes (the stage-1/2 index), excluding the rerank copy."""
        return int(self.codes.nbytes)

    def select(self, units: Sequence[int] | np.ndarray) -> CompressedBatch:
        """The batch restricted to ``units`` (k,), in that order."""
        ids = np.asarray(units, dtype=np.int64).reshape(-1)  # (k,)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_units):
            raise InvalidInputError(f"unit ids must be in [0, {self.n_units})")
        starts, ends = self.offsets[ids], self.offsets[ids + 1]  # (k,), (k,)
        lengths = ends - starts
        rows = (
            np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
            if ids.size
            else (np.zeros(0, dtype=np.int64))
        )  # (n_rows,)
        return CompressedBatch(
            codes=self.codes[rows],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            positions=self.positions[rows],
            keep=None if self.keep is None else self.keep[rows],
            keep_scales=None if self.keep_scales is None else self.keep_scales[rows],
        )


class Compressor:
    """Prune, merge and quantize patch bags as a ``CompressionConfig`` says, and score the codes.

    Parameters
    ----------
    config : CompressionConfig, optional
        Defaults to ``CompressionConfig()`` (float16 codes, no pruning or merging).
    """

    def __init__(self, config: CompressionConfig | None = None) -> None:
        self.config = config or CompressionConfig()
        cfg = self.config
        self.pruner: PatchPruner | None = None
        if cfg.prune == "topp":
            self.pruner = TopPPruner(cfg.prune_ratio, min_keep=cfg.prune_min)
        elif cfg.prune == "adaptive":
            self.pruner = AdaptivePruner(cfg.prune_k, min_keep=cfg.prune_min)
        self.merger: PatchMerger | None = None
        if cfg.merge == "hierarchical" and cfg.pool_factor > 1:
            self.merger = HierarchicalMerger(cfg.pool_factor, min_keep=cfg.prune_min)
        self.quantizer: Quantizer = make_quantizer(cfg)

    # ------------------------------------------------------------------------------ compression
    def compress_bag(self, bag: PatchBag) -> PatchBag:
        """Prune, then merge, one unit's bag (no quantization)."""
        check_bag(bag)
        if self.pruner is not None:
            bag = self.pruner.prune(bag).bag
        if self.merger is not None:
            bag = self.merger.merge(bag).bag
        return bag

    def compress_frames(self, frames: Sequence[PatchBag]) -> list[PatchBag]:
        """Turn a video's frame bags into segment bags of ``video_segment_frames`` consecutive frames.

        Segment ``s`` covers frames ``[s·F, min((s+1)·F, n_frames))``. Each frame is pruned, then the
        segment's patches are merged by k-medoids (``merge_video_segment``) into
        ``max(prune_min, kept // (F·pool))`` medoids, where ``kept`` is the segment's pruned patch count
        and ``pool`` is ``pool_factor`` when merging is on (1 otherwise). With ``F = 1`` every frame is
        ``compress_bag``-ed on its own. Encode the result with ``compressed=True``.
        """
        per = self.config.video_segment_frames
        if per == 1:
            return [self.compress_bag(f) for f in frames]
        pool = self.config.pool_factor if self.config.merge == "hierarchical" else 1
        out: list[PatchBag] = []
        for start in range(0, len(frames), per):
            chunk = list(frames[start : start + per])
            for f in chunk:
                check_bag(f)
            pruned = [self.pruner.prune(f).bag if self.pruner is not None else f for f in chunk]
            kept = sum(b.n_patches for b in pruned)
            n_out = max(self.config.prune_min, kept // (len(chunk) * pool))
            out.append(merge_video_segment(pruned, n_out, seed=self.config.seed))
        return out

    # -------------------------------------------------------------------------------------- fit
    def fit(
        self, bags: Sequence[PatchBag], *, compressed: bool = False, sample_size: int = DEFAULT_SAMPLE
    ) -> Compressor:
        """Fit the codec on a seeded uniform sample of the collection's (pruned/merged) vectors.

        Parameters
        ----------
        bags : sequence of PatchBag
            The collection's units (or a representative subset).
        compressed : bool
            True when ``bags`` already went through ``compress_bag`` / ``compress_frames``.
        sample_size : int
            Vectors sampled at most.

        Returns
        -------
        Compressor
            ``self``.
        """
        units = list(bags) if compressed else [self.compress_bag(b) for b in bags]
        counts = np.array([b.n_patches for b in units], dtype=np.int64)  # (n_units,)
        total = int(counts.sum())
        if total == 0:
            raise InvalidInputError("cannot fit compression on a collection without patch vectors")
        rng = np.random.default_rng(self.config.seed)
        rows = np.sort(rng.choice(total, size=min(total, sample_size), replace=False))  # (n_sample,)
        starts = np.concatenate([[0], np.cumsum(counts)])  # (n_units + 1,)
        unit_of = np.searchsorted(starts, rows, side="right") - 1  # (n_sample,)
        parts = []
        for u in np.unique(unit_of):
            local = rows[unit_of == u] - starts[u]
            parts.append(units[u].vectors.detach().to("cpu", torch.float32).numpy()[local])  # (k_u, dim)
        self.quantizer.fit(np.concatenate(parts))  # (n_sample, dim)
        return self

    # ----------------------------------------------------------------------------------- encode
    def encode(self, bags: Sequence[PatchBag], *, compressed: bool = False) -> CompressedBatch:
        """Compress and quantize units into one packed batch.

        Parameters
        ----------
        bags : sequence of PatchBag
            Units in the order they get ids ``0..n_units-1`` in the batch.
        compressed : bool
            True when ``bags`` already went through ``compress_bag`` / ``compress_frames``.
        """
        units = list(bags) if compressed else [self.compress_bag(b) for b in bags]
        if not self.quantizer.is_fitted:
            raise InvalidInputError("Compressor is not fitted: call fit(bags) first")
        dim = self.quantizer.fitted_dim
        counts = np.array([b.n_patches for b in units], dtype=np.int64)
        vectors = (
            np.concatenate([b.vectors.detach().to("cpu", torch.float32).numpy() for b in units])
            if units
            else np.zeros((0, dim), dtype=np.float32)
        )  # (N, dim)
        positions = (
            np.concatenate([b.positions.detach().cpu().numpy().astype(np.int64) for b in units])
            if units
            else np.zeros((0, 2), dtype=np.int64)
        )  # (N, 2)
        keep, scales = self._keep_copy(vectors)
        return CompressedBatch(
            codes=self.quantizer.encode(vectors),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            positions=positions,
            keep=keep,
            keep_scales=scales,
        )

    def _keep_copy(self, vectors: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The rerank copy of vectors (N, dim): float16, or int8 with per-patch scales (N,)."""
        if self.config.keep == "float16":
            return vectors.astype(np.float16), None
        if self.config.keep == "int8":
            amax = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(0, dtype=np.float32)  # (N,)
            scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)  # (N,)
            q = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)  # (N, dim)
            return q, scales
        return None, None

    # ------------------------------------------------------------------------------------ score
    @property
    def bytes_per_patch(self) -> int:
        """Code bytes per stored patch (rerank copy excluded)."""
        return self.quantizer.bytes_per_patch

    def score(self, q: ArrayLike, batch: CompressedBatch, *, backend: Backend = "auto") -> torch.Tensor:
        """Approximate (stage-2) late-interaction scores of query q (n_q, dim) on the codes: (n_units,)."""
        return self.quantizer.score(q, batch.codes, batch.offsets, backend=backend)

    def score_many(
        self, queries: Sequence[ArrayLike], batch: CompressedBatch, *, backend: Backend = "auto"
    ) -> torch.Tensor:
        """``score`` for several queries: (n_queries, n_units) float32."""
        return self.quantizer.score_many(list(queries), batch.codes, batch.offsets, backend=backend)

    def rerank(
        self,
        q: ArrayLike,
        batch: CompressedBatch,
        units: Sequence[int] | np.ndarray | None = None,
        *,
        backend: Backend = "auto",
    ) -> torch.Tensor:
        """Exact (stage-3) MaxSim of query q (n_q, dim) on the rerank copy of ``units`` (default: all).

        Returns (len(units),) float32 in the order of ``units``. Needs ``keep != "none"``, or the
        float16 codec (whose codes are the vectors).
        """
        sub = batch if units is None else batch.select(units)
        query = torch.as_tensor(np.asarray(q, dtype=np.float32) if not isinstance(q, torch.Tensor) else q)
        query = query.float()  # (n_q, dim)
        offsets = torch.from_numpy(sub.offsets)  # (k + 1,)
        if sub.keep is not None:
            docs = torch.from_numpy(sub.keep)  # (n_rows, dim) float16 | int8
            scales = None if sub.keep_scales is None else torch.from_numpy(sub.keep_scales)  # (n_rows,)
            return maxsim(query, docs, offsets, scales=scales, backend=backend)  # (k,)
        if self.config.quantizer == "none":
            return maxsim(query, as_code_tensor(sub.codes), offsets, backend=backend)  # (k,)
        raise InvalidInputError("this index keeps no float copy (keep='none'): exact rerank is unavailable")

    # ---------------------------------------------------------------------------------- persist
    def save(self, directory: str | Path) -> None:
        """Write ``compression.json`` (config) and the fitted codec into ``directory``."""
        if not self.quantizer.is_fitted:
            raise InvalidInputError("Compressor is not fitted: nothing to save")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format": 1, "config": self.config.to_dict(), "bytes_per_patch": self.bytes_per_patch}
        (path / COMPRESSION_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
        self.quantizer.save(path)

    @classmethod
    def load(cls, directory: str | Path) -> Compressor:
        """Read a compressor written by ``save``."""
        path = Path(directory)
        try:
            meta = json.loads((path / COMPRESSION_JSON).read_text())
        except FileNotFoundError as exc:
            raise InvalidInputError(f"no {COMPRESSION_JSON} in {path}") from exc
        obj = cls(CompressionConfig.from_dict(meta["config"]))
        quantizer = Quantizer.load(path)
        if quantizer.kind != obj.quantizer.kind:
            raise InvalidInputError(
                f"{path}: config says quantizer {obj.quantizer.kind!r}, stored codec is {quantizer.kind!r}"
            )
        obj.quantizer = quantizer
        return obj
