"""MaxSim over quantized patch codes, scored through look-up tables.

- :func:`code_maxsim`, k-means codes (asymmetric): ``lut = Q @ C.T`` ``(n_q, K)``, codes ``(N,)``
  (uint8 / int16 / int32 / int64, read as unsigned ids ``< K``); pair score ``lut[i, codes[j]]``.
- :func:`code_maxsim`, product quantization (ADC): ``lut`` ``(n_q, M, K)`` (``lut[i, m] = q_i^m . C_m.T``),
  codes ``(N, M)`` uint8; pair score ``sum_m lut[i, m, codes[j, m]]``.
- :func:`sdc_maxsim`, BEBR codes (symmetric): query and documents coded alike, ``(n, n_bytes)`` uint8,
  two 4-bit codes per byte; ``table`` ``(16, 16)`` float32 scores a pair of nibbles; pair score
  ``sum_b table[q_hi, d_hi] + table[q_lo, d_lo]``.

Every function returns ``score[d] = sum_i max_{j in doc d} pair(i, j)``, ``(n_docs,)`` float32, 0.0 for
an empty document. Codes must be smaller than ``K``: the Triton kernels do not bounds-check them.

The CPU references gather rows of a ``(rows, n_q)`` table: one ``index_select`` row per patch for
k-means codes, an ``embedding_bag`` sum of ``M`` (PQ) or ``n_bytes`` (SDC, one 256-entry table per byte
position) rows otherwise.

Examples
--------
>>> import torch
>>> lut = torch.tensor([[0.1, 0.9, 0.5]])  # one query token, K = 3 centroids
>>> code_maxsim(lut, torch.tensor([0, 2, 1], dtype=torch.uint8), torch.tensor([0, 2, 3]), backend="torch")
tensor([0.5000, 0.9000])
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
    ({"BLOCK_P": 128}, 8, 2),
)

CODE_DTYPES = {torch.uint8: 8, torch.int16: 16, torch.int32: 32, torch.int64: 64}
_NIBBLE_HI = torch.arange(256) >> 4  # (256,)
_NIBBLE_LO = torch.arange(256) & 15  # (256,)


def _unsigned_ids(codes: Tensor) -> Tensor:
    """Codes as index ids, reading int16 / int32 as unsigned (K up to 65536 fits int16)."""
    if codes.dtype == torch.uint8:
        return codes.int()  # int32 ids index as fast and convert 3x faster than int64
    ids = codes.long()
    bits = CODE_DTYPES[codes.dtype]
    return ids & ((1 << bits) - 1) if bits in (16, 32) else ids


def _check_codes(lut: Tensor, codes: Tensor, offsets: Tensor) -> Tensor:
    if lut.dtype != torch.float32 or lut.dim() not in (2, 3):
        raise InvalidInputError(
            f"lut must be float32 (n_q, K) or (n_q, M, K), got {lut.dtype} {tuple(lut.shape)}"
        )
    if codes.dtype not in CODE_DTYPES:
        raise InvalidInputError(f"codes must be uint8/int16/int32/int64, got {codes.dtype}")
    if lut.dim() == 2 and codes.dim() != 1:
        raise InvalidInputError(f"k-means codes must be (N,) for a (n_q, K) lut, got {tuple(codes.shape)}")
    if lut.dim() == 3 and (codes.dim() != 2 or codes.shape[1] != lut.shape[1] or codes.dtype != torch.uint8):
        raise InvalidInputError(
            f"PQ codes must be (N, {lut.shape[1]}) uint8 for a {tuple(lut.shape)} lut, "
            f"got {codes.dtype} {tuple(codes.shape)}"
        )
    return check_offsets(offsets, codes.shape[0], name="codes")


def code_maxsim_reference(lut: Tensor, codes: Tensor, offsets: Tensor) -> Tensor:
    """k-means or PQ code MaxSim in plain torch (the CPU path): row gathers from the transposed lut.

    lut (n_q, K) | (n_q, M, K) float32, codes (N,) | (N, M), offsets (n_docs + 1,) -> (n_docs,) float32
    """
    offs = _check_codes(lut, codes, offsets)
    n_q = lut.shape[0]
    table = lut.to(codes.device).reshape(n_q, -1).T.contiguous()  # (K | M * K, n_q)
    if lut.dim() == 2:

        def sim(p0: int, p1: int) -> Tensor:
            return table.index_select(0, _unsigned_ids(codes[p0:p1]))  # (p1 - p0, n_q)

        width = 1
    else:
        base = torch.arange(lut.shape[1], dtype=torch.int32, device=codes.device) * lut.shape[2]  # (M,)

        def sim(p0: int, p1: int) -> Tensor:
            rows = codes[p0:p1].int().add_(base)  # (p1 - p0, M) int32 row ids (cheaper than int64)
            return F.embedding_bag(rows, table, mode="sum")  # (p1 - p0, n_q)

        width = lut.shape[1]
    chunk = chunk_size(width, n_q)
    return token_maxima(sim, offs, n_q, device=codes.device, chunk=chunk).sum(dim=1)


def _check_sdc(q_codes: Tensor, doc_codes: Tensor, offsets: Tensor, table: Tensor) -> Tensor:
    for name, c in (("q_codes", q_codes), ("doc_codes", doc_codes)):
        if c.dtype != torch.uint8 or c.dim() != 2:
            raise InvalidInputError(f"{name} must be (n, n_bytes) uint8, got {c.dtype} {tuple(c.shape)}")
    if q_codes.shape[1] != doc_codes.shape[1]:
        raise InvalidInputError(
            f"q_codes has {q_codes.shape[1]} bytes per row, doc_codes {doc_codes.shape[1]}"
        )
    if table.shape != (16, 16) or table.dtype != torch.float32:
        raise InvalidInputError(f"table must be (16, 16) float32, got {table.dtype} {tuple(table.shape)}")
    return check_offsets(offsets, doc_codes.shape[0], name="doc_codes")


def sdc_maxsim_reference(q_codes: Tensor, doc_codes: Tensor, offsets: Tensor, table: Tensor) -> Tensor:
    """BEBR nibble-table MaxSim in plain torch (the CPU path).

    Each byte position b gets a 256-row table ``T_b[v, i] = table[q_hi, v >> 4] + table[q_lo, v & 15]``
    and a patch's similarities to all tokens are an ``embedding_bag`` sum of its ``n_bytes`` rows.

    q_codes (n_q, n_bytes) uint8, doc_codes (N, n_bytes) uint8, offsets (n_docs + 1,), table (16, 16)
    -> (n_docs,) float32
    """
    offs = _check_sdc(q_codes, doc_codes, offsets, table)
    dev = doc_codes.device
    n_q, n_bytes = q_codes.shape
    qc, tab = q_codes.to(dev).long(), table.to(dev)
    hi = tab[qc >> 4][:, :, _NIBBLE_HI.to(dev)]  # (n_q, n_bytes, 256)
    lo = tab[qc & 15][:, :, _NIBBLE_LO.to(dev)]  # (n_q, n_bytes, 256)
    byte_table = (hi + lo).permute(1, 2, 0).reshape(n_bytes * 256, n_q).contiguous()  # (n_bytes * 256, n_q)
    base = torch.arange(n_bytes, dtype=torch.int32, device=dev) * 256  # (n_bytes,)

    def sim(p0: int, p1: int) -> Tensor:
        rows = doc_codes[p0:p1].int().add_(base)  # (p1 - p0, n_bytes) int32 row ids
        return F.embedding_bag(rows, byte_table, mode="sum")  # (p1 - p0, n_q)

    chunk = chunk_size(n_bytes * 8, n_q)
    return token_maxima(sim, offs, n_q, device=dev, chunk=chunk).sum(dim=1)


if HAS_TRITON:

    @triton.jit
    def _load_ids(c_ptr, CODE_BITS: tl.constexpr, mask):
        """Load codes as int64 ids, reading int16 / int32 as unsigned."""
        c = tl.load(c_ptr, mask=mask, other=0).to(tl.int64)
        if CODE_BITS == 16:
            c = c & 0xFFFF
        if CODE_BITS == 32:
            c = c & 0xFFFFFFFF
        return c

    @triton.autotune(configs=tune_configs(TUNE), key=["n_sub", "CODE_BITS", "BLOCK_Q"])
    @triton.jit
    def _code_maxsim_kernel(
        lut_ptr,  # (n_tokens, M, K) float32; M = 1 for k-means codes
        c_ptr,  # (n_patches, M) codes
        off_ptr,  # (n_docs + 1,) int64
        out_ptr,  # (n_docs, n_tokens) float32 per-token maxima
        n_tokens,
        n_sub,
        n_centroids,
        CODE_BITS: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        doc = tl.program_id(0)
        rq = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,)
        q_in = rq < n_tokens
        start = tl.load(off_ptr + doc)
        end = tl.load(off_ptr + doc + 1)
        lut_rows = lut_ptr + rq.to(tl.int64)[:, None] * n_sub * n_centroids  # (BLOCK_Q, 1)
        best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        for p0 in range(start, end, BLOCK_P):
            rp = p0 + tl.arange(0, BLOCK_P)  # (BLOCK_P,) int64
            in_doc = rp < end
            pair_in = q_in[:, None] & in_doc[None, :]
            s = tl.zeros((BLOCK_Q, BLOCK_P), tl.float32)
            for m in range(n_sub):
                ids = _load_ids(c_ptr + rp * n_sub + m, CODE_BITS, in_doc)  # (BLOCK_P,)
                s += tl.load(lut_rows + m * n_centroids + ids[None, :], mask=pair_in, other=0.0)
            s = tl.where(in_doc[None, :], s, float("-inf"))
            best = tl.maximum(best, tl.max(s, axis=1))
        best = tl.where(end > start, best, 0.0)
        tl.store(out_ptr + doc * n_tokens + rq, best, mask=q_in)

    @triton.autotune(configs=tune_configs(TUNE), key=["n_bytes", "BLOCK_Q"])
    @triton.jit
    def _sdc_maxsim_kernel(
        q_ptr,  # (n_tokens, n_bytes) uint8
        d_ptr,  # (n_patches, n_bytes) uint8
        t_ptr,  # (16, 16) float32
        off_ptr,  # (n_docs + 1,) int64
        out_ptr,  # (n_docs, n_tokens) float32 per-token maxima
        n_tokens,
        n_bytes,
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
            s = tl.zeros((BLOCK_Q, BLOCK_P), tl.float32)
            for b in range(n_bytes):
                qb = tl.load(q_ptr + rq * n_bytes + b, mask=q_in, other=0).to(tl.int32)  # (BLOCK_Q,)
                db = tl.load(d_ptr + rp * n_bytes + b, mask=in_doc, other=0).to(tl.int32)  # (BLOCK_P,)
                # The 1 KiB table stays in L1: two gathers per byte and pair.
                s += tl.load(t_ptr + (qb >> 4)[:, None] * 16 + (db >> 4)[None, :])
                s += tl.load(t_ptr + (qb & 15)[:, None] * 16 + (db & 15)[None, :])
            s = tl.where(in_doc[None, :], s, float("-inf"))
            best = tl.maximum(best, tl.max(s, axis=1))
        best = tl.where(end > start, best, 0.0)
        tl.store(out_ptr + doc * n_tokens + rq, best, mask=q_in)


def _grid(n_docs: int, n_tokens: int) -> tuple[tuple[int, int], int]:
    block_q = min(MAX_BLOCK_Q, max(16, triton.next_power_of_2(n_tokens)))
    return (n_docs, triton.cdiv(n_tokens, block_q)), block_q


def code_maxsim_triton(lut: Tensor, codes: Tensor, offsets: Tensor) -> Tensor:
    """k-means or PQ code MaxSim with the Triton kernel (lut gathers, L1/L2 resident).

    Same arguments and result as :func:`code_maxsim_reference`.
    """
    require_triton(codes.device)
    offs = _check_codes(lut, codes, offsets)
    n_q, n_centroids = lut.shape[0], lut.shape[-1]
    n_sub = 1 if lut.dim() == 2 else lut.shape[1]
    lut_c = lut.to(codes.device).contiguous()  # (n_q, [M,] K)
    codes_c = codes.contiguous()
    n_docs = offs.numel() - 1
    out = torch.zeros((n_docs, n_q), dtype=torch.float32, device=codes.device)
    if n_docs and n_q:
        grid, block_q = _grid(n_docs, n_q)
        _code_maxsim_kernel[grid](
            lut_c,
            codes_c,
            offs.to(codes.device),
            out,
            n_q,
            n_sub,
            n_centroids,
            CODE_BITS=CODE_DTYPES[codes.dtype],
            BLOCK_Q=block_q,
        )
        record_launch("code_maxsim")
    return out.sum(dim=1)


def sdc_maxsim_triton(q_codes: Tensor, doc_codes: Tensor, offsets: Tensor, table: Tensor) -> Tensor:
    """BEBR nibble-table MaxSim with the Triton kernel.

    Same arguments and result as :func:`sdc_maxsim_reference`.
    """
    require_triton(doc_codes.device)
    offs = _check_sdc(q_codes, doc_codes, offsets, table)
    dev = doc_codes.device
    n_docs, (n_q, n_bytes) = offs.numel() - 1, q_codes.shape
    out = torch.zeros((n_docs, n_q), dtype=torch.float32, device=dev)
    if n_docs and n_q:
        grid, block_q = _grid(n_docs, n_q)
        _sdc_maxsim_kernel[grid](
            q_codes.to(dev).contiguous(),
            doc_codes.contiguous(),
            table.to(dev).contiguous(),
            offs.to(dev),
            out,
            n_q,
            n_bytes,
            BLOCK_Q=block_q,
        )
        record_launch("sdc_maxsim")
    return out.sum(dim=1)


def code_maxsim(lut: Tensor, codes: Tensor, offsets: Tensor, *, backend: Backend = "auto") -> Tensor:
    """Asymmetric MaxSim over k-means codes (lut ``(n_q, K)``, codes ``(N,)``) or PQ codes (ADC).

    lut (n_q, K) | (n_q, M, K) float32, codes (N,) uint8/int16/int32/int64 | (N, M) uint8,
    offsets (n_docs + 1,) int64 -> (n_docs,) float32; 0.0 for an empty document.
    """
    impl = code_maxsim_triton if use_triton(codes.device, backend) else code_maxsim_reference
    return impl(lut, codes, offsets)


def sdc_maxsim(
    q_codes: Tensor, doc_codes: Tensor, offsets: Tensor, table: Tensor, *, backend: Backend = "auto"
) -> Tensor:
    """Symmetric MaxSim over BEBR codes with a 16 x 16 nibble table.

    q_codes (n_q, n_bytes) uint8, doc_codes (N, n_bytes) uint8, offsets (n_docs + 1,) int64,
    table (16, 16) float32 -> (n_docs,) float32; 0.0 for an empty document.
    """
    impl = sdc_maxsim_triton if use_triton(doc_codes.device, backend) else sdc_maxsim_reference
    return impl(q_codes, doc_codes, offsets, table)
