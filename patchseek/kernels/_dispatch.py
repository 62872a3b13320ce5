"""Backend selection for the late-interaction kernels.

Every public kernel function takes ``backend: Backend = "auto"`` and asks :func:`use_triton` which
implementation to run:

- ``"torch"``: the vectorised torch reference (the CPU path);
- ``"triton"``: the Triton kernel; raises :class:`~patchseek.errors.KernelUnavailableError` where it
  cannot run (Triton not installed, or a CPU tensor without ``TRITON_INTERPRET=1``);
- ``"auto"``: Triton on CUDA tensors, or on CPU tensors when the Triton interpreter is on; torch
  otherwise.

Triton turns ``@triton.jit`` functions into interpreted ones only if ``TRITON_INTERPRET=1`` is set
when they are *defined*, so the variable is read once, at import, together with whether Triton is
importable at all. Kernel modules define their kernels only when :data:`HAS_TRITON` is true.

Every launcher records its launch in a process-wide counter (:func:`count_launches`), so a test can
assert that a search ran each stage through a Triton kernel. Launch settings (block sizes, warps,
pipeline stages) come from :func:`tune_configs`: ``triton.autotune`` picks among a small set on the first
launch of each shape class on a GPU; under the interpreter, or with ``PATCHSEEK_AUTOTUNE=0``, only the
first (default) configuration is used and nothing is benchmarked.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch

from patchseek.errors import InvalidInputError, KernelUnavailableError

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = get_args(Backend)

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "yes", "on"}

HAS_TRITON: bool
try:
    import triton  # noqa: F401
except ImportError:  # Triton is optional: the torch references cover every kernel.
    HAS_TRITON = False
else:
    HAS_TRITON = True

AUTOTUNE: bool = os.environ.get("PATCHSEEK_AUTOTUNE", "1").strip().lower() not in {"0", "false", "no", "off"}

_launches: Counter[str] = Counter()
_launch_lock = threading.Lock()


def record_launch(kernel: str) -> None:
    """Count one launch of ``kernel`` (called by every Triton launcher)."""
    with _launch_lock:
        _launches[kernel] += 1


def launch_counts() -> dict[str, int]:
    """Triton launches per kernel since the process started."""
    with _launch_lock:
        return dict(_launches)


@contextmanager
def count_launches() -> Iterator[Counter[str]]:
    """Launches per kernel made while the block runs (every thread's), filled in when it exits.

    >>> with count_launches() as n:
    ...     pass
    >>> dict(n)
    {}
    """
    before = launch_counts()
    out: Counter[str] = Counter()
    try:
        yield out
    finally:
        after = launch_counts()
        out.update({k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)})


def tune_configs(settings: Sequence[tuple[dict[str, int], int, int]]) -> list[Any]:
    """``triton.Config`` objects for ``triton.autotune`` from ``(constexprs, num_warps, num_stages)``.

    The first entry is the default: the only one under the interpreter or with
    ``PATCHSEEK_AUTOTUNE=0`` (a single configuration is never benchmarked).
    """
    import triton

    chosen = settings if AUTOTUNE and not INTERPRET else settings[:1]
    return [triton.Config(dict(kw), num_warps=w, num_stages=s) for kw, w, s in chosen]


def triton_runnable(
    device: torch.device | str,
    *,
    interpret: bool | None = None,
    has_triton: bool | None = None,
) -> bool:
    """Whether a Triton kernel can run on ``device``.

    ``interpret`` and ``has_triton`` default to what was found at import (:data:`INTERPRET`,
    :data:`HAS_TRITON`); tests pass them explicitly.
    """
    interpret = INTERPRET if interpret is None else interpret
    has_triton = HAS_TRITON if has_triton is None else has_triton
    if not has_triton:
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and interpret)


def use_triton(
    device: torch.device | str,
    backend: Backend = "auto",
    *,
    interpret: bool | None = None,
    has_triton: bool | None = None,
) -> bool:
    """Decide between the Triton kernel (True) and the torch reference (False).

    Raises
    ------
    InvalidInputError
        ``backend`` is not one of ``"auto"``, ``"torch"``, ``"triton"``.
    KernelUnavailableError
        ``backend="triton"`` where Triton cannot run on ``device``.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    runnable = triton_runnable(device, interpret=interpret, has_triton=has_triton)
    if backend == "triton" and not runnable:
        raise KernelUnavailableError(_why_unavailable(device, interpret, has_triton))
    return runnable


def require_triton(device: torch.device | str) -> None:
    """Raise :class:`KernelUnavailableError` unless a Triton launcher can run on ``device``."""
    use_triton(device, "triton")


def _why_unavailable(device: torch.device | str, interpret: bool | None, has_triton: bool | None) -> str:
    has_triton = HAS_TRITON if has_triton is None else has_triton
    if not has_triton:
        return "Triton is not installed: install patchseek[gpu] (or [dev]) or use backend='torch'"
    return (
        f"Triton kernels need a CUDA tensor or TRITON_INTERPRET=1 set before import; got device "
        f"{torch.device(device)}: move the tensors to CUDA or use backend='torch'"
    )
