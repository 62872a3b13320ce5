"""MaxSim over sign-binary patch codes (1 bit per dimension, Vespa style).

Signs are packed as by ``numpy.packbits(x > 0, axis=1, bitorder="big")``: byte ``b`` holds dimensions
``8b .. 8b + 7``, the first in the most significant bit; bit 1 means +1, bit 0 means -1; the unused low
bits of the last byte are ignored.

- :func:`hamming_maxsim`: bits x bits, pair similarity ``dim - 2 * hamming`` (the +-1 dot product).
- :func:`binary_maxsim`: float query x +-1 documents, pair similarity ``q_i . s_j`` (the asymmetric
  form, which ranks better).

Both return ``score[d] = sum_i max_{j in doc d} sim(i, j)``, ``(n_docs,)`` float32, 0.0 for an empty
document.

The CPU references never unpack documents: a byte of a document contributes a value that depends only
on (byte position, byte value, query token), so the query becomes a ``(n_bytes * 256, n_q)`` look-up
table and each patch's similarities to all query tokens are one ``embedding_bag`` sum of ``n_bytes``
table rows (16 rows for 128 dimensions instead of 128 multiply-adds per token).

Examples
--------
>>> import torch
>>> docs = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0]])
>>> bits = pack_signs(docs)
>>> bits
tensor([[160],
        [  0]], dtype=torch.uint8)
>>> hamming_maxsim(pack_signs(torch.tensor([[1.0, -1.0, 1.0]])), bits, torch.tensor([0, 2]), dim=3,
...                backend="torch")
tensor([3.])
>>> binary_maxsim(torch.tensor([[0.5, 0.0, -1.0]]), bits, torch.tensor([0, 1, 2]), backend="torch")
tensor([-0.5000,  0.5000])
"""

# Triton names compile-time constants in capitals (BLOCK_P, HAS_SCALES); keep that convention.
# ruff: noqa: N803

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from patchseek.errors import InvalidInputError
from patchseek.kernels._dispatch import (
    HAS_TRITON,
    INTERPRET,
    Backend,
    record_launch,
    require_triton,
    tune_configs,
    use_triton,
)
from patchseek.kernels._segments import check_offsets, chunk_size, token_maxima

if HAS_TRITON:  # optional: the torch references need no Triton
    import triton
    import triton.language as tl

BLOCK_P = 64
MAX_BLOCK_Q = 64
# (constexprs, num_warps, num_stages) tried by triton.autotune on a GPU; the first is the default.
TUNE = (
    ({"BLOCK_P": BLOCK_P}, 4, 1),
    ({"BLOCK_P": 32}, 2, 1),
    ({"BLOCK_P": 64}, 8, 2),
    ({"BLOCK_P": 128}, 4, 2),
    ({"BLOCK_P": 128}, 8, 3),
)

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)  # bitorder="big"
_BYTE_VALUES = torch.arange(256, dtype=torch.int64)
_POPCOUNT8 = ((_BYTE_VALUES[:, None] >> torch.arange(8)) & 1).sum(dim=1)  # (256,) int64
_SIGNS8 = ((_BYTE_VALUES[:, None] >> torch.arange(7, -1, -1)) & 1).float() * 2 - 1  # (256, 8) +-1


def n_bytes_for(dim: int) -> int:
    """Bytes per packed vector of ``dim`` signs."""
    return (dim + 7) // 8


def pack_signs(x: Tensor) -> Tensor:
    """Pack the signs of ``x`` (bit 1 where ``x > 0``), ``numpy.packbits`` big bit order.

    x (n, dim) float -> (n, ceil(dim / 8)) uint8
    """
    if x.dim() != 2:
        raise InvalidInputError(f"pack_signs expects (n, dim), got shape {tuple(x.shape)}")
    n, dim = x.shape
    pad = n_bytes_for(dim) * 8 - dim
    positive = F.pad((x > 0).to(torch.uint8), (0, pad))  # (n, n_bytes * 8)
    weights = _BIT_WEIGHTS.to(x.device)
    return (positive.view(n, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)  # (n, n_bytes)


def unpack_signs(bits: Tensor, dim: int) -> Tensor:
    """Unpack sign bits into +-1 values. bits (n, ceil(dim / 8)) uint8 -> (n, dim) float32"""
    _check_bits(bits, dim, "bits")
    signs = _SIGNS8.to(bits.device)[bits.long()]  # (n, n_bytes, 8)
    return signs.reshape(bits.shape[0], -1)[:, :dim]  # (n, dim)


def _check_bits(bits: Tensor, dim: int, name: str) -> None:
    if bits.dtype != torch.uint8 or bits.dim() != 2:
        raise InvalidInputError(f"{name} must be (n, n_bytes) uint8, got {bits.dtype} {tuple(bits.shape)}")
    if dim < 1 or bits.shape[1] != n_bytes_for(dim):
        raise InvalidInputError(
            f"{name} has {bits.shape[1]} bytes per row; dim={dim} needs {n_bytes_for(dim)}"
        )


def _valid_bits(dim: int) -> Tensor:
    """Mask of the meaningful bits of each byte. -> (n_bytes,) int64"""
    count = torch.full((n_bytes_for(dim),), 8, dtype=torch.int64)
    count[-1] = dim - 8 * (count.numel() - 1)
    return (0xFF00 >> count) & 0xFF


def _byte_table_scan(table: Tensor, doc_bits: Tensor, offsets: Tensor) -> Tensor:
    """Sum over token of max over a doc's patches of ``sum_b table[b * 256 + doc_bits[j, b], token]``.

    table (n_bytes * 256, n_tokens) float32, doc_bits (N, n_bytes) uint8 -> (n_docs,) float32
    """
    n_bytes, n_tokens = doc_bits.shape[1], table.shape[1]
    base = torch.arange(n_bytes, dtype=torch.int32, device=doc_bits.device) * 256  # (n_bytes,) byte b's rows

    def sim(p0: int, p1: int) -> Tensor:
        # int32 row ids: widening uint8 to int64 (or a promoting add) costs more than the lookups
        rows = doc_bits[p0:p1].int().add_(base)  # (p1 - p0, n_bytes)
        return F.embedding_bag(rows, table, mode="sum")  # (p1 - p0, n_tokens)

    chunk = chunk_size(n_bytes * 8, n_tokens)
    return token_maxima(sim, offsets, n_tokens, device=doc_bits.device, chunk=chunk).sum(dim=1)


def hamming_maxsim_reference(q_bits: Tensor, doc_bits: Tensor, offsets: Tensor, *, dim: int) -> Tensor:
    """Bits x bits MaxSim in plain torch (the CPU path), via per-byte look-up tables.

    q_bits (n_q, n_bytes) uint8, doc_bits (N, n_bytes) uint8, offsets (n_docs + 1,) -> (n_docs,) float32
    """
    offs = _check_hamming(q_bits, doc_bits, offsets, dim)
    valid = _valid_bits(dim).to(q_bits.device)  # (n_bytes,)
    xor = (q_bits.long()[:, :, None] ^ _BYTE_VALUES.to(q_bits.device)) & valid[:, None]  # (n_q, n_bytes, 256)
    n_valid = _POPCOUNT8.to(q_bits.device)[valid]  # (n_bytes,)
    table = n_valid[:, None] - 2 * _POPCOUNT8.to(q_bits.device)[xor]  # (n_q, n_bytes, 256) +-1 dot per byte
    table = table.permute(1, 2, 0).reshape(-1, q_bits.shape[0]).float().contiguous()  # (n_bytes*256, n_q)
    return _byte_table_scan(table, doc_bits, offs)


def binary_maxsim_reference(q: Tensor, doc_bits: Tensor, offsets: Tensor) -> Tensor:
    """Float query x +-1 documents MaxSim in plain torch (the CPU path), via per-byte look-up tables.

    q (n_q, dim) float, doc_bits (N, ceil(dim / 8)) uint8, offsets (n_docs + 1,) -> (n_docs,) float32
    """
    offs = _check_binary(q, doc_bits, offsets)
    n_q, dim = q.shape
    q_pad = F.pad(q.to(doc_bits.device, torch.float32), (0, n_bytes_for(dim) * 8 - dim))  # (n_q, n_bytes*8)
    signs = _SIGNS8.to(doc_bits.device)  # (256, 8)
    table = torch.einsum("tbk,vk->bvt", q_pad.view(n_q, -1, 8), signs)  # (n_bytes, 256, n_q)
    return _byte_table_scan(table.reshape(-1, n_q).contiguous(), doc_bits, offs)


def _check_hamming(q_bits: Tensor, doc_bits: Tensor, offsets: Tensor, dim: int) -> Tensor:
    _check_bits(q_bits, dim, "q_bits")
    _check_bits(doc_bits, dim, "doc_bits")
    return check_offsets(offsets, doc_bits.shape[0], name="doc_bits")


def _check_binary(q: Tensor, doc_bits: Tensor, offsets: Tensor) -> Tensor:
    if q.dim() != 2 or not q.dtype.is_floating_point:
        raise InvalidInputError(f"q must be (n_q, dim) float, got {q.dtype} {tuple(q.shape)}")
    _check_bits(doc_bits, q.shape[1], "doc_bits")
    return check_offsets(offsets, doc_bits.shape[0], name="doc_bits")


def _as_words(bits: Tensor) -> Tensor:
    """View packed bytes as int32 words, zero-padding each row to a multiple of 4 bytes.

    bits (n, n_bytes) uint8 -> (n, ceil(n_bytes / 4)) int32
    """
    n, n_bytes = bits.shape
    pad = -n_bytes % 4
    if pad or not bits.is_contiguous():
        bits = F.pad(bits, (0, pad)).contiguous()
    return bits.view(torch.int32).view(n, -1)


def _last_word_mask(dim: int) -> int:
    """Valid-bit mask of the last int32 word (little-endian bytes), as a signed int32 value."""
    mask_bytes = torch.zeros(4 * ((n_bytes_for(dim) + 3) // 4), dtype=torch.uint8)
    mask_bytes[: n_bytes_for(dim)] = _valid_bits(dim).to(torch.uint8)
    return int(mask_bytes.view(torch.int32)[-1])


if HAS_TRITON:
    from triton.language.extra import libdevice

    @triton.jit
    def _popcount32(x, USE_POPC: tl.constexpr):
        """Set bits of each int32; SWAR shifts and masks where libdevice is unavailable (interpreter)."""
        if USE_POPC:
            return libdevice.popc(x)
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        return ((u * 0x01010101) >> 24).to(tl.int32)

    @triton.autotune(configs=tune_configs(TUNE), key=["N_WORDS", "BLOCK_Q"])
    @triton.jit
    def _hamming_maxsim_kernel(
        q_ptr,  # (n_tokens, N_WORDS) int32
        d_ptr,  # (n_patches, N_WORDS) int32
        off_ptr,  # (n_docs + 1,) int64
        out_ptr,  # (n_docs, n_tokens) float32 per-token maxima
        n_tokens,
        dim,
        last_mask,
        N_WORDS: tl.constexpr,
        USE_POPC: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        doc = tl.program_id(0)
        rq = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,)
        q_in = rq < n_tokens
        start = tl.load(off_ptr + doc)
        end = tl.load(off_ptr + doc + 1)
        best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        for p0 in range(start, end, BLOCK_P):
            rp = p0 + tl.arange(0, BLOCK_P)  # (BLOCK_P,) int64
            in_doc = rp < end
            ham = tl.zeros((BLOCK_Q, BLOCK_P), tl.int32)
            for w in tl.static_range(N_WORDS):
                qw = tl.load(q_ptr + rq * N_WORDS + w, mask=q_in, other=0)  # (BLOCK_Q,)
                dw = tl.load(d_ptr + rp * N_WORDS + w, mask=in_doc, other=0)  # (BLOCK_P,)
                x = qw[:, None] ^ dw[None, :]  # (BLOCK_Q, BLOCK_P)
                if w == N_WORDS - 1:
                    x = x & last_mask
                ham += _popcount32(x, USE_POPC)
            s = (dim - 2 * ham).to(tl.float32)
            s = tl.where(in_doc[None, :], s, float("-inf"))
            best = tl.maximum(best, tl.max(s, axis=1))
        best = tl.where(end > start, best, 0.0)
        tl.store(out_ptr + doc * n_tokens + rq, best, mask=q_in)

    @triton.autotune(configs=tune_configs(TUNE), key=["dim", "BLOCK_Q"])
    @triton.jit
    def _binary_maxsim_kernel(
        q_ptr,  # (n_tokens, dim) float32
        b_ptr,  # (n_patches, n_bytes) uint8
        off_ptr,  # (n_docs + 1,) int64
        out_ptr,  # (n_docs, n_tokens) float32 per-token maxima
        n_tokens,
        dim,
        n_bytes,
        stride_q,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        doc = tl.program_id(0)
        rq = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,)
        rd = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        d_in = rd < dim
        start = tl.load(off_ptr + doc)
        end = tl.load(off_ptr + doc + 1)
        q = tl.load(
            q_ptr + rq[:, None] * stride_q + rd[None, :],
            mask=(rq[:, None] < n_tokens) & d_in[None, :],
            other=0.0,
        )  # (BLOCK_Q, BLOCK_D)
        byte_of = rd // 8  # (BLOCK_D,) byte holding each dimension
        shift = 7 - rd % 8  # big bit order: dimension 8b sits in the top bit
        best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        for p0 in range(start, end, BLOCK_P):
            rp = p0 + tl.arange(0, BLOCK_P)  # (BLOCK_P,) int64
            in_doc = rp < end
            packed = tl.load(
                b_ptr + rp[:, None] * n_bytes + byte_of[None, :],
                mask=in_doc[:, None] & d_in[None, :],
                other=0,
            )  # (BLOCK_P, BLOCK_D) uint8, each byte read once per bit (L1 hits)
            signs = ((packed.to(tl.int32) >> shift[None, :]) & 1).to(tl.float32) * 2.0 - 1.0
            s = tl.dot(q, tl.trans(signs), input_precision=INPUT_PRECISION)  # (BLOCK_Q, BLOCK_P)
            s = tl.where(in_doc[None, :], s, float("-inf"))
            best = tl.maximum(best, tl.max(s, axis=1))
        best = tl.where(end > start, best, 0.0)
        tl.store(out_ptr + doc * n_tokens + rq, best, mask=rq < n_tokens)


def _block_q(n_tokens: int) -> int:
    return min(MAX_BLOCK_Q, max(16, triton.next_power_of_2(n_tokens)))


def hamming_maxsim_triton(q_bits: Tensor, doc_bits: Tensor, offsets: Tensor, *, dim: int) -> Tensor:
    """Bits x bits MaxSim with the Triton kernel (XOR + popcount on int32 words).

    Same arguments and result as :func:`hamming_maxsim_reference`.
    """
    require_triton(doc_bits.device)
    offs = _check_hamming(q_bits, doc_bits, offsets, dim)
    q_words = _as_words(q_bits.to(doc_bits.device))  # (n_q, n_words)
    d_words = _as_words(doc_bits)  # (N, n_words)
    n_docs, n_q = offs.numel() - 1, q_bits.shape[0]
    out = torch.zeros((n_docs, n_q), dtype=torch.float32, device=doc_bits.device)
    if n_docs and n_q:
        block_q = _block_q(n_q)
        _hamming_maxsim_kernel[(n_docs, triton.cdiv(n_q, block_q))](
            q_words,
            d_words,
            offs.to(doc_bits.device),
            out,
            n_q,
            dim,
            _last_word_mask(dim),
            N_WORDS=q_words.shape[1],
            USE_POPC=not INTERPRET and doc_bits.device.type == "cuda",
            BLOCK_Q=block_q,
        )
        record_launch("hamming_maxsim")
    return out.sum(dim=1)


def binary_maxsim_triton(q: Tensor, doc_bits: Tensor, offsets: Tensor) -> Tensor:
    """Float query x +-1 documents MaxSim with the Triton kernel (bits unpacked in registers, tl.dot).

    Same arguments and result as :func:`binary_maxsim_reference`.
    """
    require_triton(doc_bits.device)
    offs = _check_binary(q, doc_bits, offsets)
    qf = q.to(doc_bits.device, torch.float32).contiguous()  # (n_q, dim)
    bits = doc_bits.contiguous()
    n_docs, (n_q, dim) = offs.numel() - 1, qf.shape
    out = torch.zeros((n_docs, n_q), dtype=torch.float32, device=doc_bits.device)
    if n_docs and n_q:
        block_q = _block_q(n_q)
        interpreted = INTERPRET or doc_bits.device.type != "cuda"
        _binary_maxsim_kernel[(n_docs, triton.cdiv(n_q, block_q))](
            qf,
            bits,
            offs.to(doc_bits.device),
            out,
            n_q,
            dim,
            bits.shape[1],
            qf.stride(0),
            INPUT_PRECISION="ieee" if interpreted else "tf32x3",
            BLOCK_Q=block_q,
            BLOCK_D=max(16, triton.next_power_of_2(dim)),
        )
        record_launch("binary_maxsim")
    return out.sum(dim=1)


def hamming_maxsim(
    q_bits: Tensor, doc_bits: Tensor, offsets: Tensor, *, dim: int, backend: Backend = "auto"
) -> Tensor:
    """Sign-binary MaxSim, bits x bits: ``sum_i max_j (dim - 2 * hamming(q_i, d_j))``.

    q_bits (n_q, ceil(dim / 8)) uint8, doc_bits (N, ceil(dim / 8)) uint8, offsets (n_docs + 1,) int64
    -> (n_docs,) float32; 0.0 for an empty document.
    """
    impl = hamming_maxsim_triton if use_triton(doc_bits.device, backend) else hamming_maxsim_reference
    return impl(q_bits, doc_bits, offsets, dim=dim)


def binary_maxsim(q: Tensor, doc_bits: Tensor, offsets: Tensor, *, backend: Backend = "auto") -> Tensor:
    """Asymmetric sign-binary MaxSim, float query x +-1 documents: ``sum_i max_j q_i . s_j``.

    q (n_q, dim) float, doc_bits (N, ceil(dim / 8)) uint8, offsets (n_docs + 1,) int64
    -> (n_docs,) float32; 0.0 for an empty document.
    """
    impl = binary_maxsim_triton if use_triton(doc_bits.device, backend) else binary_maxsim_reference
    return impl(q, doc_bits, offsets)
