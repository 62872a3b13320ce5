"""ABCs of the compression steps: ``PatchPruner``, ``PatchMerger``, ``Quantizer``.

Each public method validates its input, then calls a private ``_impl``; pruners and mergers return
frozen dataclasses that carry both the new ``PatchBag`` and the map back to the input patches.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from patchseek.errors import InvalidInputError
from patchseek.types import PatchBag

ArrayLike = np.ndarray | torch.Tensor
Backend = Literal["auto", "torch", "triton"]  # forwarded to patchseek.kernels

QUANTIZER_JSON = "quantizer.json"
QUANTIZER_NPZ = "quantizer.npz"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PruneResult:
    """What a pruner kept.

    indices (k,) int64, ascending positions of the kept patches in the input bag
    bag     the input bag restricted to those patches (same order)
    """

    indices: torch.Tensor
    bag: PatchBag


@dataclass(frozen=True)
class MergeResult:
    """What a merger built.

    bag     the merged bag, ``n_out`` vectors
    labels  (n,) int64, the output row each input patch was merged into
    """

    bag: PatchBag
    labels: torch.Tensor


def check_bag(bag: PatchBag) -> None:
    """Raise ``InvalidInputError`` unless ``bag`` holds finite float vectors and salience."""
    if not isinstance(bag, PatchBag):
        raise InvalidInputError(f"expected a PatchBag, got {type(bag).__name__}")
    if not bag.vectors.is_floating_point():
        raise InvalidInputError(f"patch vectors must be floating point, got {bag.vectors.dtype}")
    if bag.n_patches and not bool(torch.isfinite(bag.vectors).all()):
        raise InvalidInputError("patch vectors contain NaN or infinity")
    if bag.n_patches and not bool(torch.isfinite(bag.salience.float()).all()):
        raise InvalidInputError("patch salience contains NaN or infinity")


def subset_bag(bag: PatchBag, indices: torch.Tensor) -> PatchBag:
    """The bag restricted to ``indices`` (k,) int64, in that order."""
    return PatchBag(
        vectors=bag.vectors[indices],  # (k, dim)
        salience=bag.salience[indices],  # (k,)
        positions=bag.positions[indices],  # (k, 2)
        grid=bag.grid,
        text=bag.text,
    )


class PatchPruner(ABC):
    """Drops the least salient patches of a unit, never keeping fewer than ``min_keep``.

    Parameters
    ----------
    min_keep : int
        Floor on the number of patches kept per unit (a unit with fewer patches keeps them all).
    """

    def __init__(self, min_keep: int = 8) -> None:
        if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
            raise InvalidInputError(f"min_keep must be an integer >= 1, got {min_keep!r}")
        self.min_keep = min_keep

    def prune(self, bag: PatchBag) -> PruneResult:
        """Prune one unit's bag.

        Parameters
        ----------
        bag : PatchBag
            ``n`` patches with salience.

        Returns
        -------
        PruneResult
            Kept indices (ascending) and the pruned bag.
        """
        check_bag(bag)
        n = bag.n_patches
        if n <= self.min_keep:
            idx = torch.arange(n, dtype=torch.int64)  # (n,)
            return PruneResult(indices=idx, bag=bag)
        salience = bag.salience.detach().to(torch.float64).cpu()  # (n,)
        keep = self._impl(salience)  # (k,) int64
        if keep.numel() < self.min_keep:
            keep = top_k_indices(salience, self.min_keep)
        idx = torch.sort(keep).values  # (k,)
        return PruneResult(indices=idx, bag=subset_bag(bag, idx))

    @abstractmethod
    def _impl(self, salience: torch.Tensor) -> torch.Tensor:
        """Indices (k,) int64 of the patches to keep, given salience (n,) float64 with n > min_keep."""


def top_k_indices(salience: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,) of the ``k`` highest values of salience (n,); ties go to the lower index."""
    order = np.argsort(-salience.numpy(), kind="stable")[:k]  # (k,)
    return torch.from_numpy(order.astype(np.int64))


class PatchMerger(ABC):
    """Merges a unit's patches into fewer vectors."""

    def merge(self, bag: PatchBag) -> MergeResult:
        """Merge one unit's bag.

        Parameters
        ----------
        bag : PatchBag
            ``n`` patches.

        Returns
        -------
        MergeResult
            The merged bag (L2-normalised rows) and each input patch's output row.
        """
        check_bag(bag)
        return self._impl(bag)

    @abstractmethod
    def _impl(self, bag: PatchBag) -> MergeResult:
        """Merge a validated bag."""


def as_numpy_f32(x: ArrayLike, name: str = "x") -> np.ndarray:
    """``x`` as a C-contiguous float32 numpy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-D (n, dim), got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinity")
    return arr


def as_offsets(offsets: ArrayLike, n_rows: int) -> torch.Tensor:
    """Validate ``offsets`` (n_docs + 1,) int64: starts at 0, non-decreasing, ends at ``n_rows``."""
    off = torch.as_tensor(np.asarray(offsets) if not isinstance(offsets, torch.Tensor) else offsets)
    off = off.to(torch.int64)
    if off.ndim != 1 or off.numel() < 1:
        raise InvalidInputError(f"offsets must be 1-D (n_docs + 1,), got shape {tuple(off.shape)}")
    if int(off[0]) != 0 or int(off[-1]) != n_rows or bool((off[1:] < off[:-1]).any()):
        raise InvalidInputError(
            f"offsets must start at 0, not decrease and end at the number of patches ({n_rows})"
        )
    return off


def as_code_tensor(codes: ArrayLike) -> torch.Tensor:
    """Codes as a torch tensor; uint16 codes are viewed as int16, which the kernels read as unsigned."""
    if isinstance(codes, torch.Tensor):
        return codes
    arr = np.ascontiguousarray(codes)
    if arr.dtype == np.uint16:
        arr = arr.view(np.int16)
    return torch.from_numpy(arr)


class Quantizer(ABC):
    """A patch-vector codec with fitted state.

    Life cycle: ``fit(sample)`` once per index version, then ``encode`` the collection's vectors and
    ``score`` queries against the codes. ``save(dir)`` / ``Quantizer.load(dir)`` persist the fitted
    state as ``quantizer.json`` (parameters) + ``quantizer.npz`` (arrays); no pickle.

    Scores are late-interaction sums over query tokens of the best pair similarity, where the pair
    similarity approximates the cosine ``q · x`` (some codecs return it up to a positive constant,
    which does not change rankings).
    """

    kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[Quantizer]]] = {}

    def __init__(self) -> None:
        self.dim: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Quantizer._registry[cls.kind] = cls

    # ----------------------------------------------------------------------------------- public API
    @property
    def is_fitted(self) -> bool:
        return self.dim is not None

    @property
    def fitted_dim(self) -> int:
        """The fitted embedding dimension (raises ``InvalidInputError`` before ``fit``)."""
        self._require_fitted()
        return int(self.dim)  # type: ignore[arg-type]

    def fit(self, sample: ArrayLike) -> Quantizer:
        """Fit the codec on a sample of the collection's vectors.

        Parameters
        ----------
        sample : array (n, dim) float32
            L2-normalised patch vectors, ``n >= 1``.

        Returns
        -------
        Quantizer
            ``self``, fitted.
        """
        x = as_numpy_f32(sample, "sample")  # (n, dim)
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise InvalidInputError(f"cannot fit a quantizer on an empty sample {x.shape}")
        self._check_dim(x.shape[1])
        self._fit_impl(x)
        self.dim = int(x.shape[1])
        return self

    def encode(self, x: ArrayLike) -> np.ndarray:
        """Encode vectors.

        Parameters
        ----------
        x : array (n, dim) float32

        Returns
        -------
        np.ndarray
            Codes, ``n`` rows; dtype and trailing shape depend on the codec (see the class).
        """
        arr = self._check_input(x)  # (n, dim)
        return self._encode_impl(arr)

    def decode(self, codes: ArrayLike) -> np.ndarray:
        """Reconstruct approximate vectors (n, dim) float32 from codes (n, ...)."""
        self._require_fitted()
        arr = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        return self._decode_impl(arr)

    def prepare_query(self, q: ArrayLike) -> Any:
        """What ``score`` needs from a query (n_q, dim): a LUT, query codes, or the float query."""
        arr = self._check_input(q, name="query")  # (n_q, dim)
        return self._prepare_impl(torch.from_numpy(arr))

    def score(
        self, q: ArrayLike, codes: ArrayLike, offsets: ArrayLike, *, backend: Backend = "auto"
    ) -> torch.Tensor:
        """Approximate late-interaction scores of one query against packed documents.

        Parameters
        ----------
        q : array (n_q, dim) float
            Query token vectors.
        codes : array (N, ...)
            Codes of all documents' patches, packed; from ``encode``.
        offsets : array (n_docs + 1,) int64
            Document ``d`` owns code rows ``offsets[d]:offsets[d + 1]``.
        backend : str
            Kernel backend, forwarded to ``patchseek.kernels``.

        Returns
        -------
        torch.Tensor
            (n_docs,) float32; an empty document scores 0.
        """
        n_rows = int(codes.shape[0])
        off = as_offsets(offsets, n_rows)  # (n_docs + 1,)
        prepared = self.prepare_query(q)
        return self._score_impl(prepared, as_code_tensor(codes), off, backend)

    def score_many(
        self, queries: list[ArrayLike], codes: ArrayLike, offsets: ArrayLike, *, backend: Backend = "auto"
    ) -> torch.Tensor:
        """``score`` for several queries at once: (n_queries, n_docs) float32.

        Codecs whose scoring decodes the documents first decode them once here.
        """
        off = as_offsets(offsets, int(codes.shape[0]))  # (n_docs + 1,)
        code_t = as_code_tensor(codes)
        rows = [self._score_impl(self.prepare_query(q), code_t, off, backend) for q in queries]
        return torch.stack(rows) if rows else torch.zeros(0, off.numel() - 1)  # (n_queries, n_docs)

    @property
    @abstractmethod
    def bytes_per_patch(self) -> int:
        """Storage of one encoded patch, in bytes."""

    def save(self, directory: str | Path) -> None:
        """Write ``quantizer.json`` and ``quantizer.npz`` into ``directory`` (created if missing)."""
        self._require_fitted()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        params, arrays = self._state()
        meta = {"format": FORMAT_VERSION, "kind": self.kind, "dim": self.dim, "params": params}
        (path / QUANTIZER_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
        np.savez(path / QUANTIZER_NPZ, **arrays)  # type: ignore[arg-type]  # numpy stubs mistype **arrays

    @staticmethod
    def load(directory: str | Path) -> Quantizer:
        """Read a quantizer written by ``save``; the class comes from the recorded ``kind``."""
        path = Path(directory)
        try:
            meta = json.loads((path / QUANTIZER_JSON).read_text())
        except FileNotFoundError as exc:
            raise InvalidInputError(f"no {QUANTIZER_JSON} in {path}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise InvalidInputError(f"unsupported quantizer format {meta.get('format')!r} in {path}")
        cls = Quantizer._registry.get(meta.get("kind", ""))
        if cls is None:
            raise InvalidInputError(f"unknown quantizer kind {meta.get('kind')!r} in {path}")
        with np.load(path / QUANTIZER_NPZ, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        obj = cls._from_state(meta["params"], arrays)
        obj.dim = int(meta["dim"])
        return obj

    # --------------------------------------------------------------------------------- helpers
    def _require_fitted(self) -> None:
        if self.dim is None:
            raise InvalidInputError(f"{type(self).__name__} is not fitted: call fit(sample) first")

    def _check_input(self, x: ArrayLike, name: str = "x") -> np.ndarray:
        self._require_fitted()
        arr = as_numpy_f32(x, name)  # (n, dim)
        if arr.shape[1] != self.dim:
            raise InvalidInputError(f"{name} has dim {arr.shape[1]}, the quantizer was fitted on {self.dim}")
        return arr

    def _check_dim(self, dim: int) -> None:  # noqa: B027 - optional hook
        """Raise ``InvalidInputError`` when the codec cannot handle ``dim``."""

    # ---------------------------------------------------------------------------- implementation
    @abstractmethod
    def _fit_impl(self, x: np.ndarray) -> None:
        """Fit on x (n, dim) float32."""

    @abstractmethod
    def _encode_impl(self, x: np.ndarray) -> np.ndarray:
        """Encode x (n, dim) float32."""

    @abstractmethod
    def _decode_impl(self, codes: np.ndarray) -> np.ndarray:
        """Decode codes (n, ...) to (n, dim) float32."""

    @abstractmethod
    def _prepare_impl(self, q: torch.Tensor) -> Any:
        """Prepare a validated query q (n_q, dim) float32."""

    @abstractmethod
    def _score_impl(
        self, prepared: Any, codes: torch.Tensor, offsets: torch.Tensor, backend: Backend
    ) -> torch.Tensor:
        """Scores (n_docs,) float32 of a prepared query against validated codes."""

    @abstractmethod
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON parameters, numpy arrays) that ``_from_state`` rebuilds the fitted codec from."""

    @classmethod
    @abstractmethod
    def _from_state(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Quantizer:
        """Rebuild a fitted codec from ``_state``'s output (``dim`` is set by the caller)."""
