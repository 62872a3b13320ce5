"""Pin the public API of ``patchseek.kernels``: other packages code against these names and signatures."""

from __future__ import annotations

import inspect

import patchseek.kernels as kernels

EXPECTED_ALL = {
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
}

# name -> (positional parameters, keyword-only parameters with their defaults)
SIGNATURES = {
    "maxsim": (["q", "docs", "offsets"], {"scales": None, "q_mask": None, "backend": "auto"}),
    "hamming_maxsim": (
        ["q_bits", "doc_bits", "offsets"],
        {"dim": inspect.Parameter.empty, "backend": "auto"},
    ),
    "binary_maxsim": (["q", "doc_bits", "offsets"], {"backend": "auto"}),
    "code_maxsim": (["lut", "codes", "offsets"], {"backend": "auto"}),
    "sdc_maxsim": (["q_codes", "doc_codes", "offsets", "table"], {"backend": "auto"}),
    "pack_signs": (["x"], {}),
    "unpack_signs": (["bits", "dim"], {}),
    "use_triton": (["device", "backend"], {"interpret": None, "has_triton": None}),
}


def test_all_is_pinned() -> None:
    assert set(kernels.__all__) == EXPECTED_ALL
    assert len(kernels.__all__) == len(set(kernels.__all__))
    for name in kernels.__all__:
        assert hasattr(kernels, name), name


def test_public_signatures() -> None:
    for name, (positional, keyword) in SIGNATURES.items():
        params = inspect.signature(getattr(kernels, name)).parameters.values()
        pos = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        kw = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert pos == positional, name
        assert kw == keyword, name


def test_every_score_has_reference_and_launcher_with_the_same_parameters() -> None:
    for score in ("maxsim", "hamming_maxsim", "binary_maxsim", "code_maxsim", "sdc_maxsim"):
        public = inspect.signature(getattr(kernels, score)).parameters
        for suffix in ("_reference", "_triton"):
            impl = inspect.signature(getattr(kernels, score + suffix)).parameters
            assert list(impl) == [p for p in public if p != "backend"], score + suffix
        assert getattr(kernels, score).__doc__, score
