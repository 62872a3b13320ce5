"""Helpers for kernel tests and benchmarks: packed-document generators and a verbose ``assert_close``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def assert_close(
    actual: Tensor,
    expected: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    name: str = "",
    n_worst: int = 5,
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise (NaNs never match).

    On failure the message lists the ``n_worst`` worst indices with both values, like Liger-Kernel's
    test helper, so a broken branch (one document, one token) is visible at a glance.
    """
    prefix = f"{name}: " if name else ""
    if actual.shape != expected.shape:
        raise AssertionError(f"{prefix}shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    err = (a - e).abs()
    excess = (err - (atol + rtol * e.abs())).nan_to_num(nan=float("inf"))
    bad = excess > 0
    if not bool(bad.any()):
        return
    order = excess.flatten().argsort(descending=True)[:n_worst]
    lines = []
    for flat in order.tolist():
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
        lines.append(
            f"  at {idx}: actual={a.flatten()[flat].item():.7g} expected={e.flatten()[flat].item():.7g}"
        )
    raise AssertionError(
        f"{prefix}{int(bad.sum())}/{a.numel()} elements differ (rtol={rtol}, atol={atol}, "
        f"max abs err {err.nan_to_num(nan=float('inf')).max().item():.3g}); worst:\n" + "\n".join(lines)
    )


def offsets_from_lengths(lengths: Sequence[int] | Tensor) -> Tensor:
    """Document starts from document lengths. lengths (n_docs,) -> (n_docs + 1,) int64"""
    lens = torch.as_tensor(lengths, dtype=torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])


def pack_docs(docs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Pack per-document ``(n_j, ...)`` tensors. -> packed (sum n_j, ...), offsets (n_docs + 1,) int64"""
    offsets = offsets_from_lengths([d.shape[0] for d in docs])
    return torch.cat(list(docs), dim=0), offsets


def split_docs(packed: Tensor, offsets: Tensor) -> list[Tensor]:
    """Inverse of :func:`pack_docs`: the per-document slices of ``packed``."""
    bounds = offsets.tolist()
    return [packed[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def random_lengths(
    n_docs: int,
    max_len: int,
    *,
    generator: torch.Generator | None = None,
    min_len: int = 0,
) -> list[int]:
    """``n_docs`` document lengths uniform in ``[min_len, max_len]`` (0 gives empty documents)."""
    return torch.randint(min_len, max_len + 1, (n_docs,), generator=generator).tolist()


def random_packed_docs(
    lengths: Sequence[int],
    dim: int,
    *,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """Random packed documents, unit-norm rows by default (ColPali's vectors are L2-normalised).

    -> docs (sum(lengths), dim) ``dtype``, offsets (len(lengths) + 1,) int64
    """
    offsets = offsets_from_lengths(lengths)
    docs = torch.randn(int(offsets[-1]), dim, generator=generator)  # (n_patches, dim)
    if normalize:
        docs = torch.nn.functional.normalize(docs, dim=1)
    return docs.to(dtype), offsets


def quantize_int8(docs: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-patch int8, ``docs ~= q * scale``.

    docs (n, dim) -> q (n, dim) int8, scale (n,) float32
    """
    scale = docs.float().abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (n,)
    q = (docs.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)  # (n, dim)
    return q, scale
