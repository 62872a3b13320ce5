"""Sign-binary scores: packing, Hamming (bits x bits) and binary (float x bits) MaxSim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from patchseek.errors import InvalidInputError
from patchseek.kernels import (
    binary_maxsim,
    binary_maxsim_reference,
    binary_maxsim_triton,
    hamming_maxsim,
    hamming_maxsim_reference,
    hamming_maxsim_triton,
    maxsim_reference,
    pack_signs,
    unpack_signs,
)
from patchseek.kernels._testing import assert_close, random_packed_docs, split_docs

LENGTHS = {
    "empties_around": [0, 1, 0, 0, 2, 0],
    "uniform": [5, 5, 5, 5],
    "ragged": [3, 7, 1, 0, 12, 2],
    "long": [70, 1, 0, 130],
}
DIMS = [3, 8, 17, 64, 128]


def naive_hamming(q_bits: Tensor, doc_bits: Tensor, offsets: Tensor, dim: int) -> Tensor:
    """Per document, via numpy's unpackbits: similarity = dim - 2 * (number of differing signs)."""
    qs = np.unpackbits(q_bits.numpy(), axis=1, count=dim).astype(np.int64)  # (n_q, dim) 0/1
    out = []
    for doc in split_docs(doc_bits, offsets):
        if doc.shape[0] == 0:
            out.append(0.0)
            continue
        ds = np.unpackbits(doc.numpy(), axis=1, count=dim).astype(np.int64)  # (n, dim)
        ham = (qs[:, None, :] != ds[None, :, :]).sum(axis=2)  # (n_q, n)
        out.append(float((dim - 2 * ham).max(axis=1).sum()))
    return torch.tensor(out, dtype=torch.float32)


def signed_bits(n: int, dim: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, dim, generator=gen)
    return x, pack_signs(x)


class TestPacking:
    @pytest.mark.parametrize("dim", DIMS)
    def test_matches_numpy_packbits_and_round_trips(self, dim: int, gen: torch.Generator) -> None:
        x, bits = signed_bits(9, dim, gen)
        expected = np.packbits((x > 0).numpy(), axis=1, bitorder="big")
        assert bits.dtype == torch.uint8
        assert np.array_equal(bits.numpy(), expected)
        assert torch.equal(unpack_signs(bits, dim), torch.where(x > 0, 1.0, -1.0))

    def test_zero_packs_as_minus_one_and_first_dim_is_top_bit(self) -> None:
        assert pack_signs(torch.tensor([[1.0, 0.0, -2.0, 0.5]])).tolist() == [[0b1001_0000]]

    def test_wrong_byte_count(self) -> None:
        with pytest.raises(InvalidInputError):
            unpack_signs(torch.zeros(2, 3, dtype=torch.uint8), dim=25)


class TestHammingReference:
    def test_hand_built(self) -> None:
        q = pack_signs(torch.tensor([[1.0, 1.0, 1.0, 1.0]]))
        docs = pack_signs(
            torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
        )
        scores = hamming_maxsim(q, docs, torch.tensor([0, 1, 3, 3]), dim=4, backend="torch")
        assert scores.tolist() == [4.0, 2.0, 0.0]  # identical, one flip (best of two), empty

    @pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
    @pytest.mark.parametrize("dim", DIMS)
    def test_against_naive(
        self, lengths: list[int], dim: int, small_chunks: None, gen: torch.Generator
    ) -> None:
        _, q_bits = signed_bits(5, dim, gen)
        docs, offsets = random_packed_docs(lengths, dim, generator=gen)
        doc_bits = pack_signs(docs)
        got = hamming_maxsim_reference(q_bits, doc_bits, offsets, dim=dim)
        assert torch.equal(got, naive_hamming(q_bits, doc_bits, offsets, dim))

    @pytest.mark.parametrize("dim", [3, 17])
    def test_padding_bits_are_ignored(self, dim: int, gen: torch.Generator) -> None:
        _, q_bits = signed_bits(4, dim, gen)
        docs, offsets = random_packed_docs(LENGTHS["ragged"], dim, generator=gen)
        doc_bits = pack_signs(docs)
        dirty_q, dirty_d = q_bits.clone(), doc_bits.clone()
        dirty_q[:, -1] |= 0x01  # the lowest bit of the last byte is padding for dim % 8 != 0
        dirty_d[::2, -1] |= 0x01
        clean = hamming_maxsim_reference(q_bits, doc_bits, offsets, dim=dim)
        assert torch.equal(hamming_maxsim_reference(dirty_q, dirty_d, offsets, dim=dim), clean)

    def test_equals_float_maxsim_on_unpacked_signs(self, gen: torch.Generator) -> None:
        _, q_bits = signed_bits(6, 128, gen)
        docs, offsets = random_packed_docs(LENGTHS["long"], 128, generator=gen)
        doc_bits = pack_signs(docs)
        exact = maxsim_reference(unpack_signs(q_bits, 128), unpack_signs(doc_bits, 128), offsets)
        assert torch.equal(hamming_maxsim_reference(q_bits, doc_bits, offsets, dim=128), exact)


class TestBinaryReference:
    def test_hand_built(self) -> None:
        bits = pack_signs(torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]]))
        scores = binary_maxsim(
            torch.tensor([[0.5, 0.0, -1.0]]), bits, torch.tensor([0, 1, 2, 2]), backend="torch"
        )
        assert scores.tolist() == [-0.5, 0.5, 0.0]

    @pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
    @pytest.mark.parametrize("dim", DIMS)
    def test_equals_maxsim_on_unpacked_docs(
        self, lengths: list[int], dim: int, small_chunks: None, gen: torch.Generator
    ) -> None:
        q = torch.randn(5, dim, generator=gen)
        docs, offsets = random_packed_docs(lengths, dim, generator=gen)
        doc_bits = pack_signs(docs)
        expected = maxsim_reference(q, unpack_signs(doc_bits, dim), offsets)
        assert_close(binary_maxsim_reference(q, doc_bits, offsets), expected, rtol=1e-5, atol=1e-5)

    def test_dim_must_match_bytes(self) -> None:
        with pytest.raises(InvalidInputError):
            binary_maxsim(torch.zeros(1, 17), torch.zeros(2, 2, dtype=torch.uint8), torch.tensor([0, 2]))


@pytest.mark.usefixtures("triton_cpu")
class TestTritonAgainstReference:
    @pytest.mark.parametrize("lengths", [LENGTHS["empties_around"], LENGTHS["long"]], ids=["empties", "long"])
    @pytest.mark.parametrize("dim", [3, 17, 128])
    def test_hamming(self, lengths: list[int], dim: int, gen: torch.Generator) -> None:
        _, q_bits = signed_bits(5, dim, gen)
        docs, offsets = random_packed_docs(lengths, dim, generator=gen)
        doc_bits = pack_signs(docs)
        doc_bits[::3, -1] |= 0x01  # padding bits set where dim % 8 != 0 must still be ignored
        expected = hamming_maxsim_reference(q_bits, doc_bits, offsets, dim=dim)
        assert torch.equal(hamming_maxsim_triton(q_bits, doc_bits, offsets, dim=dim), expected)
        assert torch.equal(hamming_maxsim(q_bits, doc_bits, offsets, dim=dim, backend="triton"), expected)

    @pytest.mark.parametrize("lengths", [LENGTHS["empties_around"], LENGTHS["long"]], ids=["empties", "long"])
    @pytest.mark.parametrize("dim", [3, 17, 128])
    def test_binary(self, lengths: list[int], dim: int, gen: torch.Generator) -> None:
        q = torch.randn(5, dim, generator=gen)
        docs, offsets = random_packed_docs(lengths, dim, generator=gen)
        doc_bits = pack_signs(docs)
        expected = binary_maxsim_reference(q, doc_bits, offsets)
        assert_close(binary_maxsim_triton(q, doc_bits, offsets), expected, rtol=1e-5, atol=1e-5)

    def test_more_tokens_than_one_query_block(self, gen: torch.Generator) -> None:
        _, q_bits = signed_bits(70, 40, gen)  # 70 tokens: two 64-token blocks
        docs, offsets = random_packed_docs([3, 0, 2], 40, generator=gen)
        doc_bits = pack_signs(docs)
        expected = hamming_maxsim_reference(q_bits, doc_bits, offsets, dim=40)
        assert torch.equal(hamming_maxsim_triton(q_bits, doc_bits, offsets, dim=40), expected)


@pytest.mark.gpu
class TestGPU:
    def test_matches_cpu_reference(self, cuda: torch.device, gen: torch.Generator) -> None:
        lengths = torch.randint(0, 1100, (300,), generator=gen).tolist()
        docs, offsets = random_packed_docs(lengths, 128, generator=gen)
        q = torch.randn(32, 128, generator=gen)
        q_bits, doc_bits = pack_signs(q), pack_signs(docs)
        ham = hamming_maxsim(q_bits.to(cuda), doc_bits.to(cuda), offsets.to(cuda), dim=128)
        assert torch.equal(ham.cpu(), hamming_maxsim_reference(q_bits, doc_bits, offsets, dim=128))
        binary = binary_maxsim(q.to(cuda), doc_bits.to(cuda), offsets.to(cuda))
        assert_close(binary, binary_maxsim_reference(q, doc_bits, offsets), rtol=1e-4, atol=1e-4)
