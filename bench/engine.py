"""Search at scale through the code path the service runs: the index engine.

Synthetic ColPali-shaped pages (``bench/synthetic.py``: 1030 patches × 128-d per page) are indexed the way
an ingest job indexes a document's bags (``UnitBatch`` → ``IndexEngine.write`` → ``IndexEngine.publish``,
which fits the stage-1 state once the rule holds and derives coarse ids and dense rows at write time),
merged by the engine's tiered policy, and queried through ``Snapshot.search`` — the call
``SearchService.search`` makes, unchanged. Brute force is the same snapshot searched with
``stage1="exact"`` (exact MaxSim of every page), in the same run.

Reported: index-side ingest throughput (pages/s after the encoder), recall@10 of the default search
against brute force, p50/p95 latency and the speed-up, freshness (a 10-page document added to the large
collection: publish → searchable, and the query latency around it), bytes per page on disk and in RAM,
peak RSS and the machine's load.

    python bench/engine.py --pages 10000 --queries 30
    python bench/engine.py --pages 10000 --device cuda --compression '{"quantizer": "pq"}'

``--device cuda`` runs the engine's device path (resident stage-1/2 data, Triton kernels) and adds the
per-stage p50 times and the brute-force scan's achieved fraction of the peak memory bandwidth (bytes of
the scanned part / time / ``--peak-gbs``, else the GPU's datasheet figure), beside the CPU figures of a
``--device cpu`` run.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import SyntheticCorpus  # noqa: E402

from patchseek.indexer.compress import CompressionConfig  # noqa: E402
from patchseek.search.engine import IndexEngine, UnitBatch  # noqa: E402

PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L40S": 864.0, "L4": 300.0, "A10": 600.0}


def batch_of(corpus: SyntheticCorpus, start: int, stop: int, doc_base: int = 0) -> UnitBatch:
    pages = [corpus.page(p) for p in range(start, stop)]
    n = stop - start
    lengths = np.array([p.vectors.shape[0] for p in pages], dtype=np.int64)
    rows = int(lengths.sum())
    return UnitBatch(
        doc_ids=np.arange(doc_base + start, doc_base + stop, dtype=np.int64),
        ordinals=np.zeros(n, np.int32),
        media=np.zeros(n, np.int8),
        lengths=lengths,
        vectors=np.concatenate([p.vectors for p in pages]).astype(np.float16),
        positions=np.zeros((rows, 2), np.int16),
        salience=np.concatenate([p.salience for p in pages]).astype(np.float16),
    )


def memory_status() -> dict[str, int]:
    """This process's RssAnon / RssFile / VmHWM in KiB (Linux ``/proc/self/status``)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--job-pages", type=int, default=500, help="pages per ingest job (one segment each)")
    ap.add_argument("--brute-queries", type=int, default=1000, help="queries also run by brute force")
    ap.add_argument("--compression", default="{}", help="JSON compression config")
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--fit-at-end",
        action="store_true",
        help="fit the state once on the whole collection (what the refit rebuild gives) instead of at the "
        "first publish that satisfies the rule",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (the engine's device path)")
    ap.add_argument("--kernels", default="auto", help="auto, torch or triton")
    ap.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth, GB/s")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    import json

    config = CompressionConfig.from_dict(json.loads(args.compression))
    corpus = SyntheticCorpus(args.pages)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-engine-")) / "v1"
    engine = IndexEngine(root, corpus.dim, config, device=args.device, kernels=args.kernels)
    peak = args.peak_gbs
    if peak is None and engine.plan.device.type == "cuda":
        name = torch.cuda.get_device_name(engine.plan.device)
        peak = next((v for k, v in PEAK_GBS.items() if k in name), None)
    index_s = gen_s = 0.0
    for start in range(0, args.pages, args.job_pages):
        t0 = time.perf_counter()
        batch = batch_of(corpus, start, min(args.pages, start + args.job_pages))
        t1 = time.perf_counter()
        engine.publish([engine.write(batch)], fit=not args.fit_at_end)
        engine.maybe_merge()
        t2 = time.perf_counter()
        gen_s += t1 - t0
        index_s += t2 - t1
        print(f"  indexed {min(args.pages, start + args.job_pages)} pages, {index_s:.0f} s", flush=True)
    if args.fit_at_end:
        t1 = time.perf_counter()
        engine.fit()
        engine.maybe_merge()
        index_s += time.perf_counter() - t1
    refit_due = engine.needs_refit()
    snap = engine.snapshot()
    queries, _ = corpus.queries(args.queries)
    snap.search(queries[0])  # load the dense rows once
    stats = snap.stats()
    snap.search(queries[0], stage1="exact")  # and the brute-force scan's parts (on the device path)
    stats = snap.stats()
    lat, lat_exact, recall = [], [], []
    stage_ms: dict[str, list[float]] = {}
    kind = snap.stage1_kind()
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        result = snap.search(q, top_k_hits=10)
        hits = result.hits
        lat.append((time.perf_counter() - t0) * 1000)
        for stage, ms in result.timings_ms.items():
            stage_ms.setdefault(stage, []).append(ms)
        if i >= args.brute_queries:
            continue
        t0 = time.perf_counter()
        exact = snap.search(q, top_k_hits=10, stage1="exact").hits
        lat_exact.append((time.perf_counter() - t0) * 1000)
        recall.append(len({h.doc_id for h in hits} & {h.doc_id for h in exact}) / 10)
    status = memory_status()
    # Freshness: one client searches without pause while a writer thread adds a 10-page document. The
    # writer, once its publish returned (the commit), searches for the document at once: commit -> the
    # answer of a search issued at commit. The client, meanwhile, searches for it until the first search
    # that started after the commit finds it: commit -> searchable as a busy client sees it (up to one
    # search late).
    extra = SyntheticCorpus(10, seed=99)
    probe = extra.queries(1)[0][0]
    published: list[float] = []
    issued_at_commit: list[float] = []

    def add_document() -> None:
        time.sleep(2.0)
        t0 = time.perf_counter()
        name = engine.write(batch_of(extra, 0, 10, doc_base=10_000_000))
        t1 = time.perf_counter()
        engine.publish([name])
        t2 = time.perf_counter()
        published.extend([t0, t1, t2])
        hits = engine.snapshot().search(probe, top_k_hits=10).hits
        found = any(h.doc_id >= 10_000_000 for h in hits)
        issued_at_commit.append(time.perf_counter() - t2 if found else float("nan"))

    writer = threading.Thread(target=add_document)
    during: list[float] = []
    visible_at = None
    writer.start()
    window_end = time.perf_counter() + 3600.0
    i = 0
    while time.perf_counter() < window_end:
        looking = bool(published) and visible_at is None
        q = probe if looking else queries[i % len(queries)]
        t0 = time.perf_counter()
        hits = engine.snapshot().search(q, top_k_hits=10).hits
        t1 = time.perf_counter()
        during.append((t1 - t0) * 1000)
        i += 1
        if looking and t0 >= published[2]:
            if any(h.doc_id >= 10_000_000 for h in hits):
                visible_at = t1
                window_end = t1 + max(3.0, 3 * (t1 - t0))
    writer.join()
    t_start, t_written, t_published = published
    t_visible = visible_at if visible_at is not None else float("nan")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load = os.getloadavg()
    p50, p95 = pct(lat, 50), pct(lat, 95)
    # The brute-force scan reads every unit's codes (with a codec) or float rows once per query.
    scanned = stats["disk_bytes"].get("codes") or stats["disk_bytes"].get("vectors", 0)
    scan_gbs = scanned / (pct(lat_exact, 50) / 1000) / 1e9 if lat_exact else float("nan")
    device_rows = [
        ("device", f"{stats['device'] or 'cpu'} (kernels={args.kernels})"),
        ("device-resident bytes", json.dumps(stats["device_bytes"])),
        (
            "p50 per stage (default search)",
            ", ".join(f"{k} {pct(v, 50):.2f} ms" for k, v in stage_ms.items()),
        ),
        (
            "brute-force scan: GB/s of the scanned part (of peak)",
            f"{scan_gbs:.2f}" + (f" ({scan_gbs / peak:.0%} of {peak:,.0f} GB/s)" if peak else ""),
        ),
    ]
    rows = [
        *device_rows,
        ("pages", f"{args.pages}"),
        ("compression", config.describe()),
        ("segments after merges", f"{stats['segments']}"),
        ("index-side ingest (after the encoder)", f"{args.pages / index_s:.1f} pages/s ({index_s:.0f} s)"),
        ("fit", json.dumps(stats["fit"])),
        ("refit due (8x growth)", str(refit_due)),
        ("stage 1 (auto)", kind),
        ("recall@10 vs brute force", f"{np.mean(recall):.3f} ({len(recall)} queries)"),
        ("p50 / p95 (default)", f"{p50:.0f} / {p95:.0f} ms"),
        ("p50 brute force (stage1=exact)", f"{pct(lat_exact, 50):.0f} ms ({len(lat_exact)} queries)"),
        ("speed-up at p50", f"{pct(lat_exact, 50) / p50:.1f}x"),
        ("freshness: write 10 pages (segment file)", f"{(t_written - t_start) * 1000:.0f} ms"),
        ("freshness: publish (manifest swap)", f"{(t_published - t_written) * 1000:.0f} ms"),
        ("freshness: commit -> answer of a search issued at commit", f"{issued_at_commit[0] * 1000:.0f} ms"),
        ("freshness: commit -> found by the busy client", f"{(t_visible - t_published) * 1000:.0f} ms"),
        ("p50 / p95 during the add", f"{pct(during, 50):.0f} / {pct(during, 95):.0f} ms ({len(during)})"),
        ("disk bytes per page", f"{stats['disk_bytes_per_unit']:,.0f}"),
        ("RAM bytes per page (dense rows, lists)", f"{stats['ram_bytes_per_unit']:,.0f}"),
        ("peak RSS (file-backed maps included)", f"{peak_gib:.1f} GiB"),
        (
            "RSS after the searches: anonymous / file-backed",
            f"{status['RssAnon'] / 2**20:.1f} / {status['RssFile'] / 2**20:.1f} GiB",
        ),
        (
            "load average (1/5/15 min)",
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} CPUs",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
