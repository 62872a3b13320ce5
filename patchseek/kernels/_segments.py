"""Packed variable-length documents: validation and the chunked MaxSim reduction shared by the references.

Documents are packed as one ``(n_patches_total, ...)`` array; ``offsets`` ``(n_docs + 1,)`` int64 holds
the start of each document (``offsets[0] == 0``, nondecreasing, ``offsets[-1] <= n_patches_total``),
so document ``d`` is rows ``offsets[d]:offsets[d + 1]``. An empty document scores 0.0.

Every torch reference is the same loop: for a chunk of patches, a ``sim_fn`` computes the
``(chunk, n_tokens)`` similarity of each patch to each query token (a matmul, an ``embedding_bag`` over
look-up tables, ...), then :func:`segment_amax` reduces it to per-document maxima. Chunks end on
document boundaries where they can, so equal-length documents reduce with a plain reshape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from patchseek.errors import InvalidInputError

# A chunk of patches is sized so that its largest temporary, (chunk, max(n_tokens, width)) float32,
# is about 4 MiB (8192 patches of 128 dims): large enough that per-chunk overhead vanishes (smaller
# chunks measured slower), small enough to keep peak memory flat whatever the collection size.
CHUNK_ELEMENTS = 1 << 20
MIN_CHUNK = 256

SimFn = Callable[[int, int], Tensor]


def check_offsets(offsets: Tensor, n_patches: int, *, name: str = "docs") -> Tensor:
    """Validate ``offsets`` against ``n_patches`` rows of ``name``; return them as CPU int64.

    offsets (n_docs + 1,) integer -> (n_docs + 1,) int64 on the CPU
    """
    if not isinstance(offsets, Tensor) or offsets.dim() != 1 or offsets.numel() < 1:
        raise InvalidInputError("offsets must be a 1-D tensor of n_docs + 1 start positions")
    if offsets.dtype.is_floating_point or offsets.dtype == torch.bool:
        raise InvalidInputError(f"offsets must be integers (int64), got {offsets.dtype}")
    offs = offsets.to("cpu", torch.int64)
    if int(offs[0]) != 0:
        raise InvalidInputError(f"offsets[0] must be 0, got {int(offs[0])}")
    if offs.numel() > 1 and bool((offs[1:] < offs[:-1]).any()):
        raise InvalidInputError("offsets must be nondecreasing")
    if int(offs[-1]) > n_patches:
        raise InvalidInputError(f"offsets[-1]={int(offs[-1])} exceeds the {n_patches} rows of {name}")
    return offs


def doc_lengths(offsets: Tensor) -> Tensor:
    """Patches per document. offsets (n_docs + 1,) -> (n_docs,) int64"""
    return offsets[1:] - offsets[:-1]


def segment_amax(sims: Tensor, lengths: Tensor) -> Tensor:
    """Maximum of consecutive row segments; an empty segment gives ``-inf``.

    sims (n_rows, n_tokens) float32, lengths (n_segments,) int64 summing to n_rows
    -> (n_segments, n_tokens) float32
    """
    n_seg, n_tokens = lengths.numel(), sims.shape[1]
    first = int(lengths[0]) if n_seg else 0
    if n_seg and first > 0 and bool((lengths == first).all()):
        return sims.view(n_seg, first, n_tokens).amax(dim=1)  # (n_seg, n_tokens)
    out = torch.full((n_seg, n_tokens), float("-inf"), dtype=sims.dtype, device=sims.device)
    seg_ids = torch.repeat_interleave(torch.arange(n_seg, device=sims.device), lengths.to(sims.device))
    return out.scatter_reduce_(0, seg_ids[:, None].expand(-1, n_tokens), sims, reduce="amax")


def chunk_size(width: int, n_tokens: int) -> int:
    """Patches per chunk for a score whose per-patch temporaries are ``width`` / ``n_tokens`` wide."""
    return max(MIN_CHUNK, CHUNK_ELEMENTS // max(1, width, n_tokens))


def token_maxima(
    sim_fn: SimFn,
    offsets: Tensor,
    n_tokens: int,
    *,
    device: torch.device,
    chunk: int,
) -> Tensor:
    """Per-document, per-token maximum similarity ``max_{j in doc d} sim(j, i)``; 0.0 for empty docs.

    ``sim_fn(p0, p1)`` returns the ``(p1 - p0, n_tokens)`` float32 similarities of patches
    ``p0:p1``. It is called on chunks of at most ``chunk`` patches (more only never: a chunk ends on
    a document boundary when one lies in it, or mid-document for documents longer than ``chunk``).

    offsets (n_docs + 1,) int64 CPU (see :func:`check_offsets`) -> (n_docs, n_tokens) float32
    """
    n_docs = offsets.numel() - 1
    best = torch.full((n_docs, n_tokens), float("-inf"), dtype=torch.float32, device=device)
    end = int(offsets[-1])
    p0 = 0
    while p0 < end:
        p1 = min(p0 + chunk, end)
        last_boundary = int(offsets[int(torch.searchsorted(offsets, p1, right=True)) - 1])
        if last_boundary > p0:
            p1 = last_boundary
        d_lo = int(torch.searchsorted(offsets, p0, right=True)) - 1  # the document holding patch p0
        d_hi = int(torch.searchsorted(offsets, p1, right=False))  # first document starting at/after p1
        starts = offsets[d_lo:d_hi].clamp(min=p0)
        ends = offsets[d_lo + 1 : d_hi + 1].clamp(max=p1)
        seg = segment_amax(sim_fn(p0, p1), ends - starts)  # (d_hi - d_lo, n_tokens)
        best[d_lo:d_hi] = torch.maximum(best[d_lo:d_hi], seg)
        p0 = p1
    empty = (doc_lengths(offsets) == 0).to(device)  # (n_docs,)
    return best.masked_fill_(empty[:, None], 0.0)
