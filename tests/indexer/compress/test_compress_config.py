"""CompressionConfig: JSON round trip and validation."""

from __future__ import annotations

import json

import pytest

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress import CompressionConfig


class TestRoundTrip:
    def test_defaults_round_trip_through_json(self) -> None:
        cfg = CompressionConfig()
        assert CompressionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

    def test_every_field_round_trips(self) -> None:
        cfg = CompressionConfig(
            prune="adaptive",
            prune_ratio=0.3,
            prune_k=0.5,
            prune_min=4,
            merge="hierarchical",
            pool_factor=3,
            quantizer="kmeans",
            kmeans_k=1024,
            residual_bits=2,
            pq_m=8,
            pq_opq=False,
            binary_center=False,
            bebr_rounds=3,
            bebr_dim=64,
            bebr_scoring="sdc",
            keep="int8",
            video_segment_frames=4,
            seed=7,
        )
        again = CompressionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        assert again.to_dict() == cfg.to_dict()

    def test_missing_keys_take_defaults(self) -> None:
        assert CompressionConfig.from_dict({"quantizer": "pq"}) == CompressionConfig(quantizer="pq")

    def test_integer_ratio_is_stored_as_float(self) -> None:
        assert isinstance(CompressionConfig(prune_ratio=1).prune_ratio, float)

    def test_describe_names_each_step(self) -> None:
        cfg = CompressionConfig(
            prune="topp",
            merge="hierarchical",
            pool_factor=2,
            quantizer="kmeans",
            residual_bits=2,
            keep="float16",
        )
        assert cfg.describe() == "topp0.5+merge/2+kmeans256r2+keep:float16"

    @pytest.mark.parametrize(
        "changes,label",
        [
            ({"quantizer": "pq"}, "opq16x256"),
            ({"quantizer": "pq", "pq_opq": False}, "pq16x256"),
            ({"quantizer": "binary"}, "binary(centered)"),
            ({"quantizer": "binary", "binary_center": False}, "binary"),
            ({"quantizer": "bebr", "bebr_scoring": "sdc"}, "bebr(u=1,d=dim,sdc)"),
            ({"quantizer": "bebr"}, "bebr(u=1,d=dim)"),
        ],
    )
    def test_describe_names_codec_options(self, changes: dict[str, object], label: str) -> None:
        assert CompressionConfig.from_dict(changes).describe() == label


class TestValidation:
    def test_unknown_key_is_rejected(self) -> None:
        with pytest.raises(InvalidInputError, match="unknown compression config keys"):
            CompressionConfig.from_dict({"quantiser": "pq"})

    def test_non_dict_is_rejected(self) -> None:
        with pytest.raises(InvalidInputError):
            CompressionConfig.from_dict(["pq"])  # type: ignore[arg-type]

    def test_integral_json_numbers_are_integers(self) -> None:
        # JSON Schema (and so the OpenAPI document) calls 2.0 an integer: the config takes it as 2.
        config = CompressionConfig.from_dict({"pool_factor": 2.0, "kmeans_k": 64.0})
        assert (config.pool_factor, config.kmeans_k) == (2, 64) and isinstance(config.pool_factor, int)

    @pytest.mark.parametrize(
        "bad",
        [
            {"prune": "random"},
            {"merge": "kmeans"},
            {"quantizer": "opq"},
            {"keep": "float32"},
            {"prune_ratio": 0.0},
            {"prune_ratio": 1.5},
            {"prune_ratio": "half"},
            {"prune_ratio": float("nan")},
            {"prune_k": float("inf")},
            {"prune_min": 0},
            {"pool_factor": 0},
            {"pool_factor": 2.5},
            {"pool_factor": True},
            {"kmeans_k": 1},
            {"kmeans_k": 65537},
            {"residual_bits": 3},
            {"pq_m": 0},
            {"bebr_rounds": 2},
            {"bebr_dim": -1},
            {"bebr_scoring": "symmetric"},
            {"pq_opq": 1},
            {"pq_opq": "yes"},
            {"binary_center": None},
            {"video_segment_frames": 0},
            {"seed": -1},
        ],
    )
    def test_bad_value_is_rejected(self, bad: dict[str, object]) -> None:
        with pytest.raises(InvalidInputError):
            CompressionConfig.from_dict(bad)
