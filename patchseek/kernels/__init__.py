"""Late-interaction scoring kernels: a Triton kernel for the GPU, a torch reference for the CPU, one
dispatching function per score.

Documents are packed as one ``(n_patches_total, ...)`` array plus ``offsets`` ``(n_docs + 1,)`` int64;
every score is ``sum_i max_{j in doc} pair(i, j)`` as ``(n_docs,)`` float32, 0.0 for an empty document.
``backend="auto"`` runs Triton on CUDA (or under ``TRITON_INTERPRET=1``) and torch otherwise.
Every Triton launch is counted (``count_launches``, ``launch_counts``): tests assert that a search ran
each stage through a kernel.
"""

from __future__ import annotations

from patchseek.kernels._dispatch import (
    HAS_TRITON,
    Backend,
    count_launches,
    launch_counts,
    triton_runnable,
    use_triton,
)
from patchseek.kernels.codes import (
    code_maxsim,
    code_maxsim_reference,
    code_maxsim_triton,
    sdc_maxsim,
    sdc_maxsim_reference,
    sdc_maxsim_triton,
)
from patchseek.kernels.hamming import (
    binary_maxsim,
    binary_maxsim_reference,
    binary_maxsim_triton,
    hamming_maxsim,
    hamming_maxsim_reference,
    hamming_maxsim_triton,
    pack_signs,
    unpack_signs,
)
from patchseek.kernels.maxsim import maxsim, maxsim_reference, maxsim_triton

__all__ = [
    "HAS_TRITON",
    "Backend",
    "binary_maxsim",
    "binary_maxsim_reference",
    "binary_maxsim_triton",
    "code_maxsim",
    "code_maxsim_reference",
    "code_maxsim_triton",
    "count_launches",
    "hamming_maxsim",
    "hamming_maxsim_reference",
    "hamming_maxsim_triton",
    "launch_counts",
    "maxsim",
    "maxsim_reference",
    "maxsim_triton",
    "pack_signs",
    "sdc_maxsim",
    "sdc_maxsim_reference",
    "sdc_maxsim_triton",
    "triton_runnable",
    "unpack_signs",
    "use_triton",
]
