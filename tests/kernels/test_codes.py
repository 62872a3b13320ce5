"""Code scores: k-means and PQ codes through look-up tables, BEBR codes through the 16 x 16 nibble table."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from patchseek.errors import InvalidInputError
from patchseek.kernels import (
    code_maxsim,
    code_maxsim_reference,
    code_maxsim_triton,
    maxsim_reference,
    sdc_maxsim,
    sdc_maxsim_reference,
    sdc_maxsim_triton,
)
from patchseek.kernels._testing import assert_close, offsets_from_lengths, split_docs

LENGTHS = {
    "empties_around": [0, 1, 0, 0, 2, 0],
    "uniform": [5, 5, 5, 5],
    "ragged": [3, 7, 1, 0, 12, 2],
    "long": [70, 1, 0, 130],
}
CODE_DTYPES = [torch.uint8, torch.int16, torch.int32, torch.int64]


def random_codes(n: int, n_centroids: int, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    """Codes in [0, K); int16 codes above 32767 wrap negative, as uint16 ids stored in int16 do."""
    ids = torch.randint(0, n_centroids, (n,), generator=gen)
    return ids.to(torch.int32).to(torch.int16) if dtype == torch.int16 else ids.to(dtype)


def naive_sdc(q_codes: Tensor, doc_codes: Tensor, offsets: Tensor, table: Tensor) -> Tensor:
    out = []
    for doc in split_docs(doc_codes, offsets):
        best = [float("-inf")] * q_codes.shape[0]
        for j in range(doc.shape[0]):
            for i in range(q_codes.shape[0]):
                s = 0.0
                for qb, db in zip(q_codes[i].tolist(), doc[j].tolist(), strict=True):
                    s += float(table[qb >> 4, db >> 4]) + float(table[qb & 15, db & 15])
                best[i] = max(best[i], s)
        out.append(0.0 if doc.shape[0] == 0 else sum(best))
    return torch.tensor(out, dtype=torch.float32)


class TestKMeans:
    def test_hand_built(self) -> None:
        lut = torch.tensor([[0.1, 0.9, 0.5], [1.0, -1.0, 0.0]])  # 2 tokens, K = 3
        codes = torch.tensor([0, 2, 1], dtype=torch.uint8)
        scores = code_maxsim(lut, codes, torch.tensor([0, 2, 2, 3]), backend="torch")
        assert_close(scores, torch.tensor([0.5 + 1.0, 0.0, 0.9 - 1.0]))

    @pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
    @pytest.mark.parametrize("dtype", CODE_DTYPES, ids=str)
    def test_equals_maxsim_on_centroids(
        self, lengths: list[int], dtype: torch.dtype, small_chunks: None, gen: torch.Generator
    ) -> None:
        n_centroids = 40000 if dtype == torch.int16 else 256  # int16 ids >= 32768 must read as unsigned
        centroids = torch.randn(n_centroids, 17, generator=gen)
        q = torch.randn(4, 17, generator=gen)
        offsets = offsets_from_lengths(lengths)
        codes = random_codes(int(offsets[-1]), n_centroids, dtype, gen)
        ids = codes.long() & 0xFFFF if dtype == torch.int16 else codes.long()
        expected = maxsim_reference(q, centroids[ids], offsets)
        assert_close(code_maxsim_reference(q @ centroids.T, codes, offsets), expected, rtol=1e-5, atol=1e-5)


class TestProductQuantization:
    @pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
    def test_adc_equals_maxsim_on_reconstruction(
        self, lengths: list[int], small_chunks: None, gen: torch.Generator
    ) -> None:
        n_sub, k, sub_dim = 4, 256, 5
        books = torch.randn(n_sub, k, sub_dim, generator=gen)  # (M, K, dim / M)
        q = torch.randn(3, n_sub * sub_dim, generator=gen)
        offsets = offsets_from_lengths(lengths)
        codes = torch.randint(0, k, (int(offsets[-1]), n_sub), generator=gen).to(torch.uint8)  # (N, M)
        lut = torch.einsum("qmd,mkd->qmk", q.view(3, n_sub, sub_dim), books)  # (n_q, M, K)
        recon = torch.cat([books[m][codes[:, m].long()] for m in range(n_sub)], dim=1)  # (N, dim)
        expected = maxsim_reference(q, recon, offsets)
        assert_close(code_maxsim(lut, codes, offsets, backend="torch"), expected, rtol=1e-5, atol=1e-5)

    def test_pq_codes_must_be_uint8_with_m_columns(self) -> None:
        with pytest.raises(InvalidInputError):
            code_maxsim(torch.zeros(1, 4, 256), torch.zeros(3, 2, dtype=torch.uint8), torch.tensor([0, 3]))
        with pytest.raises(InvalidInputError):
            code_maxsim(torch.zeros(1, 2, 256), torch.zeros(3, 2, dtype=torch.int32), torch.tensor([0, 3]))


class TestSDC:
    def test_hand_built(self) -> None:
        table = torch.zeros(16, 16)
        table[1, 2], table[3, 4], table[1, 1] = 10.0, 1.0, 5.0
        q = torch.tensor([[0x13]], dtype=torch.uint8)  # hi nibble 1, lo nibble 3
        docs = torch.tensor([[0x24], [0x11]], dtype=torch.uint8)
        scores = sdc_maxsim(q, docs, torch.tensor([0, 1, 2, 2]), table, backend="torch")
        assert scores.tolist() == [11.0, 5.0, 0.0]  # table[1,2] + table[3,4]; table[1,1] + table[3,1]; empty

    @pytest.mark.parametrize(
        "lengths", [LENGTHS["empties_around"], LENGTHS["ragged"]], ids=["empties", "ragged"]
    )
    def test_against_naive_loop(self, lengths: list[int], small_chunks: None, gen: torch.Generator) -> None:
        offsets = offsets_from_lengths(lengths)
        q = torch.randint(0, 256, (3, 5), generator=gen).to(torch.uint8)
        docs = torch.randint(0, 256, (int(offsets[-1]), 5), generator=gen).to(torch.uint8)
        table = torch.randn(16, 16, generator=gen)
        assert_close(sdc_maxsim_reference(q, docs, offsets, table), naive_sdc(q, docs, offsets, table))

    def test_byte_counts_must_match(self) -> None:
        with pytest.raises(InvalidInputError):
            sdc_maxsim(
                torch.zeros(1, 4, dtype=torch.uint8),
                torch.zeros(2, 5, dtype=torch.uint8),
                torch.tensor([0, 2]),
                torch.zeros(16, 16),
            )


@pytest.mark.usefixtures("triton_cpu")
class TestTritonAgainstReference:
    @pytest.mark.parametrize("lengths", [LENGTHS["empties_around"], LENGTHS["long"]], ids=["empties", "long"])
    @pytest.mark.parametrize("dtype", CODE_DTYPES, ids=str)
    def test_kmeans(self, lengths: list[int], dtype: torch.dtype, gen: torch.Generator) -> None:
        n_centroids = 40000 if dtype == torch.int16 else 300
        lut = torch.randn(5, n_centroids, generator=gen)
        offsets = offsets_from_lengths(lengths)
        codes = random_codes(int(offsets[-1]), 256 if dtype == torch.uint8 else n_centroids, dtype, gen)
        assert_close(code_maxsim_triton(lut, codes, offsets), code_maxsim_reference(lut, codes, offsets))

    @pytest.mark.parametrize("lengths", [LENGTHS["empties_around"], LENGTHS["long"]], ids=["empties", "long"])
    def test_pq(self, lengths: list[int], gen: torch.Generator) -> None:
        lut = torch.randn(5, 3, 256, generator=gen)
        offsets = offsets_from_lengths(lengths)
        codes = torch.randint(0, 256, (int(offsets[-1]), 3), generator=gen).to(torch.uint8)
        expected = code_maxsim_reference(lut, codes, offsets)
        assert_close(code_maxsim(lut, codes, offsets, backend="triton"), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("lengths", [LENGTHS["empties_around"], LENGTHS["long"]], ids=["empties", "long"])
    def test_sdc(self, lengths: list[int], gen: torch.Generator) -> None:
        offsets = offsets_from_lengths(lengths)
        q = torch.randint(0, 256, (5, 6), generator=gen).to(torch.uint8)
        docs = torch.randint(0, 256, (int(offsets[-1]), 6), generator=gen).to(torch.uint8)
        table = torch.randn(16, 16, generator=gen)
        expected = sdc_maxsim_reference(q, docs, offsets, table)
        assert_close(sdc_maxsim_triton(q, docs, offsets, table), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
class TestGPU:
    def test_matches_cpu_reference(self, cuda: torch.device, gen: torch.Generator) -> None:
        offsets = offsets_from_lengths(torch.randint(0, 1100, (200,), generator=gen))
        n = int(offsets[-1])
        lut = torch.randn(32, 256, generator=gen)
        codes = torch.randint(0, 256, (n,), generator=gen).to(torch.uint8)
        got = code_maxsim(lut.to(cuda), codes.to(cuda), offsets.to(cuda))
        assert_close(got, code_maxsim_reference(lut, codes, offsets), rtol=1e-5, atol=1e-4)
        pq_lut = torch.randn(32, 16, 256, generator=gen)
        pq = torch.randint(0, 256, (n, 16), generator=gen).to(torch.uint8)
        got = code_maxsim(pq_lut.to(cuda), pq.to(cuda), offsets.to(cuda))
        assert_close(got, code_maxsim_reference(pq_lut, pq, offsets), rtol=1e-5, atol=1e-4)
        q, docs, table = pq[:32], pq, torch.randn(16, 16, generator=gen)
        got = sdc_maxsim(q.to(cuda), docs.to(cuda), offsets.to(cuda), table.to(cuda))
        assert_close(got, sdc_maxsim_reference(q, docs, offsets, table), rtol=1e-5, atol=1e-4)
