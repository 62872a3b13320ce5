"""MaxSim: the torch reference against a naive per-document loop, the Triton kernel against the reference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from patchseek.errors import InvalidInputError
from patchseek.kernels import maxsim, maxsim_reference, maxsim_triton
from patchseek.kernels._testing import (
    assert_close,
    offsets_from_lengths,
    quantize_int8,
    random_packed_docs,
    split_docs,
)

# Empty, one-patch, uniform (the reshape fast path), ragged, and longer than one 64-patch kernel tile.
LENGTHS = {
    "one_empty": [0],
    "one_patch": [1],
    "empties_around": [0, 1, 0, 0, 2, 0],
    "uniform": [5, 5, 5, 5],
    "ragged": [3, 7, 1, 0, 12, 2],
    "long": [70, 1, 0, 130],
}
DTYPE_TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-4}


def naive_maxsim(q: Tensor, docs: Tensor, offsets: Tensor, scales: Tensor | None = None) -> Tensor:
    """One document at a time, in float64. q (n_q, dim) already rounded as the kernels round it."""
    out = []
    values = docs.double() if scales is None else docs.double() * scales.double()[:, None]
    for doc in split_docs(values, offsets):
        out.append(0.0 if doc.shape[0] == 0 else (q.double() @ doc.T).max(dim=1).values.sum().item())
    return torch.tensor(out, dtype=torch.float32)


def rounded(q: Tensor, docs: Tensor) -> Tensor:
    return q.to(docs.dtype) if docs.dtype in (torch.float16, torch.bfloat16) else q


class TestHandBuilt:
    """Tiny inputs whose answer is obvious."""

    def test_sum_of_per_token_maxima(self) -> None:
        q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        docs = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0], [-1.0, -1.0]])
        scores = maxsim(q, docs, torch.tensor([0, 2, 3, 3, 4]), backend="torch")
        assert scores.tolist() == [5.0, 2.0, 0.0, -2.0]  # 2+3, 1+1, empty, -1-1
        assert scores.dtype == torch.float32

    def test_negative_similarities_are_not_clipped_at_zero(self) -> None:
        scores = maxsim(
            torch.tensor([[1.0]]), torch.tensor([[-3.0], [-2.0]]), torch.tensor([0, 2]), backend="torch"
        )
        assert scores.tolist() == [-2.0]

    def test_int8_value_is_code_times_scale(self) -> None:
        docs = torch.tensor([[10, 0], [0, -20]], dtype=torch.int8)
        scales = torch.tensor([0.5, 0.25])
        q = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
        scores = maxsim(q, docs, torch.tensor([0, 2]), scales=scales, backend="torch")
        assert scores.tolist() == [5.0 + 5.0]

    def test_batch_with_padding_tokens(self) -> None:
        q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [9.0, 9.0]]])  # (2, 2, 2)
        docs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        mask = torch.tensor([[True, True], [True, False]])
        scores = maxsim(q, docs, torch.tensor([0, 1, 2]), q_mask=mask, backend="torch")
        assert scores.tolist() == [[1.0, 1.0], [1.0, 0.0]]

    def test_trailing_rows_beyond_the_last_offset_are_ignored(self) -> None:
        docs = torch.tensor([[1.0], [100.0]])
        assert maxsim(torch.ones(1, 1), docs, torch.tensor([0, 1]), backend="torch").tolist() == [1.0]


class TestReferenceAgainstNaive:
    @pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
    @pytest.mark.parametrize("dim", [3, 17, 128])
    @pytest.mark.parametrize("dtype", list(DTYPE_TOL), ids=str)
    def test_float_docs(self, lengths: list[int], dim: int, dtype: torch.dtype, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs(lengths, dim, dtype=dtype, generator=gen)
        q = torch.randn(5, dim, generator=gen)
        expected = naive_maxsim(rounded(q, docs), docs, offsets)
        tol = DTYPE_TOL[dtype]
        assert_close(maxsim_reference(q, docs, offsets), expected, rtol=tol, atol=tol, name=f"{dtype} {dim}")

    @pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
    def test_documents_straddling_chunks(
        self, lengths: list[int], small_chunks: None, gen: torch.Generator
    ) -> None:
        docs, offsets = random_packed_docs(lengths, 17, generator=gen)
        q = torch.randn(3, 17, generator=gen)
        assert_close(maxsim_reference(q, docs, offsets), naive_maxsim(q, docs, offsets))

    def test_int8_with_scales(self, small_chunks: None, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs(LENGTHS["ragged"], 17, generator=gen)
        codes, scales = quantize_int8(docs)
        q = torch.randn(4, 17, generator=gen)
        assert_close(
            maxsim_reference(q, codes, offsets, scales=scales), naive_maxsim(q, codes, offsets, scales)
        )
        # int8 with per-patch scales approximates the float scores it was made from
        assert_close(
            maxsim_reference(q, codes, offsets, scales=scales), naive_maxsim(q, docs, offsets), atol=0.05
        )

    def test_batch_equals_one_query_at_a_time(self, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs(LENGTHS["ragged"], 17, generator=gen)
        q = torch.randn(3, 6, 17, generator=gen)
        mask = torch.rand(3, 6, generator=gen) > 0.3
        mask[2] = False  # a query with no valid token scores 0 everywhere
        batched = maxsim_reference(q, docs, offsets, q_mask=mask)
        assert batched.shape == (3, offsets.numel() - 1)
        for b in range(3):
            assert_close(batched[b], naive_maxsim(q[b][mask[b]], docs, offsets), name=f"query {b}")

    def test_batch_without_mask_uses_every_token(self, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs(LENGTHS["long"], 8, generator=gen)
        q = torch.randn(2, 4, 8, generator=gen)
        assert_close(maxsim_reference(q, docs, offsets)[1], naive_maxsim(q[1], docs, offsets))


class TestValidation:
    DOCS = torch.zeros(4, 3)

    @pytest.mark.parametrize(
        "offsets",
        [
            torch.tensor([1, 4]),
            torch.tensor([0, 3, 2, 4]),
            torch.tensor([0, 5]),
            torch.tensor([0.0, 4.0]),
            torch.zeros(0, dtype=torch.int64),
            torch.tensor([[0, 4]]),
        ],
        ids=["not_from_zero", "decreasing", "past_the_end", "float", "empty", "2d"],
    )
    def test_bad_offsets(self, offsets: Tensor) -> None:
        with pytest.raises(InvalidInputError) as info:
            maxsim(torch.zeros(1, 3), self.DOCS, offsets, backend="torch")
        assert info.value.code == "invalid_input"

    def test_no_documents(self) -> None:
        assert maxsim(torch.zeros(2, 3), self.DOCS, torch.tensor([0]), backend="torch").shape == (0,)

    @pytest.mark.parametrize(
        ("q", "docs", "kwargs"),
        [
            (torch.zeros(1, 2), torch.zeros(4, 3), {}),  # dim mismatch
            (torch.zeros(1, 3), torch.zeros(4, 3, dtype=torch.int8), {}),  # int8 without scales
            (torch.zeros(1, 3), torch.zeros(4, 3), {"scales": torch.ones(3)}),  # scales of the wrong length
            (
                torch.zeros(1, 3),
                torch.zeros(4, 3),
                {"q_mask": torch.ones(1, 1, dtype=torch.bool)},
            ),  # mask, 2-D q
            (torch.zeros(2, 1, 3), torch.zeros(4, 3), {"q_mask": torch.ones(2, 2, dtype=torch.bool)}),
            (torch.zeros(1, 3), torch.zeros(4, 3, dtype=torch.float64), {}),  # float64 docs
            (torch.zeros(1, 3, dtype=torch.int64), torch.zeros(4, 3), {}),  # integer query
        ],
    )
    def test_bad_inputs(self, q: Tensor, docs: Tensor, kwargs: dict) -> None:
        with pytest.raises(InvalidInputError):
            maxsim(q, docs, torch.tensor([0, 4]), backend="torch", **kwargs)


@pytest.mark.usefixtures("triton_cpu")
class TestTritonAgainstReference:
    """The kernel under TRITON_INTERPRET=1: every branch on tiny shapes."""

    @pytest.mark.parametrize("lengths", [LENGTHS["empties_around"], LENGTHS["long"]], ids=["empties", "long"])
    @pytest.mark.parametrize("dim", [3, 17, 128])
    @pytest.mark.parametrize("dtype", list(DTYPE_TOL), ids=str)
    def test_float_docs(self, lengths: list[int], dim: int, dtype: torch.dtype, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs(lengths, dim, dtype=dtype, generator=gen)
        q = torch.randn(5, dim, generator=gen)
        tol = DTYPE_TOL[dtype]
        expected = maxsim_reference(q, docs, offsets)
        assert_close(maxsim_triton(q, docs, offsets), expected, rtol=tol, atol=tol, name=f"{dtype} {dim}")
        assert_close(maxsim(q, docs, offsets, backend="triton"), expected, rtol=tol, atol=tol)

    def test_int8_with_scales_and_masked_batch(self, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs(LENGTHS["ragged"], 17, generator=gen)
        codes, scales = quantize_int8(docs)
        q = torch.randn(2, 5, 17, generator=gen)
        mask = torch.tensor([[True, False, True, True, False], [False, True, True, True, True]])
        assert_close(
            maxsim_triton(q, codes, offsets, scales=scales, q_mask=mask),
            maxsim_reference(q, codes, offsets, scales=scales, q_mask=mask),
        )

    def test_more_tokens_than_one_query_block(self, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs([3, 0, 1], 16, dtype=torch.float16, generator=gen)
        q = torch.randn(3, 50, 16, generator=gen)  # 150 tokens: two 128-token program blocks
        assert_close(
            maxsim_triton(q, docs, offsets), maxsim_reference(q, docs, offsets), rtol=1e-4, atol=1e-4
        )

    def test_strided_docs(self, gen: torch.Generator) -> None:
        wide, offsets = random_packed_docs([4, 2], 24, generator=gen)
        docs = wide[:, :17]  # row stride 24, dim 17
        q = torch.randn(3, 17, generator=gen)
        assert_close(maxsim_triton(q, docs, offsets), naive_maxsim(q, docs, offsets))


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("dtype", list(DTYPE_TOL), ids=str)
    def test_matches_cpu_reference(
        self, dtype: torch.dtype, cuda: torch.device, gen: torch.Generator
    ) -> None:
        lengths = torch.randint(0, 1100, (300,), generator=gen).tolist()
        docs, offsets = random_packed_docs(lengths, 128, dtype=dtype, generator=gen)
        q = torch.randn(4, 32, 128, generator=gen)
        mask = torch.rand(4, 32, generator=gen) > 0.2
        expected = maxsim_reference(q, docs, offsets, q_mask=mask)
        got = maxsim(q.to(cuda), docs.to(cuda), offsets.to(cuda), q_mask=mask.to(cuda))
        tol = 1e-4 if dtype == torch.float32 else 1e-3
        assert_close(got, expected, rtol=tol, atol=tol, name=str(dtype))

    def test_int8(self, cuda: torch.device, gen: torch.Generator) -> None:
        docs, offsets = random_packed_docs(
            torch.randint(0, 300, (100,), generator=gen).tolist(), 128, generator=gen
        )
        codes, scales = quantize_int8(docs)
        q = torch.randn(20, 128, generator=gen)
        expected = maxsim_reference(q, codes, offsets, scales=scales)
        got = maxsim(q.to(cuda), codes.to(cuda), offsets.to(cuda), scales=scales.to(cuda))
        assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_offsets_helper_round_trip() -> None:
    offsets = offsets_from_lengths([2, 0, 3])
    assert offsets.tolist() == [0, 2, 2, 5]
    assert [d.shape[0] for d in split_docs(torch.zeros(5, 1), offsets)] == [2, 0, 3]
