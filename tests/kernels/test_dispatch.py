"""Backend selection: which implementation runs where, and the errors when Triton cannot run."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest
import torch

from patchseek.errors import InvalidInputError, KernelUnavailableError
from patchseek.kernels import _dispatch, maxsim, maxsim_triton, use_triton

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (2, 2)
DOCS = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])  # (3, 2)
OFFSETS = torch.tensor([0, 2, 2, 3])
EXPECTED = torch.tensor([1.5, 0.0, 2.0])


class TestUseTriton:
    @pytest.mark.parametrize(
        ("device", "backend", "interpret", "has_triton", "expected"),
        [
            ("cpu", "auto", False, True, False),
            ("cpu", "auto", True, True, True),
            ("cpu", "auto", True, False, False),
            ("cuda", "auto", False, True, True),
            ("cuda", "auto", False, False, False),
            ("cpu", "torch", True, True, False),
            ("cuda", "torch", False, True, False),
            ("cpu", "triton", True, True, True),
            ("cuda", "triton", False, True, True),
        ],
    )
    def test_truth_table(
        self, device: str, backend: str, interpret: bool, has_triton: bool, expected: bool
    ) -> None:
        assert use_triton(device, backend, interpret=interpret, has_triton=has_triton) is expected  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("device", "interpret", "has_triton"), [("cpu", False, True), ("cuda", True, False)]
    )
    def test_triton_where_it_cannot_run_raises(self, device: str, interpret: bool, has_triton: bool) -> None:
        with pytest.raises(KernelUnavailableError) as info:
            use_triton(device, "triton", interpret=interpret, has_triton=has_triton)
        assert info.value.code == "kernel_unavailable"

    def test_unknown_backend_is_invalid_input(self) -> None:
        with pytest.raises(InvalidInputError):
            use_triton("cpu", "cuda")  # type: ignore[arg-type]


class TestPublicFunctionDispatch:
    def test_cpu_without_interpreter(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_dispatch, "INTERPRET", False)
        torch.testing.assert_close(maxsim(Q, DOCS, OFFSETS), EXPECTED)
        torch.testing.assert_close(maxsim(Q, DOCS, OFFSETS, backend="torch"), EXPECTED)
        with pytest.raises(KernelUnavailableError):
            maxsim(Q, DOCS, OFFSETS, backend="triton")
        with pytest.raises(KernelUnavailableError):
            maxsim_triton(Q, DOCS, OFFSETS)

    def test_without_triton_installed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_dispatch, "HAS_TRITON", False)
        monkeypatch.setattr(_dispatch, "INTERPRET", True)
        torch.testing.assert_close(maxsim(Q, DOCS, OFFSETS), EXPECTED)
        with pytest.raises(KernelUnavailableError, match="not installed"):
            maxsim(Q, DOCS, OFFSETS, backend="triton")

    def test_auto_uses_the_interpreter_when_it_is_on(
        self, triton_cpu: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        mod = importlib.import_module("patchseek.kernels.maxsim")  # the attribute is the function

        calls: list[str] = []
        real = mod.maxsim_triton
        monkeypatch.setattr(mod, "maxsim_triton", lambda *a, **k: calls.append("triton") or real(*a, **k))
        torch.testing.assert_close(maxsim(Q, DOCS, OFFSETS), EXPECTED)
        assert calls == ["triton"]


def test_import_and_torch_path_without_triton() -> None:
    """The package imports and scores with Triton absent; asking for Triton says how to get it."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        from patchseek.errors import KernelUnavailableError
        from patchseek.kernels import HAS_TRITON, hamming_maxsim, maxsim, pack_signs
        assert not HAS_TRITON
        s = maxsim(torch.eye(2), torch.eye(2), torch.tensor([0, 1, 2]))
        assert s.tolist() == [1.0, 1.0], s
        b = pack_signs(torch.eye(2))
        assert hamming_maxsim(b, b, torch.tensor([0, 2]), dim=2).tolist() == [4.0]
        try:
            maxsim(torch.eye(2), torch.eye(2), torch.tensor([0, 2]), backend="triton")
        except KernelUnavailableError as e:
            print("unavailable:", e)
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "unavailable: Triton is not installed" in run.stdout
