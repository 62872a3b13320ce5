"""Kernel tests run the Triton kernels through Triton's interpreter where there is no CUDA device.

``TRITON_INTERPRET`` must be set before Triton and ``patchseek.kernels`` are imported: kernels become
interpreted functions when they are defined. An explicit ``TRITON_INTERPRET=0`` (a GPU run compiling the
real kernels: ``TRITON_INTERPRET=0 pytest -m gpu tests/kernels``) is left alone.
"""

from __future__ import annotations

import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from patchseek.kernels import _dispatch  # noqa: E402


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded generator: every test draws fresh but reproducible inputs."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def triton_cpu() -> None:
    """Skip unless the Triton kernels can run on CPU tensors (Triton installed, interpreter on)."""
    if not _dispatch.HAS_TRITON:
        pytest.skip("triton is not installed")
    if not _dispatch.INTERPRET:
        pytest.skip(
            "patchseek.kernels was imported before TRITON_INTERPRET=1 was set (run tests/kernels alone)"
        )


@pytest.fixture
def cuda() -> torch.device:
    """The CUDA device, for tests marked ``gpu`` (compiled kernels, not the interpreter)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if not _dispatch.HAS_TRITON:
        pytest.skip("triton is not installed")
    if _dispatch.INTERPRET:
        pytest.skip("TRITON_INTERPRET is on: run GPU tests with TRITON_INTERPRET=0")
    return torch.device("cuda")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the references' patch chunks tiny so documents straddle chunk boundaries."""
    from patchseek.kernels import _segments

    monkeypatch.setattr(_segments, "CHUNK_ELEMENTS", 16)
    monkeypatch.setattr(_segments, "MIN_CHUNK", 4)
