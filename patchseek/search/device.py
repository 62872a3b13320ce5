"""Where the index engine scores: the device plan and the device-memory budget of resident segment data.

The default plan (``device="cpu"``, ``kernels="auto"``) is the CPU path: segment parts stay memory-mapped
numpy arrays and every score runs through ``patchseek.kernels`` on CPU tensors. The *device path* is on
when the plan names a CUDA device, or asks for ``kernels="triton"`` (on the CPU that needs
``TRITON_INTERPRET=1``: the same code path then runs in tests without a GPU). On it, each segment reader
copies its stage-1 and stage-2 data to the device once (dense summary rows, codes, and the float rows of
a codec-less collection, whose stage 2 is exact MaxSim), shared by every snapshot listing the segment;
stage 3 gathers the shortlist's rows from the memory map into a pinned buffer and reranks on the device.

Every resident part is charged to a :class:`DeviceBudget` (one per device per process) before it is
copied. The budget is ``PATCHSEEK_DEVICE_MEMORY_BYTES`` where set, else on CUDA the free device memory
(``torch.cuda.mem_get_info``) less a headroom for query temporaries, else unlimited (CPU). A part that does
not fit stays on the CPU (``fallback="cpu"``: that part is scored by the CPU kernels, logged once) or
raises :class:`~patchseek.errors.DeviceMemoryError` (``fallback="error"``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from patchseek.errors import DeviceMemoryError, InvalidInputError
from patchseek.kernels import Backend, use_triton

log = logging.getLogger(__name__)

Fallback = Literal["cpu", "error"]
FALLBACKS: tuple[str, ...] = get_args(Fallback)
KERNEL_CHOICES: tuple[str, ...] = get_args(Backend)
CUDA_HEADROOM_FRACTION = 0.1  # of total device memory, left free for query temporaries and the encoder
CUDA_HEADROOM_MIN = 1 << 30


@dataclass(frozen=True)
class DevicePlan:
    """How an engine scores: ``device`` holds resident parts, ``backend`` picks the kernels.

    ``resident`` is the device path (see the module docstring); ``memory_bytes`` caps the resident bytes
    (None: free CUDA memory less headroom, or unlimited on the CPU); ``fallback`` says what a part that
    does not fit does.
    """

    device: torch.device
    backend: Backend = "auto"
    resident: bool = False
    memory_bytes: int | None = None
    fallback: Fallback = "cpu"

    @property
    def pinned(self) -> bool:
        """Whether stage-3 gathers go through page-locked host memory (a CUDA device)."""
        return self.device.type == "cuda"

    @classmethod
    def resolve(
        cls,
        device: str | torch.device = "cpu",
        kernels: str = "auto",
        *,
        memory_bytes: int | None = None,
        fallback: str = "cpu",
    ) -> DevicePlan:
        """Validate the settings and build the plan.

        ``device``: ``"cpu"``, ``"cuda"`` / ``"cuda:N"`` or ``"auto"`` (CUDA where available).
        ``kernels``: ``"auto"`` (Triton where it runs), ``"torch"`` or ``"triton"``; ``"triton"`` turns
        the device path on also on the CPU and fails here, with the reason, where Triton cannot run.
        """
        if kernels not in KERNEL_CHOICES:
            raise InvalidInputError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
        if fallback not in FALLBACKS:
            raise InvalidInputError(f"device fallback must be one of {FALLBACKS}, got {fallback!r}")
        if memory_bytes is not None and memory_bytes < 0:
            raise InvalidInputError(f"device memory budget must be >= 0 bytes, got {memory_bytes}")
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InvalidInputError(f"unknown device {device!r}; expected cpu, cuda or auto") from exc
        if dev.type not in ("cpu", "cuda"):
            raise InvalidInputError(f"unknown device {device!r}; expected cpu, cuda or auto")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError(f"device {device!r} was requested but CUDA is not available")
        if kernels == "triton":
            use_triton(dev, "triton")  # KernelUnavailableError with the reason
        resident = dev.type == "cuda" or kernels == "triton"
        return cls(dev, kernels, resident, memory_bytes, fallback)  # type: ignore[arg-type]


class DeviceBudget:
    """Bytes of resident segment data on one device, charged before each copy and released when the
    segment reader holding them is dropped."""

    def __init__(self, device: torch.device, limit: int | None) -> None:
        self.device = device
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def available(self) -> int | None:
        """Bytes that may still be charged (None: no limit)."""
        if self.limit is not None:
            return max(0, self.limit - self.used)
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return max(0, free - max(CUDA_HEADROOM_MIN, int(total * CUDA_HEADROOM_FRACTION)))
        return None

    def charge(self, nbytes: int, what: str, fallback: Fallback) -> bool:
        """Charge ``nbytes`` for ``what``; False (or ``DeviceMemoryError``) when they do not fit."""
        with self._lock:
            room = self.available()
            if room is None or nbytes <= room:
                self.used += nbytes
                return True
        msg = (
            f"{what} needs {nbytes} bytes on {self.device}, {room} are left of the device budget "
            f"(PATCHSEEK_DEVICE_MEMORY_BYTES={self.limit}, {self.used} bytes resident)"
        )
        if fallback == "error":
            raise DeviceMemoryError(
                msg + ": raise the budget, free device memory or set PATCHSEEK_DEVICE_FALLBACK=cpu"
            )
        log.warning("%s: it stays on the CPU", msg)
        return False

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.used = max(0, self.used - nbytes)


_budgets: dict[tuple[str, int | None], DeviceBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(plan: DevicePlan) -> DeviceBudget:
    """The process-wide budget of ``plan``'s device and limit (engines with the same settings share it)."""
    key = (str(plan.device), plan.memory_bytes)
    with _budgets_lock:
        if key not in _budgets:
            _budgets[key] = DeviceBudget(plan.device, plan.memory_bytes)
        return _budgets[key]
