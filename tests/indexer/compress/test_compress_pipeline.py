"""Compressor: prune → merge → quantize over a collection, rerank copy, persistence, public API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import patchseek.indexer.compress as compress
from patchseek.errors import InvalidInputError
from patchseek.indexer.compress import CompressedBatch, CompressionConfig, Compressor
from patchseek.kernels import maxsim
from tests.indexer.compress.compress_helpers import make_bag, random_bags, unit_rows


def exact_scores(q: torch.Tensor, bags: list) -> torch.Tensor:
    vecs = torch.cat([b.vectors for b in bags])  # (N, dim)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([b.n_patches for b in bags])]))
    return maxsim(q, vecs, offsets)


class TestCompressor:
    def test_default_is_float16_and_matches_exact(self) -> None:
        bags = random_bags(6)
        comp = Compressor().fit(bags)
        batch = comp.encode(bags)
        assert batch.codes.dtype == np.float16 and batch.n_units == 6
        assert (
            batch.offsets.tolist() == np.concatenate([[0], np.cumsum([b.n_patches for b in bags])]).tolist()
        )
        q = torch.from_numpy(unit_rows(np.random.default_rng(5).standard_normal((4, 32))))
        torch.testing.assert_close(comp.score(q, batch), exact_scores(q, bags), atol=2e-3, rtol=0)
        torch.testing.assert_close(
            comp.rerank(q, batch, [3, 1]), exact_scores(q, bags)[[3, 1]], atol=2e-3, rtol=0
        )

    def test_prune_and_merge_are_applied_before_codes(self) -> None:
        bags = random_bags(5, lo=30, hi=40)
        cfg = CompressionConfig(
            prune="topp",
            prune_ratio=0.5,
            prune_min=2,
            merge="hierarchical",
            pool_factor=3,
            quantizer="binary",
        )
        comp = Compressor(cfg).fit(bags)
        batch = comp.encode(bags)
        for u, bag in enumerate(bags):
            kept = int(np.ceil(0.5 * bag.n_patches))
            assert batch.offsets[u + 1] - batch.offsets[u] == max(kept // 3, 2)
        assert batch.positions.shape == (batch.n_patches, 2)
        assert comp.compress_bag(bags[0]).n_patches == batch.offsets[1]

    @pytest.mark.parametrize("keep", ["float16", "int8"])
    def test_rerank_copy_is_close_to_exact(self, keep: str) -> None:
        bags = random_bags(8)
        comp = Compressor(CompressionConfig(quantizer="kmeans", kmeans_k=8, keep=keep)).fit(bags)  # type: ignore[arg-type]
        batch = comp.encode(bags)
        assert batch.keep is not None and (batch.keep_scales is not None) == (keep == "int8")
        q = torch.from_numpy(unit_rows(np.random.default_rng(7).standard_normal((5, 32))))
        exact = exact_scores(q, bags)
        torch.testing.assert_close(comp.rerank(q, batch), exact, atol=0.05, rtol=0)
        # the k-means stage-2 score is coarse; the rerank must be much closer to exact than it
        assert (comp.rerank(q, batch) - exact).abs().max() < (comp.score(q, batch) - exact).abs().max()

    def test_rerank_without_copy_is_an_error(self) -> None:
        bags = random_bags(3)
        comp = Compressor(CompressionConfig(quantizer="binary")).fit(bags)
        with pytest.raises(InvalidInputError, match="exact rerank"):
            comp.rerank(torch.ones(2, 32), comp.encode(bags))

    @pytest.mark.parametrize("quantizer", ["binary", "kmeans", "pq", "bebr"])
    def test_save_load_gives_identical_scores(self, quantizer: str, tmp_path: Path) -> None:
        bags = random_bags(6)
        cfg = CompressionConfig(
            quantizer=quantizer, kmeans_k=16, residual_bits=2, pq_m=4, prune="adaptive", prune_min=3
        )  # type: ignore[arg-type]
        comp = Compressor(cfg).fit(bags)
        comp.save(tmp_path)
        assert json.loads((tmp_path / "compression.json").read_text())["config"] == cfg.to_dict()
        again = Compressor.load(tmp_path)
        assert again.config == cfg
        batch, batch2 = comp.encode(bags), again.encode(bags)
        np.testing.assert_array_equal(batch.codes, batch2.codes)
        q = torch.from_numpy(unit_rows(np.random.default_rng(2).standard_normal((3, 32))))
        assert torch.equal(comp.score(q, batch), again.score(q, batch2))

    def test_load_rejects_codec_that_disagrees_with_config(self, tmp_path: Path) -> None:
        Compressor(CompressionConfig(quantizer="binary")).fit(random_bags(2)).save(tmp_path)
        meta = json.loads((tmp_path / "compression.json").read_text())
        meta["config"]["quantizer"] = "pq"
        (tmp_path / "compression.json").write_text(json.dumps(meta))
        with pytest.raises(InvalidInputError, match="stored codec"):
            Compressor.load(tmp_path)

    def test_empty_unit_scores_zero_and_empty_collection_cannot_fit(self) -> None:
        bags = random_bags(3)
        empty = make_bag(np.zeros((0, 32), np.float32))
        comp = Compressor(CompressionConfig(quantizer="pq", pq_m=4)).fit(bags)
        batch = comp.encode([bags[0], empty, bags[1]])
        assert float(comp.score(torch.ones(2, 32) / 32**0.5, batch)[1]) == 0.0
        with pytest.raises(InvalidInputError):
            Compressor().fit([empty])
        with pytest.raises(InvalidInputError, match="not fitted"):
            Compressor().encode(bags)

    def test_compress_frames_groups_consecutive_frames(self) -> None:
        frames = random_bags(7, lo=20, hi=21)
        cfg = CompressionConfig(video_segment_frames=3, prune="topp", prune_ratio=0.5, prune_min=2)
        segments = Compressor(cfg).compress_frames(frames)
        assert len(segments) == 3  # frames 0-2, 3-5, 6
        assert [s.n_patches for s in segments] == [10, 10, 10]  # 3·10 kept patches -> 30 // 3 medoids
        comp = Compressor(cfg).fit(segments, compressed=True)
        assert comp.encode(segments, compressed=True).n_units == 3


class TestCompressedBatch:
    def test_select_reorders_units(self) -> None:
        codes = np.arange(6, dtype=np.uint8)
        batch = CompressedBatch(
            codes=codes, offsets=np.array([0, 2, 2, 6]), positions=np.zeros((6, 2), np.int64)
        )
        sub = batch.select([2, 0, 1])
        assert sub.codes.tolist() == [2, 3, 4, 5, 0, 1]
        assert sub.offsets.tolist() == [0, 4, 6, 6]

    def test_rejects_inconsistent_arrays(self) -> None:
        with pytest.raises(InvalidInputError):
            CompressedBatch(codes=np.zeros(3), offsets=np.array([0, 2]), positions=np.zeros((3, 2), np.int64))
        with pytest.raises(InvalidInputError):
            CompressedBatch(
                codes=np.zeros(3),
                offsets=np.array([0, 3]),
                positions=np.zeros((3, 2), np.int64),
                keep=np.zeros((3, 4), np.int8),
            )


def test_public_api_is_pinned() -> None:
    assert sorted(compress.__all__) == sorted(
        [
            "AdaptivePruner",
            "BEBRQuantizer",
            "CompressedBatch",
            "CompressionConfig",
            "Compressor",
            "Float16Quantizer",
            "HierarchicalMerger",
            "KMeansQuantizer",
            "MergeResult",
            "PatchMerger",
            "PatchPruner",
            "ProductQuantizer",
            "PruneResult",
            "Quantizer",
            "SignBinaryQuantizer",
            "TopPPruner",
            "make_quantizer",
            "merge_video_segment",
        ]
    )
    for name in compress.__all__:
        assert getattr(compress, name) is not None
