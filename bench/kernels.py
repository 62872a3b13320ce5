"""Late-interaction kernel benchmark: every score of ``patchseek.kernels`` on synthetic ColPali-shaped pages.

Pages are 1030 patches x 128 dims (ColPali's bag size), random L2-normalised vectors stored as float16
(the stage-3 rerank copy); compressed codes are random bytes of each codec's width (the kernels' speed
does not depend on the values). Each row is the median of ``--repeats`` runs after one warm-up (a call
slower than 1 s counts as a run), the rows interleaved run by run (fair ratios on a shared machine), and
compared in the same run with:

- ``einsum``: the exact padded torch baseline, ``torch.einsum("qd,npd->nqp")`` then max / sum, in
  batches of 1000 pages (a plain reshape: every page has 1030 patches), over the float16 pages and over
  a float32 copy (CPU half-precision matmuls are slow, so the float32 one is the stronger baseline);
- ``colpali``: colpali-engine's ``BaseVisualRetrieverProcessor.score_multi_vector`` (lists of float16
  page tensors, zero-padded einsum in batches of 128).

- ``flash-maxsim`` (PyPI ``flash-maxsim``, a fused Triton MaxSim), where importable on a CUDA device: the
  same float16 pages as one padded (n_pages, 1030, 128) batch.

Prints a markdown table: ms per query, pages/s, GB/s of document bytes read, the fraction of the peak
memory bandwidth those bytes are (bytes touched / time / peak: ``--peak-gbs``, else the datasheet figure
of the GPU by name, else, on the CPU, a measured large-copy bandwidth), speed-up over the baselines.

    python bench/kernels.py                       # 10^3 and 10^4 pages, CPU
    python bench/kernels.py --pages 100000        # also 10^5 pages (compressed codecs only: fp16 is 26 GB)
    python bench/kernels.py --device cuda --sizes 100000   # Triton kernels on a GPU (fp16 fits there)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from patchseek.kernels import binary_maxsim, code_maxsim, hamming_maxsim, maxsim, pack_signs, sdc_maxsim

PATCHES, DIM = 1030, 128
FP16_PAGE_LIMIT = 20_000  # float16 pages above this would not fit in RAM next to everything else
# Datasheet peak memory bandwidth (GB/s) by GPU name fragment; --peak-gbs overrides.
PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L40S": 864.0, "L4": 300.0, "A10": 600.0}


@dataclass
class Row:
    size: int
    name: str
    bytes_per_page: int
    ms: float  # per query, median


def timed_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn`` in ms (synchronising CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def _gen_on(device: torch.device, gen: torch.Generator) -> tuple[torch.Generator, torch.device]:
    """Draw on the GPU itself there (10^5 pages of randn on the host would take minutes)."""
    if device.type == "cuda":
        return torch.Generator(device=device).manual_seed(int(gen.initial_seed())), device
    return gen, torch.device("cpu")


def random_pages_fp16(n_pages: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n_pages * PATCHES, DIM) float16 unit vectors, generated in slices to bound peak memory."""
    out = torch.empty(n_pages * PATCHES, DIM, dtype=torch.float16, device=device)
    g, where = _gen_on(device, gen)
    step = 256 * PATCHES
    for p0 in range(0, out.shape[0], step):
        block = torch.randn(min(step, out.shape[0] - p0), DIM, generator=g, device=where)
        out[p0 : p0 + block.shape[0]] = F.normalize(block, dim=1).to(device, torch.float16)
    return out


def random_bytes(n: int, width: int, gen: torch.Generator, device: torch.device) -> Tensor:
    g, where = _gen_on(device, gen)
    return torch.randint(0, 256, (n, width), generator=g, dtype=torch.uint8, device=where).to(device)


def peak_gbs(device: torch.device, override: float | None) -> tuple[float, str]:
    """Peak memory bandwidth in GB/s and where the figure comes from."""
    if override:
        return override, "--peak-gbs"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, gbs in PEAK_GBS.items():
            if key in name:
                return gbs, f"{name} datasheet"
        return float("nan"), f"{name}: unknown, pass --peak-gbs"
    src = torch.empty(1 << 28, dtype=torch.uint8)  # 256 MiB, far past the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() / min(times) / 1e9, "measured host copy (read + write)"


def flash_maxsim_scorer() -> Callable[[Tensor, Tensor], Tensor] | None:
    """flash-maxsim's fused kernel on padded (n_pages, PATCHES, DIM) float16 pages, where importable."""
    try:
        from flash_maxsim import flash_maxsim
    except Exception as exc:  # optional (GPU only): the table says why the row is missing
        print(f"flash-maxsim unavailable ({exc!r}); its row is left out", file=sys.stderr)
        return None

    def score(q: Tensor, pages: Tensor) -> Tensor:
        return flash_maxsim(q.half(), pages.view(-1, PATCHES, DIM))

    return score


def einsum_baseline(q: Tensor, pages: Tensor, batch: int = 1000) -> Tensor:
    """Exact padded MaxSim as colpali computes it: ``einsum("qd,npd->nqp")``, max over p, sum over q."""
    padded = pages.view(-1, PATCHES, DIM)  # (n_pages, PATCHES, DIM): equal lengths need no padding copy
    qd = q.to(pages.dtype)
    return torch.cat(
        [
            torch.einsum("qd,npd->nqp", qd, padded[i : i + batch]).amax(dim=2).float().sum(dim=1)
            for i in range(0, padded.shape[0], batch)
        ]
    )


def colpali_scorer() -> Callable[[list[Tensor], list[Tensor], str], Tensor] | None:
    try:
        import patchseek._compat as compat

        compat.ensure_torchvision()
        from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor
    except Exception as exc:  # an optional extra: the table says why the column is empty
        print(f"colpali-engine unavailable ({exc!r}); its column is left empty", file=sys.stderr)
        return None

    def score(qs: list[Tensor], ps: list[Tensor], device: str) -> Tensor:
        return BaseVisualRetrieverProcessor.score_multi_vector(qs, ps, batch_size=128, device=device)

    return score


@dataclass
class Case:
    name: str
    bytes_per_page: int
    fn: Callable[[], object]
    per_call: int = 1  # queries answered by one call
    times: list[float] = field(default_factory=list)


def bench_size(n_pages: int, args: argparse.Namespace, device: torch.device) -> list[Row]:
    """Time every score on ``n_pages`` pages, interleaving the cases run by run so that load from other
    processes on the machine hits every row alike (the ratios stay fair on a shared machine)."""
    gen = torch.Generator().manual_seed(n_pages)
    n_q = args.query_tokens
    offsets = (torch.arange(n_pages + 1, dtype=torch.int64) * PATCHES).to(device)  # (n_pages + 1,)
    n = n_pages * PATCHES
    q = F.normalize(torch.randn(n_q, DIM, generator=gen), dim=1).to(device)  # (n_q, DIM)
    cases: list[Case] = []

    fp16_limit = FP16_PAGE_LIMIT
    if device.type == "cuda":  # the fp16 pages, an int8 and (unless --no-fp32) an fp32 copy on the GPU
        per_page = PATCHES * DIM * (2 + 1 + (0 if args.no_fp32 else 4))
        fp16_limit = int(0.7 * torch.cuda.mem_get_info(device)[0] / per_page)
    if n_pages <= fp16_limit:
        pages = random_pages_fp16(n_pages, gen, device)  # (n, DIM) float16
        fp16_bytes = PATCHES * DIM * 2
        score = None if args.no_colpali else colpali_scorer()
        if score is not None:
            page_list = list(pages.view(n_pages, PATCHES, DIM).unbind(0))  # views, no copy
            q_list = [q.half()]
            cases.append(
                Case(
                    "colpali score_multi_vector fp16",
                    fp16_bytes,
                    lambda: score(q_list, page_list, str(device)),
                )
            )
        cases.append(Case("einsum fp16", fp16_bytes, lambda: einsum_baseline(q, pages)))
        flash = flash_maxsim_scorer() if device.type == "cuda" else None
        if flash is not None:
            cases.append(Case("flash-maxsim fp16", fp16_bytes, lambda: flash(q, pages)))
        if not args.no_fp32:
            pages32 = pages.float()  # (n, DIM) float32
            cases.append(Case("einsum fp32", PATCHES * DIM * 4, lambda: einsum_baseline(q, pages32)))
            cases.append(Case("maxsim fp32", PATCHES * DIM * 4, lambda: maxsim(q, pages32, offsets)))
        cases.append(Case("maxsim fp16", fp16_bytes, lambda: maxsim(q, pages, offsets)))
        qb = q.expand(args.batch, n_q, DIM).contiguous()  # (B, n_q, DIM)
        cases.append(
            Case(
                f"maxsim fp16, batch of {args.batch}",
                fp16_bytes,
                lambda: maxsim(qb, pages, offsets),
                args.batch,
            )
        )
        int8 = (pages * 127).round().to(torch.int8)  # (n, DIM): unit vectors, so |x| <= 1 (fp16 temp)
        scales = torch.full((n,), 1 / 127, device=device)
        cases.append(
            Case("maxsim int8 + scale", PATCHES * (DIM + 4), lambda: maxsim(q, int8, offsets, scales=scales))
        )

    n_bytes = DIM // 8
    bits = random_bytes(n, n_bytes, gen, device)  # (n, 16) sign bits
    q_bits = pack_signs(q)  # (n_q, 16)
    codes = random_bytes(n, 1, gen, device).view(-1)  # (n,) one k-means id per patch, K = 256
    lut = q @ torch.randn(256, DIM, generator=gen).to(device).T  # (n_q, K)
    pq = random_bytes(n, 16, gen, device)  # (n, M) PQ 16 x 256
    pq_lut = torch.randn(n_q, 16, 256, generator=gen).to(device)  # (n_q, M, K)
    bebr = random_bytes(n, 32, gen, device)  # (n, 32): 2 bits per dim, two 4-bit codes per byte
    q_bebr, table = random_bytes(n_q, 32, gen, device), torch.randn(16, 16, generator=gen).to(device)
    cases += [
        Case(
            "hamming_maxsim 1 bit/dim",
            PATCHES * n_bytes,
            lambda: hamming_maxsim(q_bits, bits, offsets, dim=DIM),
        ),
        Case("binary_maxsim fp32 x 1 bit/dim", PATCHES * n_bytes, lambda: binary_maxsim(q, bits, offsets)),
        Case("code_maxsim k-means K=256", PATCHES, lambda: code_maxsim(lut, codes, offsets)),
        Case("code_maxsim PQ 16x256", PATCHES * 16, lambda: code_maxsim(pq_lut, pq, offsets)),
        Case("sdc_maxsim BEBR 2 bits/dim", PATCHES * 32, lambda: sdc_maxsim(q_bebr, bebr, offsets, table)),
    ]

    for case in cases:  # warm-up; a call slower than a second has nothing left to warm and counts
        first = timed_once(case.fn, device) / case.per_call
        if first * case.per_call > 1000:
            case.times.append(first)
    for run in range(args.repeats):
        for case in cases:
            if len(case.times) < args.repeats:
                case.times.append(timed_once(case.fn, device) / case.per_call)
        print(f"  {n_pages:>7} pages: run {run + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    rows = [Row(n_pages, c.name, c.bytes_per_page, statistics.median(c.times)) for c in cases]
    cases.clear()
    gc.collect()
    return rows


def markdown(rows: list[Row], peak: float) -> str:
    lines = [
        "| pages | score | bytes/page | ms/query | pages/s | GB/s read | of peak "
        "| vs einsum fp16 | vs einsum fp32 | vs colpali | vs flash-maxsim |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(base: float | None, ms: float) -> str:
        return "-" if base is None else f"{base / ms:.2f}x"

    for size in sorted({r.size for r in rows}):
        group = [r for r in rows if r.size == size]
        ref = {r.name: r.ms for r in group}
        colpali = next((r.ms for r in group if r.name.startswith("colpali")), None)
        for r in group:
            pages_s = size / (r.ms / 1e3)
            gbs = size * r.bytes_per_page / (r.ms / 1e3) / 1e9  # bytes touched: the documents' bytes
            lines.append(
                f"| {size:,} | {r.name} | {r.bytes_per_page:,} | {r.ms:.2f} | {pages_s:,.0f} | {gbs:.2f} "
                f"| {gbs / peak:.0%} "
                f"| {ratio(ref.get('einsum fp16'), r.ms)} | {ratio(ref.get('einsum fp32'), r.ms)} "
                f"| {ratio(colpali, r.ms)} | {ratio(ref.get('flash-maxsim fp16'), r.ms)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, nargs="*", default=[], help="extra sizes, e.g. 100000")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000], help="base sizes")
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="queries per call in the batched row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth, GB/s")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-colpali", action="store_true")
    parser.add_argument("--no-fp32", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak, source = peak_gbs(device, args.peak_gbs)
    print(
        f"<!-- {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, device {device}, {args.query_tokens} query tokens, "
        f"peak {peak:,.0f} GB/s ({source}) -->"
    )
    for i, size in enumerate(sorted({*args.sizes, *args.pages})):
        table = markdown(bench_size(size, args, device), peak)
        print(table if i == 0 else "\n".join(table.splitlines()[2:]), flush=True)  # one table, row by row


if __name__ == "__main__":
    main()
