"""Ingest (render + encode + write) throughput: the single-process path against Ray Data on 1 and 2 nodes.

One run, three rows, each on a fresh data dir and the same generated PDFs (``--docs`` documents of
``--pages`` letter pages of text, rendered at ``PATCHSEEK_PDF_DPI`` 100, lexical encoder, OCR off):

- ``single process``: ``IngestService.run_job`` as the CLI and the worker run it;
- ``ray, 1 node`` / ``ray, 2 nodes``: a local cluster started with ``ray start`` (``--cpus`` logical
  CPUs per node, the tests' launcher ``tests/ray/conftest.start_local_cluster``), this process its
  driver; one warm-up job of 8 other documents (worker processes start and import torch once per
  driver), then the timed job: ``run_job(..., ray_address=...)``.

pages/s is the job's pages over its wall time (publish and database commit included; cluster start
excluded). Also: the 1-minute load average before and after each row, this process's peak RSS
(lifetime), and the sum of the cluster processes' peak RSS (``VmHWM``) at the end of the row.

    python bench/ray_encode.py                    # 48 documents x 4 pages
    python bench/ray_encode.py --write-docs       # also write the section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchseek.api.services import CollectionService, IngestService, ServiceContext  # noqa: E402
from patchseek.config import Settings  # noqa: E402
from tests.ray.conftest import start_local_cluster  # noqa: E402

SECTION = "## Distributed ingest on Ray Data (one machine)"


def write_pdfs(folder: Path, n: int, pages: int, prefix: str) -> list[Path]:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        pdf = canvas.Canvas(buf, pagesize=letter, invariant=1)
        for page in range(pages):
            for line in range(30):
                words = " ".join(f"{prefix}{i}w{(i * 31 + page * 7 + line * 3 + k) % 997}" for k in range(9))
                pdf.drawString(40, 740 - 22 * line, words)
            pdf.showPage()
        pdf.save()
        path = folder / f"{prefix}{i:04d}.pdf"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def run_job(ctx: ServiceContext, files: list[Path], address: str | None) -> tuple[int, float]:
    CollectionService(ctx).create("bench", exist_ok=True)
    service = IngestService(ctx)
    job = service.submit("bench", [(p.name, p.read_bytes()) for p in files], status="running")
    start = time.perf_counter()
    job = service.run_job(job.id, ray_address=address)
    seconds = time.perf_counter() - start
    assert job.status == "succeeded", job.result
    return job.units_done, seconds


def peak_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def row(
    mode: str, ctx: ServiceContext, files: list[Path], address: str | None, cluster: Any
) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    pages, seconds = run_job(ctx, files, address)
    load1 = os.getloadavg()[0]
    return {
        "mode": mode,
        "pages": pages,
        "seconds": seconds,
        "pages_s": pages / seconds,
        "load": f"{load0:.1f} → {load1:.1f}",
        "driver_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cluster_mib": peak_rss_mib(cluster.pids()) if cluster is not None else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=1, help="logical CPUs per Ray node")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray-encode-"))
    files = write_pdfs(tmp / "pdfs", args.docs, args.pages, "d")
    warm = write_pdfs(tmp / "warm", 8, 1, "w")
    os.environ["PATCHSEEK_OCR"] = "false"

    def context(name: str, docs_per_segment: int) -> ServiceContext:
        settings = Settings(
            data_dir=tmp / name,
            ocr=False,
            pdf_dpi=100,
            worker_in_process=False,
            ray_docs_per_segment=docs_per_segment,
        )
        return ServiceContext.from_settings(settings)

    rows = []
    ctx = context("single", args.docs)
    rows.append(row("single process", ctx, files, None, None))
    ctx.close()
    for nodes in (1, 2):
        cluster = start_local_cluster(tmp / f"ray{nodes}", nodes=nodes, cpus=args.cpus)
        try:
            ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
            ctx = context(f"ray{nodes}", max(1, args.docs // (2 * nodes)))
            run_job(ctx, warm, "auto")
            rows.append(
                row(
                    f"ray, {nodes} node{'s' if nodes > 1 else ''} x {args.cpus} CPU",
                    ctx,
                    files,
                    "auto",
                    cluster,
                )
            )
            ctx.close()
        finally:
            ray.shutdown()
            cluster.stop()

    header = (
        "Produced by "
        f"`python bench/ray_encode.py --docs {args.docs} --pages {args.pages} --cpus {args.cpus}` "
        f"(one run). {platform.machine()} with {os.cpu_count()} cores shared with other work: every row "
        "runs on the same two physical cores, so a second Ray node adds Ray scheduling parallelism and "
        "process overhead, not hardware. Lexical encoder, OCR off, letter pages of 30 text lines at "
        f"100 dpi; Ray {ray.__version__}, cluster start excluded, one warm-up job per cluster.\n"
    )
    table = [
        "| mode | pages | seconds | pages/s | load avg (1 min) before → after | driver peak RSS (MiB) "
        "| cluster peak RSS, sum (MiB) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['mode']} | {r['pages']} | {r['seconds']:.1f} | {r['pages_s']:.2f} | {r['load']} "
            f"| {r['driver_mib']:,.0f} | {r['cluster_mib']:,.0f} |"
        )
    text = header + "\n" + "\n".join(table) + "\n"
    print(text)
    if args.write_docs:
        path = ROOT / "docs" / "BENCHMARKS.md"
        doc = path.read_text()
        if SECTION in doc:
            start = doc.index(SECTION)
            end = doc.find("\n## ", start + len(SECTION))
            doc = doc[:start] + doc[end + 1 :] if end != -1 else doc[:start]
        path.write_text(doc.rstrip("\n") + f"\n\n{SECTION}\n\n{text}")


if __name__ == "__main__":
    main()
