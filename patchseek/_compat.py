"""Work-arounds for third-party packages, each in one documented place.

Nothing here is imported at package import time; callers that need a fix call its function first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading

import torch

__all__ = ["ensure_torchvision"]

# The fragment that declares the missing torchvision op schemas. It must stay alive for the life of the
# process: a ``torch.library.Library`` removes its definitions when it is garbage-collected.
_TORCHVISION_FRAGMENT: torch.library.Library | None = None
_LOCK = threading.Lock()

# Op schemas torchvision's ``_meta_registrations`` registers fake kernels for at import time; they must
# exist as operators or ``register_fake`` raises ``RuntimeError: operator torchvision::nms does not exist``.
_TORCHVISION_FAKE_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _drop_torchvision_modules() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> None:
    """Make ``import torchvision`` work when its compiled ops cannot load; call before importing it.

    Why: the torchvision wheel that pip resolves next to the CPU build of torch 2.13 (torchvision
    0.28.0) is a CUDA build. Its ``_C`` extension does not load against CPU torch, which torchvision
    tolerates, but ``torchvision/_meta_registrations.py`` then calls
    ``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) on operators that were never
    defined, so ``import torchvision`` raises ``RuntimeError: operator torchvision::nms does not exist``.
    transformers' image processors and ``colpali_engine`` import torchvision, so they fail too.

    The fix declares the two op schemas in a ``torch.library`` fragment (no kernels) and retries the
    import. Detection ops such as ``torchvision.ops.nms`` then raise if called; patchseek never calls
    them (it only needs torchvision's image transforms, used by the processors).

    Idempotent and cheap after the first call. Does nothing where torchvision imports normally (a CUDA
    machine, or a CPU wheel) or is not installed (the caller's own import guard reports that).
    """
    global _TORCHVISION_FRAGMENT
    with _LOCK:
        if _TORCHVISION_FRAGMENT is not None or "torchvision.transforms" in sys.modules:
            return
        if importlib.util.find_spec("torchvision") is None:
            return
        try:
            importlib.import_module("torchvision")
            return
        except RuntimeError as exc:
            if "torchvision::" not in str(exc):
                raise
        # A failed import leaves half-initialised ``torchvision*`` modules behind; a retry must start clean.
        _drop_torchvision_modules()
        fragment = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _TORCHVISION_FAKE_OPS.items():
            if not hasattr(torch.ops.torchvision, name):  # resolves the op; False when never defined
                fragment.define(schema)
        _TORCHVISION_FRAGMENT = fragment
        importlib.import_module("torchvision")
