"""Quantizers: a contract run against every codec, then each codec against its float reference."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress import (
    BEBRQuantizer,
    CompressionConfig,
    Float16Quantizer,
    KMeansQuantizer,
    ProductQuantizer,
    Quantizer,
    SignBinaryQuantizer,
    make_quantizer,
)
from patchseek.indexer.compress.quantize.pq import eigenvalue_allocation
from patchseek.kernels import maxsim
from tests.indexer.compress.compress_helpers import unit_rows

DIM = 32

CODECS: dict[str, Callable[[], Quantizer]] = {
    "float16": Float16Quantizer,
    "binary": SignBinaryQuantizer,
    "binary-hamming": lambda: SignBinaryQuantizer(symmetric=True),
    "binary-centered": lambda: SignBinaryQuantizer(center=True),
    "binary-centered-hamming": lambda: SignBinaryQuantizer(symmetric=True, center=True),
    "kmeans": lambda: KMeansQuantizer(k=16),
    "kmeans-u16": lambda: KMeansQuantizer(k=300),
    "kmeans-r2": lambda: KMeansQuantizer(k=16, residual_bits=2),
    "pq": lambda: ProductQuantizer(m=4, k=16),
    "pq-opq": lambda: ProductQuantizer(m=4, k=16, opq=True),
    "bebr": lambda: BEBRQuantizer(rounds=1, epochs=2),
    "bebr-sdc": lambda: BEBRQuantizer(rounds=1, epochs=2, scoring="sdc"),
    "bebr-u3-half": lambda: BEBRQuantizer(rounds=3, code_dim=16, epochs=2),
}


def sample(n: int = 600, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, dim)))


def anisotropic_sample(n: int = 2000, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Unit rows with a shared mean direction and a decaying spectrum in a random basis, like patches."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]  # (dim, dim)
    spectrum = (np.arange(dim) + 1.0) ** -1.0  # (dim,)
    g = (rng.standard_normal((n, dim)) * np.sqrt(spectrum / spectrum.sum())) @ basis.T  # (n, dim)
    return unit_rows(0.8 * unit_rows(rng.standard_normal((1, dim))) + g)


def strip_param(directory: Path, key: str) -> None:
    """Remove one parameter from a saved quantizer.json, as an index written before it existed."""
    meta = json.loads((directory / "quantizer.json").read_text())
    del meta["params"][key]
    (directory / "quantizer.json").write_text(json.dumps(meta))


def packed_docs(seed: int = 1) -> tuple[np.ndarray, torch.Tensor]:
    """Five documents of 7, 0 (empty), 1, 12 and 4 patches."""
    x = sample(24, seed=seed)
    return x, torch.tensor([0, 7, 7, 8, 20, 24])


@pytest.fixture(scope="module")
def fitted() -> dict[str, Quantizer]:
    return {name: make().fit(sample()) for name, make in CODECS.items()}


@pytest.mark.parametrize("name", list(CODECS))
class TestContract:
    def test_encode_shape_bytes_and_decode(self, fitted: dict[str, Quantizer], name: str) -> None:
        quant = fitted[name]
        x, _ = packed_docs()
        codes = quant.encode(x)
        assert codes.shape[0] == x.shape[0]
        assert codes[0].nbytes == quant.bytes_per_patch
        decoded = quant.decode(codes)
        assert decoded.shape == x.shape and decoded.dtype == np.float32
        # every codec reconstructs better than chance: cosine with the original is clearly positive
        cos = (decoded * x).sum(1) / np.linalg.norm(decoded, axis=1).clip(1e-9)
        assert float(cos.mean()) > 0.25  # a random vector would average ~0

    def test_scores_shape_empty_doc_and_score_many(self, fitted: dict[str, Quantizer], name: str) -> None:
        quant = fitted[name]
        x, offsets = packed_docs()
        codes = quant.encode(x)
        q = sample(5, seed=9)
        scores = quant.score(q, codes, offsets)
        assert scores.shape == (5,) and scores.dtype == torch.float32
        assert float(scores[1]) == 0.0
        many = quant.score_many([q, q[:2]], codes, offsets)
        torch.testing.assert_close(many[0], scores)
        torch.testing.assert_close(many[1], quant.score(q[:2], codes, offsets))

    def test_save_load_gives_identical_codes_and_scores(
        self, fitted: dict[str, Quantizer], name: str, tmp_path: Path
    ) -> None:
        quant = fitted[name]
        quant.save(tmp_path)
        again = Quantizer.load(tmp_path)
        assert type(again) is type(quant)
        x, offsets = packed_docs()
        codes = quant.encode(x)
        np.testing.assert_array_equal(again.encode(x), codes)
        q = sample(3, seed=5)
        assert torch.equal(again.score(q, codes, offsets), quant.score(q, codes, offsets))

    def test_rejects_unfitted_and_wrong_dim(self, fitted: dict[str, Quantizer], name: str) -> None:
        with pytest.raises(InvalidInputError, match="not fitted"):
            CODECS[name]().encode(sample(2))
        with pytest.raises(InvalidInputError, match="dim"):
            fitted[name].encode(sample(2, dim=DIM + 8))


class TestSignBinary:
    def test_exact_on_sign_vectors(self) -> None:
        rng = np.random.default_rng(0)
        docs = (np.where(rng.random((20, DIM)) > 0.5, 1.0, -1.0) / np.sqrt(DIM)).astype(np.float32)
        q_signs = (np.where(rng.random((4, DIM)) > 0.5, 1.0, -1.0) / np.sqrt(DIM)).astype(np.float32)
        offsets = torch.tensor([0, 5, 12, 20])
        exact = maxsim(torch.from_numpy(q_signs), torch.from_numpy(docs), offsets)
        for quant in (SignBinaryQuantizer(), SignBinaryQuantizer(symmetric=True)):
            quant.fit(docs)
            codes = quant.encode(docs)
            assert codes.shape == (20, DIM // 8) and codes.dtype == np.uint8
            torch.testing.assert_close(quant.score(q_signs, codes, offsets), exact)
            np.testing.assert_allclose(quant.decode(codes), docs, atol=1e-6)

    def test_asymmetric_score_uses_float_query(self) -> None:
        docs = np.full((1, 8), 1 / np.sqrt(8), dtype=np.float32)  # all signs +1
        quant = SignBinaryQuantizer().fit(docs)
        q = np.array([[0.9, 0.1, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
        # q · (+1,...,+1) / sqrt(8): keeps the query's magnitudes, unlike Hamming on sign(q)
        expected = torch.tensor([1.0 / np.sqrt(8)], dtype=torch.float32)
        torch.testing.assert_close(quant.score(q, quant.encode(docs), torch.tensor([0, 1])), expected)

    def test_rejects_dim_not_multiple_of_8(self) -> None:
        with pytest.raises(InvalidInputError):
            SignBinaryQuantizer().fit(sample(4, dim=12))

    def test_centered_score_equals_maxsim_on_decoded(self) -> None:
        quant = SignBinaryQuantizer(center=True).fit(anisotropic_sample())
        x, offsets = packed_docs()
        codes = quant.encode(x)
        q = torch.from_numpy(sample(6, seed=4))
        ref = maxsim(q, torch.from_numpy(quant.decode(codes)), offsets)
        torch.testing.assert_close(quant.score(q, codes, offsets), ref, atol=1e-5, rtol=1e-5)
        assert float(quant.score(q, codes, offsets)[1]) == 0.0  # empty doc: no mean term added

    def test_centering_uses_the_bits_that_the_mean_saturates(self) -> None:
        # every row has a large positive first coordinate: uncentered, bit 0 is always 1 and carries
        # nothing; centered, it splits the rows by which side of the mean they fall
        rng = np.random.default_rng(0)
        x = unit_rows(np.concatenate([np.full((400, 1), 5.0), rng.standard_normal((400, 7))], axis=1))
        x[:, 0] += 0.05 * rng.standard_normal(400).astype(np.float32)
        plain_q = SignBinaryQuantizer().fit(x)
        plain = np.unpackbits(plain_q.encode(x), axis=1)[:, 0]  # (400,)
        centered_q = SignBinaryQuantizer(center=True).fit(x)
        centered = np.unpackbits(centered_q.encode(x), axis=1)[:, 0]  # (400,)
        assert plain.min() == 1
        assert 0.2 < centered.mean() < 0.8
        err = np.square(centered_q.decode(centered_q.encode(x)) - x).sum(1).mean()
        err_plain = np.square(plain_q.decode(plain_q.encode(x)) - x).sum(1).mean()
        assert err < 0.5 * err_plain

    def test_centered_hamming_signs_the_centered_query(self) -> None:
        x = anisotropic_sample(500)
        quant = SignBinaryQuantizer(symmetric=True, center=True).fit(x)
        reference = SignBinaryQuantizer(symmetric=True).fit(x)
        docs, offsets = packed_docs()
        q = sample(4, seed=2)
        # Hamming between sign(q - mu) and sign(x - mu) is the uncentered Hamming of the shifted inputs
        expected = reference.score(q - quant.mean, reference.encode(docs - quant.mean), offsets)
        torch.testing.assert_close(quant.score(q, quant.encode(docs), offsets), expected)

    def test_index_without_center_key_loads_uncentered(self, tmp_path: Path) -> None:
        SignBinaryQuantizer().fit(sample()).save(tmp_path)
        strip_param(tmp_path, "center")
        loaded = Quantizer.load(tmp_path)
        assert isinstance(loaded, SignBinaryQuantizer) and not loaded.center


class TestKMeans:
    def test_vectors_on_centroids_are_coded_exactly(self) -> None:
        centers = unit_rows(np.random.default_rng(3).standard_normal((4, DIM)))
        x = np.repeat(centers, 10, axis=0)  # (40, dim)
        quant = KMeansQuantizer(k=4).fit(x)
        np.testing.assert_allclose(quant.decode(quant.encode(centers)), centers, atol=1e-5)

    @pytest.mark.parametrize("k,bits", [(16, 0), (300, 0), (16, 1), (16, 4), (300, 2)])
    def test_score_equals_maxsim_on_decoded(self, k: int, bits: int) -> None:
        quant = KMeansQuantizer(k=k, residual_bits=bits).fit(sample())
        x, offsets = packed_docs()
        codes = quant.encode(x)
        if not bits:
            assert codes.dtype == (np.uint8 if k <= 256 else np.uint16) and codes.ndim == 1
        q = torch.from_numpy(sample(6, seed=4))
        ref = maxsim(q, torch.from_numpy(quant.decode(codes)), offsets)
        torch.testing.assert_close(quant.score(q, codes, offsets), ref)

    def test_more_residual_bits_reconstruct_better(self) -> None:
        x = sample(2000)
        errors = []
        for bits in (0, 1, 2, 4):
            quant = KMeansQuantizer(k=16, residual_bits=bits).fit(x)
            errors.append(float(np.square(quant.decode(quant.encode(x)) - x).sum(1).mean()))
        assert errors == sorted(errors, reverse=True) and errors[-1] < 0.2 * errors[0]

    def test_rejects_bad_parameters(self) -> None:
        with pytest.raises(InvalidInputError):
            KMeansQuantizer(k=1)
        with pytest.raises(InvalidInputError):
            KMeansQuantizer(residual_bits=3)


class TestProductQuantizer:
    def test_score_equals_maxsim_on_decoded(self) -> None:
        quant = ProductQuantizer(m=8, k=32).fit(sample())
        x, offsets = packed_docs()
        codes = quant.encode(x)
        assert codes.shape == (24, 8) and codes.dtype == np.uint8
        q = torch.from_numpy(sample(6, seed=4))
        ref = maxsim(q, torch.from_numpy(quant.decode(codes)), offsets)
        torch.testing.assert_close(quant.score(q, codes, offsets), ref)

    def test_sub_vectors_on_centroids_are_exact(self) -> None:
        centers = unit_rows(np.random.default_rng(3).standard_normal((3, DIM)))
        quant = ProductQuantizer(m=4, k=3).fit(np.repeat(centers, 5, axis=0))
        np.testing.assert_allclose(quant.decode(quant.encode(centers)), centers, atol=1e-5)

    def test_rejects_m_not_dividing_dim(self) -> None:
        with pytest.raises(InvalidInputError):
            ProductQuantizer(m=5).fit(sample())

    @pytest.mark.parametrize("opq_iter", [0, 2])
    def test_opq_score_equals_maxsim_on_decoded(self, opq_iter: int) -> None:
        quant = ProductQuantizer(m=8, k=32, opq=True, opq_iter=opq_iter).fit(anisotropic_sample())
        rot = quant.rotation
        np.testing.assert_allclose(rot @ rot.T, np.eye(DIM), atol=1e-5)
        x, offsets = packed_docs()
        codes = quant.encode(x)
        q = torch.from_numpy(sample(6, seed=4))
        ref = maxsim(q, torch.from_numpy(quant.decode(codes)), offsets)
        torch.testing.assert_close(quant.score(q, codes, offsets), ref, atol=1e-5, rtol=1e-5)

    def test_opq_reconstructs_anisotropic_vectors_better(self) -> None:
        x = anisotropic_sample(3000)
        errors = [
            float(np.square(q.decode(q.encode(x)) - x).sum(1).mean())
            for q in (ProductQuantizer(m=8, k=16, opq=o).fit(x) for o in (False, True))
        ]
        assert errors[1] < 0.9 * errors[0]

    def test_eigenvalue_allocation_balances_subspace_variance(self) -> None:
        x = anisotropic_sample(3000)
        rot = eigenvalue_allocation(x, 4)  # (dim, dim)
        var = (x @ rot.T).var(axis=0).reshape(4, -1).sum(axis=1)  # (4,) variance per sub-space
        plain = x.var(axis=0)[np.argsort(-x.var(axis=0))].reshape(4, -1).sum(axis=1)  # sorted, unbalanced
        assert var.max() / var.min() < 1.5 < plain.max() / plain.min()

    def test_index_without_opq_key_loads_unrotated(self, tmp_path: Path) -> None:
        quant = ProductQuantizer(m=4, k=16).fit(sample())
        quant.save(tmp_path)
        strip_param(tmp_path, "opq")
        loaded = Quantizer.load(tmp_path)
        assert isinstance(loaded, ProductQuantizer) and not loaded.opq
        np.testing.assert_array_equal(loaded.encode(sample(5)), quant.encode(sample(5)))


class TestBEBR:
    @pytest.mark.parametrize("rounds,code_dim", [(0, 0), (1, 0), (1, 16), (3, 8)])
    def test_sdc_score_equals_maxsim_of_decoded_query_and_docs(self, rounds: int, code_dim: int) -> None:
        # decoder alpha·W.T b with orthonormal W: x_hat_q · x_hat_d = alpha² b_q · b_d, which the nibble
        # table must reproduce exactly (this pins the packing, the level values and the table)
        quant = BEBRQuantizer(rounds=rounds, code_dim=code_dim, epochs=1, scoring="sdc").fit(sample())
        x, offsets = packed_docs()
        codes = quant.encode(x)
        q = sample(6, seed=4)
        q_hat = torch.from_numpy(quant.decode(quant.encode(q)))
        ref = maxsim(q_hat, torch.from_numpy(quant.decode(codes)), offsets)
        torch.testing.assert_close(quant.score(q, codes, offsets), ref, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("rounds,code_dim", [(0, 0), (1, 0), (1, 16), (3, 8)])
    def test_asymmetric_score_equals_maxsim_of_float_query_and_decoded_docs(
        self, rounds: int, code_dim: int
    ) -> None:
        # ADC: the per-byte table must reproduce q · decode(codes) exactly (packing, levels, alpha, W)
        quant = BEBRQuantizer(rounds=rounds, code_dim=code_dim, epochs=1).fit(sample())
        x, offsets = packed_docs()
        codes = quant.encode(x)
        q = sample(6, seed=4)
        ref = maxsim(torch.from_numpy(q), torch.from_numpy(quant.decode(codes)), offsets)
        torch.testing.assert_close(quant.score(q, codes, offsets), ref, atol=1e-5, rtol=1e-5)
        assert quant.lut(torch.from_numpy(q)).shape == (6, quant.bytes_per_patch, 256)

    def test_scorings_differ_on_the_same_codes(self) -> None:
        x = sample()
        adc = BEBRQuantizer(rounds=0, epochs=1).fit(x)
        sdc = BEBRQuantizer(rounds=0, epochs=1, scoring="sdc").fit(x)
        docs, offsets = packed_docs()
        np.testing.assert_array_equal(adc.encode(docs), sdc.encode(docs))
        q = sample(4, seed=8)
        assert not torch.allclose(
            adc.score(q, adc.encode(docs), offsets), sdc.score(q, sdc.encode(docs), offsets)
        )

    def test_index_without_scoring_key_loads_as_sdc(self, tmp_path: Path) -> None:
        BEBRQuantizer(rounds=0, epochs=1).fit(sample()).save(tmp_path)
        strip_param(tmp_path, "scoring")
        loaded = Quantizer.load(tmp_path)
        assert isinstance(loaded, BEBRQuantizer) and loaded.scoring == "sdc"

    def test_seeded_fit_is_deterministic(self) -> None:
        x = sample(800)
        a = BEBRQuantizer(rounds=1, epochs=2, seed=3).fit(x)
        b = BEBRQuantizer(rounds=1, epochs=2, seed=3).fit(x)
        np.testing.assert_array_equal(a.encode(x), b.encode(x))

    def test_more_rounds_reconstruct_better(self) -> None:
        x = sample(1500)
        errors = [
            float(np.square(q.decode(q.encode(x)) - x).sum(1).mean())
            for q in (BEBRQuantizer(rounds=r, epochs=2).fit(x) for r in (0, 1, 3))
        ]
        assert errors[0] > errors[1] > errors[2]

    def test_table_is_symmetric_and_levels_are_signed(self) -> None:
        quant = BEBRQuantizer(rounds=1, epochs=1).fit(sample())
        table = quant.table()
        assert table.shape == (16, 16)
        torch.testing.assert_close(table, table.T)
        # nibble 0b1111 holds two dims at the top level (+1.5), 0b0000 two at the bottom (-1.5)
        alpha2 = float(quant.alphas[-1]) ** 2
        assert float(table[15, 15]) == pytest.approx(alpha2 * 2 * 1.5**2, rel=1e-5)
        assert float(table[0, 15]) == pytest.approx(-alpha2 * 2 * 1.5**2, rel=1e-5)

    def test_rejects_bad_shapes(self) -> None:
        with pytest.raises(InvalidInputError):
            BEBRQuantizer(rounds=2)
        with pytest.raises(InvalidInputError):
            BEBRQuantizer(code_dim=64).fit(sample())  # code_dim > dim
        with pytest.raises(InvalidInputError):
            BEBRQuantizer(rounds=0, code_dim=12).fit(sample())  # 12 bits is not whole bytes
        with pytest.raises(InvalidInputError):
            BEBRQuantizer(scoring="hamming")


def test_factory_builds_each_kind() -> None:
    kinds = {
        "none": Float16Quantizer,
        "binary": SignBinaryQuantizer,
        "kmeans": KMeansQuantizer,
        "pq": ProductQuantizer,
        "bebr": BEBRQuantizer,
    }
    for kind, cls in kinds.items():
        assert type(make_quantizer(CompressionConfig(quantizer=kind))) is cls  # type: ignore[arg-type]


def test_factory_passes_codec_options() -> None:
    binary = make_quantizer(CompressionConfig(quantizer="binary", binary_center=False))
    assert isinstance(binary, SignBinaryQuantizer) and not binary.center
    assert make_quantizer(CompressionConfig(quantizer="binary")).center  # type: ignore[attr-defined]
    pq = make_quantizer(CompressionConfig(quantizer="pq", pq_opq=False))
    assert isinstance(pq, ProductQuantizer) and not pq.opq
    assert make_quantizer(CompressionConfig(quantizer="pq")).opq  # type: ignore[attr-defined]
    bebr = make_quantizer(CompressionConfig(quantizer="bebr", bebr_scoring="sdc"))
    assert isinstance(bebr, BEBRQuantizer) and bebr.scoring == "sdc"


def test_load_rejects_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        Quantizer.load(tmp_path)
    SignBinaryQuantizer().fit(sample()).save(tmp_path)
    meta = (tmp_path / "quantizer.json").read_text().replace('"binary"', '"nope"')
    (tmp_path / "quantizer.json").write_text(meta)
    with pytest.raises(InvalidInputError, match="unknown quantizer kind"):
        Quantizer.load(tmp_path)
