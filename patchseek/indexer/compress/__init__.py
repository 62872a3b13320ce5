"""Compression of patch bags: prune (salience) → merge (clustering) → quantize (codes).

The indexer and search use ``Compressor`` with a ``CompressionConfig``; the steps are public for
benchmarks and tests.
"""

from __future__ import annotations

from patchseek.indexer.compress.base import MergeResult, PatchMerger, PatchPruner, PruneResult, Quantizer
from patchseek.indexer.compress.config import CompressionConfig
from patchseek.indexer.compress.merge import HierarchicalMerger, merge_video_segment
from patchseek.indexer.compress.pipeline import CompressedBatch, Compressor
from patchseek.indexer.compress.prune import AdaptivePruner, TopPPruner
from patchseek.indexer.compress.quantize import (
    BEBRQuantizer,
    Float16Quantizer,
    KMeansQuantizer,
    ProductQuantizer,
    SignBinaryQuantizer,
    make_quantizer,
)

__all__ = [
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
