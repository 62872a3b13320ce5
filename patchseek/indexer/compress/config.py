"""``CompressionConfig``: every knob of the prune → merge → quantize pipeline, recorded per index version.

The config is frozen and JSON-serialisable: ``CompressionConfig.from_dict(cfg.to_dict()) == cfg``.
``from_dict`` rejects unknown keys and invalid values with ``InvalidInputError`` so that a typo in a
settings file or an API request fails loudly instead of silently building a different index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from patchseek.errors import InvalidInputError

PruneKind = Literal["none", "topp", "adaptive"]
MergeKind = Literal["none", "hierarchical"]
QuantizerKind = Literal["none", "binary", "kmeans", "pq", "bebr"]
KeepKind = Literal["none", "float16", "int8"]
BEBRScoring = Literal["asymmetric", "sdc"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "prune": get_args(PruneKind),
    "merge": get_args(MergeKind),
    "quantizer": get_args(QuantizerKind),
    "keep": get_args(KeepKind),
    "bebr_scoring": get_args(BEBRScoring),
}
_FLAGS = ("binary_center", "pq_opq")


@dataclass(frozen=True)
class CompressionConfig:
    """How a unit's patch bag is compressed. Every step is optional; the defaults compress nothing.

    Attributes
    ----------
    prune : {"none", "topp", "adaptive"}
        ``"topp"`` keeps the ``prune_ratio`` share of patches with the highest salience (HPC-ColPali);
        ``"adaptive"`` keeps the patches whose salience is ≥ mean + ``prune_k`` · std of the unit's
        salience (DocPruner).
    prune_ratio : float
        Share of patches kept by ``"topp"``, in (0, 1].
    prune_k : float
        The ``k`` of the adaptive threshold ``mean + k·std``. The default 0.0 keeps the patches at or
        above the unit's mean salience; raise it to prune harder.
    prune_min : int
        Floor on the number of vectors per unit after pruning and after merging (≥ 1).
    merge : {"none", "hierarchical"}
        Ward clustering of a unit's patches into ``n // pool_factor`` L2-normalised means.
    pool_factor : int
        Merge factor (≥ 1; 1 disables merging even when ``merge="hierarchical"``).
    quantizer : {"none", "binary", "kmeans", "pq", "bebr"}
        The codec of the stored patch vectors (``"none"`` stores float16).
    binary_center : bool
        Sign binary: subtract the collection mean (fitted on the sample) before taking signs, and
        decode each sign with its dimension's mean absolute deviation. Patch embeddings share a mean
        direction, so uncentered signs waste bits on dimensions that are nearly constant.
    kmeans_k : int
        Number of k-means centroids, 2..65536 (≤ 256 → 1-byte codes, else 2-byte codes).
    residual_bits : {0, 1, 2, 4}
        PLAID-style per-dimension residual bits on top of k-means codes (0 = no residual).
    pq_m : int
        Number of product-quantization sub-spaces (256 centroids each); must divide ``dim``.
    pq_opq : bool
        Learn an OPQ rotation (eigenvalue allocation + Procrustes rounds) before splitting into
        sub-spaces; queries are rotated by the same matrix.
    bebr_rounds : {0, 1, 3}
        Recurrent binarization rounds ``u``; ``u + 1`` bits per code dimension.
    bebr_dim : int
        BEBR code dimension (0 = the embedding dimension). Lower it to compare at equal bits, e.g.
        ``bebr_dim=64, bebr_rounds=1`` is 128 bits per patch like sign binary on 128-d vectors.
    bebr_scoring : {"asymmetric", "sdc"}
        ``"asymmetric"``: float query × decoded codes through a per-query byte table (ADC);
        ``"sdc"``: query codes × document codes through the 16 × 16 nibble table (the paper's form).
    keep : {"none", "float16", "int8"}
        A copy of the kept (pruned/merged) vectors for the exact stage-3 rerank.
    video_segment_frames : int
        Consecutive video frames merged (k-medoids) into one segment unit; 1 = every frame is a unit.
    seed : int
        Seed of every randomised step (sampling, k-means, BEBR training, k-medoids).
    """

    prune: PruneKind = "none"
    prune_ratio: float = 0.5
    prune_k: float = 0.0
    prune_min: int = 8
    merge: MergeKind = "none"
    pool_factor: int = 1
    quantizer: QuantizerKind = "none"
    binary_center: bool = True
    kmeans_k: int = 256
    residual_bits: int = 0
    pq_m: int = 16
    pq_opq: bool = True
    bebr_rounds: int = 1
    bebr_dim: int = 0
    bebr_scoring: BEBRScoring = "asymmetric"
    keep: KeepKind = "none"
    video_segment_frames: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise InvalidInputError(f"compression {name}={value!r}: expected one of {list(choices)}")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"compression {name}={getattr(self, name)!r}: expected true or false")
        _check_number("prune_ratio", self.prune_ratio)
        if not 0.0 < self.prune_ratio <= 1.0:
            raise InvalidInputError(f"compression prune_ratio={self.prune_ratio}: expected 0 < ratio <= 1")
        _check_number("prune_k", self.prune_k)
        _check_int("prune_min", self.prune_min, lo=1)
        _check_int("pool_factor", self.pool_factor, lo=1)
        _check_int("kmeans_k", self.kmeans_k, lo=2, hi=65536)
        _check_int("residual_bits", self.residual_bits, lo=0)
        if self.residual_bits not in (0, 1, 2, 4):
            raise InvalidInputError(f"compression residual_bits={self.residual_bits}: expected 0, 1, 2 or 4")
        _check_int("pq_m", self.pq_m, lo=1)
        _check_int("bebr_rounds", self.bebr_rounds, lo=0)
        if self.bebr_rounds not in (0, 1, 3):
            raise InvalidInputError(
                f"compression bebr_rounds={self.bebr_rounds}: expected 0, 1 or 3 (u + 1 bits per dim must "
                "divide a 4-bit nibble)"
            )
        _check_int("bebr_dim", self.bebr_dim, lo=0)
        _check_int("video_segment_frames", self.video_segment_frames, lo=1)
        _check_int("seed", self.seed, lo=0)
        # JSON has one number type: store floats as floats so that to_dict() round-trips exactly.
        object.__setattr__(self, "prune_ratio", float(self.prune_ratio))
        object.__setattr__(self, "prune_k", float(self.prune_k))

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict (every field, defaults included)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Build a config from a dict; missing keys take their defaults.

        Raises
        ------
        InvalidInputError
            On a key that is not a field, or a value of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise InvalidInputError(f"compression config must be an object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown compression config keys {unknown}; known keys: {sorted(known)}")
        # JSON has one number type: 4.0 is the integer 4 (JSON Schema agrees), so take it as one.
        data = {
            k: int(v)
            if known[k].type in ("int", int) and isinstance(v, float) and v.is_integer() and abs(v) < 2**53
            else v
            for k, v in data.items()
        }
        return cls(**data)

    def describe(self) -> str:
        """A short human-readable label, e.g. ``"topp0.5+kmeans256r2+keep:float16"``."""
        parts: list[str] = []
        if self.prune == "topp":
            parts.append(f"topp{self.prune_ratio:g}")
        elif self.prune == "adaptive":
            parts.append(f"adaptive(k={self.prune_k:g})")
        if self.merge == "hierarchical" and self.pool_factor > 1:
            parts.append(f"merge/{self.pool_factor}")
        if self.quantizer == "kmeans":
            parts.append(f"kmeans{self.kmeans_k}" + (f"r{self.residual_bits}" if self.residual_bits else ""))
        elif self.quantizer == "pq":
            parts.append(("opq" if self.pq_opq else "pq") + f"{self.pq_m}x256")
        elif self.quantizer == "bebr":
            sdc = ",sdc" if self.bebr_scoring == "sdc" else ""
            parts.append(f"bebr(u={self.bebr_rounds},d={self.bebr_dim or 'dim'}{sdc})")
        elif self.quantizer == "binary":
            parts.append("binary(centered)" if self.binary_center else "binary")
        else:
            parts.append("float16" if self.quantizer == "none" else self.quantizer)
        if self.keep != "none":
            parts.append(f"keep:{self.keep}")
        if self.video_segment_frames > 1:
            parts.append(f"video{self.video_segment_frames}f")
        return "+".join(parts)


def _check_int(name: str, value: object, *, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"compression {name}={value!r}: expected an integer")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo} <= {name}" + (f" <= {hi}" if hi is not None else "")
        raise InvalidInputError(f"compression {name}={value}: expected {bound}")


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"compression {name}={value!r}: expected a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidInputError(f"compression {name}={value!r}: expected a finite number")
