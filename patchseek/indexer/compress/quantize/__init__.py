"""Patch-vector codecs: float16, sign binary, k-means (+ residuals), product quantization, BEBR."""

from __future__ import annotations

from patchseek.indexer.compress.quantize.bebr import BEBRQuantizer
from patchseek.indexer.compress.quantize.factory import make_quantizer
from patchseek.indexer.compress.quantize.kmeans import KMeansQuantizer
from patchseek.indexer.compress.quantize.pq import ProductQuantizer
from patchseek.indexer.compress.quantize.simple import Float16Quantizer, SignBinaryQuantizer

__all__ = [
    "BEBRQuantizer",
    "Float16Quantizer",
    "KMeansQuantizer",
    "ProductQuantizer",
    "SignBinaryQuantizer",
    "make_quantizer",
]
