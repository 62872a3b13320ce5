"""``make_quantizer``: the codec a ``CompressionConfig`` asks for."""

from __future__ import annotations

from patchseek.indexer.compress.base import Quantizer
from patchseek.indexer.compress.config import CompressionConfig
from patchseek.indexer.compress.quantize.bebr import BEBRQuantizer
from patchseek.indexer.compress.quantize.kmeans import KMeansQuantizer
from patchseek.indexer.compress.quantize.pq import ProductQuantizer
from patchseek.indexer.compress.quantize.simple import Float16Quantizer, SignBinaryQuantizer


def make_quantizer(config: CompressionConfig) -> Quantizer:
    """An unfitted quantizer for ``config.quantizer`` with the config's parameters and seed.

    Examples
    --------
    >>> type(make_quantizer(CompressionConfig(quantizer="pq", pq_m=8))).__name__
    'ProductQuantizer'
    """
    kind = config.quantizer
    if kind == "binary":
        return SignBinaryQuantizer(center=config.binary_center)
    if kind == "kmeans":
        return KMeansQuantizer(config.kmeans_k, config.residual_bits, seed=config.seed)
    if kind == "pq":
        return ProductQuantizer(config.pq_m, opq=config.pq_opq, seed=config.seed)
    if kind == "bebr":
        return BEBRQuantizer(
            config.bebr_rounds, config.bebr_dim, scoring=config.bebr_scoring, seed=config.seed
        )
    return Float16Quantizer()
