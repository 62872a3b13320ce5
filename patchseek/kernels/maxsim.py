"""Exact late-interaction (MaxSim) over packed variable-length documents.

``score[d] = sum_i max_{j in doc d} q_i . docs_j``

Parameters
----------
q : Tensor
    ``(n_q, dim)`` one query, or ``(B, n_q, dim)`` a batch of queries; any float dtype.
docs : Tensor
    ``(n_patches_total, dim)`` float32 / float16 / bfloat16, or int8 with ``scales``.
offsets : Tensor
    ``(n_docs + 1,)`` int64 document starts (``offsets[0] == 0``, nondecreasing).
scales : Tensor, optional
    ``(n_patches_total,)`` float32 per-patch scale: a patch's value is ``docs[j] * scales[j]``.
    Required for int8 documents.
q_mask : Tensor, optional
    ``(B, n_q)`` bool, batched queries only; ``False`` marks a padding token, which contributes nothing.

Returns
-------
Tensor
    ``(n_docs,)`` float32, or ``(B, n_docs)`` for a batch; 0.0 for an empty document.

The parameters and result are shared by :func:`maxsim`, :func:`maxsim_reference` and :func:`maxsim_triton`.

Notes
-----
Products accumulate in float32. Against float16 / bfloat16 documents the query is first rounded to the
documents' dtype, as the tensor-core kernel must do; every product of two such values is exact in
float32, so the reference and the kernel differ only in summation order.

The batched form scores all valid tokens of all queries in one pass: each document tile is read
once for up to 128 query tokens (the kernel's query block).

Examples
--------
>>> import torch
>>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> docs = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])
>>> maxsim(q, docs, torch.tensor([0, 2, 2, 3]), backend="torch")
tensor([1.5000, 0.0000, 2.0000])
"""

# Triton names compile-time constants in capitals (BLOCK_P, HAS_SCALES); keep that convention.
# ruff: noqa: N803

from __future__ import annotations

from dataclasses import dataclass

import torch
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

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DOC_DTYPES = (*FLOAT_DTYPES, torch.int8)

# Query tokens per program: the whole batch of a typical request (<=128 tokens) shares each
# document tile, which is read once from HBM.
MAX_BLOCK_Q = 128
BLOCK_P = 64
# (constexprs, num_warps, num_stages) tried by triton.autotune on a GPU; the first is the default.
TUNE = (
    ({"BLOCK_P": BLOCK_P}, 4, 2),
    ({"BLOCK_P": 64}, 4, 3),
    ({"BLOCK_P": 64}, 8, 3),
    ({"BLOCK_P": 128}, 8, 3),
    ({"BLOCK_P": 128}, 4, 4),
    ({"BLOCK_P": 32}, 4, 2),
)


@dataclass(frozen=True)
class QueryTokens:
    """The valid query tokens of one query or of a batch, flattened for a single pass.

    tokens (n_tokens, dim); batch_ids (n_tokens,) int64 query of each token, None for one query.
    """

    tokens: Tensor
    batch_ids: Tensor | None
    n_queries: int | None

    @classmethod
    def from_query(cls, q: Tensor, q_mask: Tensor | None) -> QueryTokens:
        if q.dim() == 2:
            if q_mask is not None:
                raise InvalidInputError("q_mask is for a batch of queries (B, n_q, dim); got a 2-D q")
            return cls(q, None, None)
        if q.dim() != 3:
            raise InvalidInputError(f"q must be (n_q, dim) or (B, n_q, dim), got shape {tuple(q.shape)}")
        n_batch, n_q, dim = q.shape
        batch_ids = torch.arange(n_batch, device=q.device).repeat_interleave(n_q)  # (B * n_q,)
        tokens = q.reshape(n_batch * n_q, dim)  # (B * n_q, dim)
        if q_mask is not None:
            if q_mask.shape != (n_batch, n_q) or q_mask.dtype != torch.bool:
                raise InvalidInputError(f"q_mask must be bool of shape {(n_batch, n_q)}")
            keep = q_mask.to(q.device).reshape(-1)  # (B * n_q,)
            tokens, batch_ids = tokens[keep], batch_ids[keep]
        return cls(tokens, batch_ids, n_batch)

    def sum(self, token_max: Tensor) -> Tensor:
        """Sum per-token maxima into scores. token_max (n_docs, n_tokens) -> (n_docs,) or (B, n_docs)"""
        if self.batch_ids is None:
            return token_max.sum(dim=1)  # (n_docs,)
        assert self.n_queries is not None
        out = torch.zeros((token_max.shape[0], self.n_queries), dtype=torch.float32, device=token_max.device)
        out.index_add_(1, self.batch_ids.to(token_max.device), token_max)  # (n_docs, B)
        return out.T.contiguous()  # (B, n_docs)


def _prepare(
    q: Tensor, docs: Tensor, offsets: Tensor, scales: Tensor | None, q_mask: Tensor | None
) -> tuple[QueryTokens, Tensor, Tensor | None, torch.dtype]:
    """Validate; return the flattened query tokens, CPU offsets, scales and the compute dtype."""
    if docs.dim() != 2 or docs.dtype not in DOC_DTYPES:
        raise InvalidInputError(
            f"docs must be (n_patches, dim) float32/float16/bfloat16/int8, "
            f"got {docs.dtype} {tuple(docs.shape)}"
        )
    if not q.dtype.is_floating_point or q.shape[-1] != docs.shape[1]:
        raise InvalidInputError(f"q must be float with dim {docs.shape[1]}, got {q.dtype} {tuple(q.shape)}")
    if docs.dtype == torch.int8 and scales is None:
        raise InvalidInputError("int8 docs need per-patch scales (n_patches,) float32")
    if scales is not None:
        if scales.shape != (docs.shape[0],):
            raise InvalidInputError(f"scales must have shape ({docs.shape[0]},), got {tuple(scales.shape)}")
        scales = scales.to(docs.device, torch.float32)
    offs = check_offsets(offsets, docs.shape[0])
    toks = QueryTokens.from_query(q.to(docs.device), q_mask)
    compute = docs.dtype if docs.dtype in (torch.float16, torch.bfloat16) else torch.float32
    return toks, offs, scales, compute


def maxsim_reference(
    q: Tensor,
    docs: Tensor,
    offsets: Tensor,
    *,
    scales: Tensor | None = None,
    q_mask: Tensor | None = None,
) -> Tensor:
    """MaxSim in plain torch (the CPU path): chunked ``patches @ tokens.T`` then a segment max.

    q (n_q, dim) | (B, n_q, dim), docs (n_patches, dim), offsets (n_docs + 1,)
    -> (n_docs,) | (B, n_docs) float32. See the module docstring for every argument.
    """
    toks, offs, scales, compute = _prepare(q, docs, offsets, scales, q_mask)
    tokens_t = toks.tokens.to(compute).float().T.contiguous()  # (dim, n_tokens)
    n_tokens, dim = tokens_t.shape[1], docs.shape[1]
    chunk = chunk_size(dim, n_tokens)
    # float16 / bfloat16 / int8 chunks are widened into one reused buffer: one conversion pass, and
    # the matmul runs at float32 speed (CPU half-precision matmuls round their output).
    buf = None if docs.dtype == torch.float32 else torch.empty((chunk, dim), device=docs.device)

    def sim(p0: int, p1: int) -> Tensor:
        rows = docs[p0:p1] if buf is None else buf[: p1 - p0].copy_(docs[p0:p1])  # (p1 - p0, dim) fp32
        s = rows @ tokens_t  # (p1 - p0, n_tokens)
        return s if scales is None else s.mul_(scales[p0:p1, None])

    return toks.sum(token_maxima(sim, offs, n_tokens, device=docs.device, chunk=chunk))


if HAS_TRITON:

    @triton.autotune(configs=tune_configs(TUNE), key=["dim", "BLOCK_Q", "HAS_SCALES", "DOT_FP32"])
    @triton.jit
    def _maxsim_kernel(
        q_ptr,  # (n_tokens, dim) compute dtype
        d_ptr,  # (n_patches, dim)
        s_ptr,  # (n_patches,) float32 scales, unused unless HAS_SCALES
        off_ptr,  # (n_docs + 1,) int64
        out_ptr,  # (n_docs, n_tokens) float32 per-token maxima
        n_tokens,
        dim,
        stride_q,
        stride_d,
        HAS_SCALES: tl.constexpr,
        DOT_FP32: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        doc = tl.program_id(0)
        rq = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,)
        rd = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        start = tl.load(off_ptr + doc)
        end = tl.load(off_ptr + doc + 1)
        q_mask = (rq[:, None] < n_tokens) & (rd[None, :] < dim)
        q = tl.load(
            q_ptr + rq[:, None] * stride_q + rd[None, :], mask=q_mask, other=0.0
        )  # (BLOCK_Q, BLOCK_D)
        if DOT_FP32:
            q = q.to(tl.float32)
        best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        for p0 in range(start, end, BLOCK_P):
            rp = p0 + tl.arange(0, BLOCK_P)  # (BLOCK_P,) int64: no overflow past 2**31 elements
            in_doc = rp < end
            d = tl.load(
                d_ptr + rp[:, None] * stride_d + rd[None, :],
                mask=in_doc[:, None] & (rd[None, :] < dim),
                other=0,
            )  # (BLOCK_P, BLOCK_D)
            if DOT_FP32:
                d = d.to(tl.float32)
            s = tl.dot(q, tl.trans(d), input_precision=INPUT_PRECISION)  # (BLOCK_Q, BLOCK_P) fp32
            if HAS_SCALES:
                s = s * tl.load(s_ptr + rp, mask=in_doc, other=1.0)[None, :]
            s = tl.where(in_doc[None, :], s, float("-inf"))
            best = tl.maximum(best, tl.max(s, axis=1))
        best = tl.where(end > start, best, 0.0)
        tl.store(out_ptr + doc * n_tokens + rq, best, mask=rq < n_tokens)


def maxsim_triton(
    q: Tensor,
    docs: Tensor,
    offsets: Tensor,
    *,
    scales: Tensor | None = None,
    q_mask: Tensor | None = None,
) -> Tensor:
    """MaxSim with the Triton kernel: one program per (document, block of <=128 query tokens).

    Same arguments and result as :func:`maxsim_reference`.
    """
    require_triton(docs.device)
    toks, offs, scales, compute = _prepare(q, docs, offsets, scales, q_mask)
    n_docs, n_tokens, dim = offs.numel() - 1, toks.tokens.shape[0], docs.shape[1]
    interpreted = INTERPRET or docs.device.type != "cuda"
    # int8 tiles are widened to fp32 in registers; the interpreter's tl.dot is wrong for bf16.
    dot_fp32 = docs.dtype == torch.int8 or (interpreted and docs.dtype == torch.bfloat16)
    # fp32 tiles on CUDA: three TF32 passes keep ~fp32 accuracy on tensor cores; the setting is moot
    # for fp16 / bf16 tiles, which get Triton's default.
    fp32_tiles = dot_fp32 or docs.dtype == torch.float32
    precision = "ieee" if interpreted else ("tf32x3" if fp32_tiles else "tf32")
    qt = toks.tokens.to(compute).contiguous()  # (n_tokens, dim)
    docs = docs if docs.stride(1) == 1 else docs.contiguous()
    out = torch.zeros((n_docs, n_tokens), dtype=torch.float32, device=docs.device)
    if n_docs and n_tokens:
        block_q = min(MAX_BLOCK_Q, max(16, triton.next_power_of_2(n_tokens)))
        grid = (n_docs, triton.cdiv(n_tokens, block_q))
        _maxsim_kernel[grid](
            qt,
            docs,
            scales if scales is not None else out,
            offs.to(docs.device),
            out,
            n_tokens,
            dim,
            qt.stride(0),
            docs.stride(0),
            HAS_SCALES=scales is not None,
            DOT_FP32=dot_fp32,
            INPUT_PRECISION=precision,
            BLOCK_Q=block_q,
            BLOCK_D=max(16, triton.next_power_of_2(dim)),
        )
        record_launch("maxsim")
    return toks.sum(out)


def maxsim(
    q: Tensor,
    docs: Tensor,
    offsets: Tensor,
    *,
    scales: Tensor | None = None,
    q_mask: Tensor | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Late-interaction score of one query (or a batch) against packed variable-length documents.

    q (n_q, dim) | (B, n_q, dim), docs (n_patches, dim), offsets (n_docs + 1,)
    -> (n_docs,) | (B, n_docs) float32. ``backend``: ``"auto"`` (Triton on CUDA or under
    ``TRITON_INTERPRET=1``, torch otherwise), ``"torch"`` or ``"triton"``.
    See the module docstring for every argument.
    """
    impl = maxsim_triton if use_triton(docs.device, backend) else maxsim_reference
    return impl(q, docs, offsets, scales=scales, q_mask=q_mask)
