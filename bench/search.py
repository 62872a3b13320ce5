"""Search at scale: the three-stage retriever against brute-force exact MaxSim, in one run.

Usage::

    python bench/search.py --pages 10000 --write-docs    # the table in docs/BENCHMARKS.md
    python bench/search.py --pages 100000 --queries 20   # vectors streamed to disk, memory-mapped

Builds a synthetic ColPali-shaped corpus (``bench/synthetic.py``, 1030 × 128 patches per page) page chunk
by page chunk into packed segments on disk (``SegmentWriter``, memory-mapped, never all in RAM):

- ``full``: every patch's float16 vector, read only by stage 3 for the shortlist;
- ``pooled``: each page's patches pooled per nearest k-means centroid (``pool_by_centroid``; K centroids
  fitted with FAISS on a 65,536-row sample spread over every page, K = ``default_n_centroids`` as in the
  service: 4,096 at 10^3 pages, 16,384 at 10^4), float16, with the centroid id as the row's code;
- ``dense``: each page's pooled rows merged by Ward clustering into ``--dense-rows`` (96) summary rows
  (``summarize_units``), held in RAM as bfloat16 (float32 on CPUs without bfloat16 dot products).

This is what ``SearchService`` runs for a collection without a codec once it holds ``EXACT_THRESHOLD``
(2,000) units or more, with the same defaults (``stage1_k=1000``, ``candidates=100``): stage 1 scans
every page's dense rows (``DenseCandidateGenerator``), whose scores pick the ``candidates`` shortlist;
stage 3 is exact MaxSim on the full float16 rows of the shortlist.

The other configurations are the previous default and its variants: stage 1 through
``FaissCandidateGenerator`` over the centroid ids (PLAID-style inverted lists, ``nprobe=32``; each probed
entry scored by its pooled row, ``use_entry_vectors``), stage 2 MaxSim on the pooled float16 rows of the
``stage1_k`` candidates, stage 3 as above; and the exhaustive scan of the pooled rows.

For each configuration it prints one JSON line:

- ``pages``, ``bytes_per_page``: the RAM per page that the configuration scans (dense rows; or pooled
  rows + ids + inverted lists + centroids); ``disk_bytes_per_page``: the float16 rerank copy
  (263,680 B), read only for the shortlist;
- ``p50_ms``, ``p95_ms``, ``qps`` (one query at a time, after two warm-up queries);
- ``recall_at_10`` against the exact float MaxSim top 10 over the stored (float16) vectors;
- ``exact_p50_ms``: brute-force exact MaxSim (``patchseek.kernels.maxsim``) over every page, streamed
  from the same memory-mapped file in 128-page chunks, timed in the same run; ``speedup`` =
  ``exact_p50_ms / p50_ms``.

The exact top 10 of every query comes from one batched pass over the vectors (all queries at once); the
timed brute-force queries are checked against it.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import SyntheticCorpus  # noqa: E402

from patchseek.indexer.compress import CompressionConfig, Compressor, KMeansQuantizer  # noqa: E402
from patchseek.kernels import maxsim  # noqa: E402
from patchseek.search import (  # noqa: E402
    FaissCandidateGenerator,
    MultiStageRetriever,
    SearchParams,
    SegmentWriter,
    UnitVectors,
)
from patchseek.search.candidates import default_n_centroids, pool_by_centroid  # noqa: E402
from patchseek.search.dense import DEFAULT_ROWS, DenseCandidateGenerator, summarize_units  # noqa: E402
from patchseek.search.segments import Segment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Search at scale"
K = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class MemoryWatch:
    """Peak anonymous memory of this process, sampled every ``interval`` s from /proc/self/status.

    ``ru_maxrss`` also counts the pages of memory-mapped segment files that were read, which the kernel
    drops under pressure; the anonymous part (``RssAnon``: arrays, tensors, indexes) is what must fit.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.peak_anon_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def sample(self) -> None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_anon_kib = max(self.peak_anon_kib, int(line.split()[1]))
        except OSError:  # not Linux: only ru_maxrss is reported
            self._stop.set()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def stop(self) -> float:
        """Stop sampling; the peak in GiB."""
        self.sample()
        self._stop.set()
        return self.peak_anon_kib / 2**20


def _summarize(path: str, start: int, stop: int, n_rows: int) -> np.ndarray:
    """Summary rows (stop - start, n_rows, dim) of pooled units ``start:stop`` (run in a worker)."""
    seg = Segment.open(path)
    a, b = int(seg.offsets[start]), int(seg.offsets[stop])
    return summarize_units(np.asarray(seg.vectors[a:b]), np.diff(seg.offsets[start : stop + 1]), n_rows)


def build_dense(pooled_seg: Segment, n_rows: int, chunk_pages: int, workers: int) -> DenseCandidateGenerator:
    """The dense stage-1 rows: each page's pooled rows merged by Ward into ``n_rows`` means, in
    ``workers`` processes (Ward clustering is single-threaded)."""
    spans = [(s, min(pooled_seg.n_units, s + chunk_pages)) for s in range(0, pooled_seg.n_units, chunk_pages)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(_summarize, str(pooled_seg.path), s, e, n_rows) for s, e in spans]
        parts = [job.result() for job in jobs]
    return DenseCandidateGenerator(np.concatenate(parts), np.diff(pooled_seg.offsets) > 0)


def build(corpus: SyntheticCorpus, workdir: Path, k_centroids: int, chunk_pages: int, dense_rows: int):  # noqa: ANN201
    """Fit the centroids, stream the corpus into two segments, build the FAISS lists.

    Segment ``full``: every patch's float16 vector (stage 3), written first while a sample of rows from
    every page is kept for fitting the centroids. Segment ``pooled``, from a second pass over ``full``:
    each page's patches pooled per assigned centroid (``pool_by_centroid``), float16, with the centroid
    id of each pooled row as its code (stage 2, and the inverted lists of stage 1).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(corpus.seed)
    per_page = max(1, -(-65536 // corpus.pages))  # sample rows per page: ~64k rows over every page
    full = SegmentWriter(workdir, "full", corpus.dim)
    samples = []
    try:
        for i, chunk in enumerate(corpus.chunks(chunk_pages)):
            half = chunk.astype(np.float16)  # (n_rows, dim): what is stored and scored exactly
            n_pages = chunk.shape[0] // corpus.patches
            full.append(half, np.full(n_pages, corpus.patches, dtype=np.int64))
            picks = (
                rng.integers(0, corpus.patches, size=(n_pages, per_page))
                + corpus.patches * np.arange(n_pages)[:, None]
            )
            samples.append(half[picks.ravel()])
            if i % 8 == 0:
                done = min(corpus.pages, (i + 1) * chunk_pages)
                log(f"  {done}/{corpus.pages} pages written ({time.perf_counter() - t0:.0f} s)")
        segment = full.commit()
    except BaseException:
        full.abort()
        raise
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample = np.concatenate(samples).astype(np.float32)  # (n_sample, dim), spread over every page
    centroids = FaissCandidateGenerator.fit_centroids(sample, k_centroids, n_iter=8)
    fit_s = time.perf_counter() - t0
    log(f"full segment written in {write_s:.0f} s; {k_centroids} centroids fitted in {fit_s:.1f} s")
    t0 = time.perf_counter()
    pooled_w = SegmentWriter(workdir, "pooled", corpus.dim, code_dtype=np.dtype("<u2"))
    try:
        for s in range(0, segment.n_units, chunk_pages):
            e = min(segment.n_units, s + chunk_pages)
            half = np.asarray(
                segment.vectors[int(segment.offsets[s]) : int(segment.offsets[e])]
            )  # (rows, dim)
            # Nearest centroid through FAISS's IVF over the centroids (approximate for K > 1024): the
            # exhaustive assignment of 10^7 patches to 4096 centroids does not fit a CPU budget.
            ids = FaissCandidateGenerator.assign(half, centroids)  # (rows,)
            pooled, pooled_ids, pooled_lengths = pool_by_centroid(
                half, ids, np.diff(segment.offsets[s : e + 1])
            )
            pooled_w.append(pooled, pooled_lengths, codes=pooled_ids.astype("<u2"))
        pooled_seg = pooled_w.commit()
    except BaseException:
        pooled_w.abort()
        raise
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    per = chunk_pages

    def assignments():  # noqa: ANN202
        lengths = np.diff(pooled_seg.offsets)
        for s in range(0, pooled_seg.n_units, per):
            a, b = int(pooled_seg.offsets[s]), int(pooled_seg.offsets[min(pooled_seg.n_units, s + per)])
            yield np.asarray(pooled_seg.codes[a:b]), lengths[s : s + per]

    generator = FaissCandidateGenerator.from_assignments(centroids, assignments())
    generator.use_entry_vectors(pooled_seg.vectors)  # stage 1 scores the probed pooled rows
    ivf_s = time.perf_counter() - t0
    by_centroid = FaissCandidateGenerator.from_assignments(centroids, assignments())  # centroid sims only
    log(f"pooled segment written in {encode_s:.0f} s, inverted lists built in {ivf_s:.1f} s")
    codec = Compressor(CompressionConfig())  # float16 codes: the pooled vectors are scored as stored
    codec.quantizer.fit(np.asarray(pooled_seg.vectors[:1], dtype=np.float32))
    # The same index read as plain k-means codes (PLAID's centroid interaction, no residuals), for
    # comparison: stage 2 sees only each page's set of centroid ids.
    kmeans = Compressor(CompressionConfig(quantizer="kmeans", kmeans_k=int(centroids.shape[0])))
    kmeans.quantizer = KMeansQuantizer(int(centroids.shape[0]))
    kmeans.quantizer.centroids, kmeans.quantizer.dim = centroids, corpus.dim
    t0 = time.perf_counter()
    dense_gen = build_dense(pooled_seg, dense_rows, chunk_pages, workers=max(1, torch.get_num_threads()))
    dense_s = time.perf_counter() - t0
    log(f"dense rows ({dense_rows} per page, {dense_gen.rows.dtype}) built in {dense_s:.0f} s")

    def over_pages(
        compressor: Compressor, codes: np.ndarray, generator: FaissCandidateGenerator, **kwargs: object
    ) -> MultiStageRetriever:
        """A retriever over the full float16 pages, stage 2 on ``codes`` laid out like the pooled rows."""
        return MultiStageRetriever(
            UnitVectors.packed(segment.vectors, segment.offsets),
            compressor=compressor,
            codes=codes,
            code_offsets=pooled_seg.offsets,
            generator=generator,
            **kwargs,  # type: ignore[arg-type]
        )

    retriever = over_pages(codec, pooled_seg.vectors, generator)
    by_ids = over_pages(kmeans, pooled_seg.codes, by_centroid)
    centroid_stage1 = over_pages(codec, pooled_seg.vectors, by_centroid)
    dense = over_pages(codec, pooled_seg.vectors, generator, dense=dense_gen)
    info = {
        "k": k_centroids,
        "write_s": write_s,
        "fit_s": fit_s,
        "encode_s": encode_s,
        "ivf_s": ivf_s,
        "dense_s": dense_s,
        "dense_rows": dense_rows,
        "dense_bytes": dense_gen.nbytes,
    }
    return (dense, retriever, by_ids, centroid_stage1), segment, pooled_seg, generator, info


def exact_scores(segment, queries: list[torch.Tensor], chunk_pages: int) -> np.ndarray:  # noqa: ANN001
    """Exact MaxSim (n_queries, n_pages) of every query, one batched pass over the stored vectors."""
    n_max = max(q.shape[0] for q in queries)
    batch = torch.zeros(len(queries), n_max, queries[0].shape[1])  # (B, n_max, dim) zero-padded
    q_mask = torch.zeros(len(queries), n_max, dtype=torch.bool)  # (B, n_max)
    for i, q in enumerate(queries):
        batch[i, : q.shape[0]], q_mask[i, : q.shape[0]] = q, True
    out = np.empty((len(queries), segment.n_units), dtype=np.float32)
    for s in range(0, segment.n_units, chunk_pages):
        e = min(segment.n_units, s + chunk_pages)
        a, b = int(segment.offsets[s]), int(segment.offsets[e])
        docs = torch.from_numpy(np.ascontiguousarray(segment.vectors[a:b]))  # (rows, dim) float16
        off = torch.from_numpy(segment.offsets[s : e + 1] - a)
        out[:, s:e] = maxsim(batch, docs, off, q_mask=q_mask).numpy()  # (B, e - s)
    return out


def brute_force(segment, query: torch.Tensor, chunk_pages: int) -> np.ndarray:  # noqa: ANN001
    """One query's exact top 10 by scanning every page (the baseline being timed)."""
    scores = []
    for s in range(0, segment.n_units, chunk_pages):
        e = min(segment.n_units, s + chunk_pages)
        a, b = int(segment.offsets[s]), int(segment.offsets[e])
        docs = torch.from_numpy(np.ascontiguousarray(segment.vectors[a:b]))  # (rows, dim) float16
        scores.append(maxsim(query, docs, torch.from_numpy(segment.offsets[s : e + 1] - a)))
    return torch.topk(torch.cat(scores), K).indices.numpy()


def top10(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:K]


def run_config(
    name: str,
    retriever: MultiStageRetriever,
    params: SearchParams,
    queries: list[torch.Tensor],
    truth: list[set[int]],
) -> dict:
    for q in queries[:2]:
        retriever.search(q, params)
    lat, rec = [], []
    stages: dict[str, list[float]] = {}
    for q, t in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        res = retriever.search_detailed(q, params)
        lat.append((time.perf_counter() - t0) * 1000)
        rec.append(len({h.unit_id for h in res.hits} & t) / K)
        for k, v in res.timings_ms.items():
            stages.setdefault(k, []).append(v)
    return {
        "config": name,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "qps": float(1000.0 / np.mean(lat)),
        "recall_at_10": float(np.mean(rec)),
        "stage_p50_ms": {k: round(float(np.median(v)), 2) for k, v in stages.items()},
        "params": {
            "stage1": params.stage1,
            "stage1_k": params.stage1_k,
            "nprobe": params.nprobe,
            "candidates": params.candidates,
            "rerank": params.rerank,
        },
    }


def configs(  # type: ignore[type-arg]
    default: SearchParams,
    dense: MultiStageRetriever,
    pooled: MultiStageRetriever,
    kmeans: MultiStageRetriever,
    centroid: MultiStageRetriever,
) -> list:
    """(name, retriever, params) of every measured configuration; the first is the default."""
    ivf = replace(default, stage1="faiss")
    return [
        ("default: dense scan → exact", dense, default),
        ("dense, candidates/2", dense, replace(default, candidates=max(10, default.candidates // 2))),
        ("dense, candidates×2", dense, replace(default, candidates=2 * default.candidates)),
        ("dense, no rerank", dense, replace(default, rerank=False)),
        ("IVF → pooled fp16 → exact", pooled, ivf),
        ("IVF nprobe/2", pooled, replace(ivf, nprobe=max(1, (default.nprobe or 32) // 2))),
        ("IVF nprobe×2", pooled, replace(ivf, nprobe=2 * (default.nprobe or 32))),
        ("IVF stage1_k/2", pooled, replace(ivf, stage1_k=default.stage1_k // 2)),
        ("IVF stage1_k×2", pooled, replace(ivf, stage1_k=2 * default.stage1_k)),
        ("IVF candidates/2", pooled, replace(ivf, candidates=max(10, default.candidates // 2))),
        ("IVF no rerank", pooled, replace(ivf, rerank=False)),
        ("scan all pooled (stage1 exact)", pooled, replace(ivf, stage1="exact")),
        ("IVF, stage 1 on centroid sims only", centroid, ivf),
        ("IVF → k-means ids (centroid interaction) → exact 400", kmeans, replace(ivf, candidates=400)),
    ]


def write_docs(command: str, rows: list[dict], build_info: dict, notes: list[str]) -> None:
    """Replace (or add) the ``## Search at scale: N pages`` section of docs/BENCHMARKS.md, keeping the
    others (one section per corpus size)."""
    heading = f"{SECTION}: {rows[0]['pages']:,} pages"
    lines = [
        heading,
        "",
        f"Produced by `{command}` (seeded; CPU, {torch.get_num_threads()} torch threads, shared machine).",
        "",
        f"Build: generate + write the float16 segment {build_info['write_s']:.0f} s, fit "
        f"{build_info['k']} centroids {build_info['fit_s']:.0f} s, assign + pool + write "
        f"{build_info['encode_s']:.0f} s, inverted lists {build_info['ivf_s']:.0f} s, dense rows "
        f"({build_info['dense_rows']} per page) {build_info['dense_s']:.0f} s. Peak memory of the whole "
        f"run: {build_info['peak_anon_gib']:.1f} GiB anonymous (arrays, tensors, indexes), "
        f"{build_info['peak_rss_gib']:.1f} GiB resident with the pages of the memory-mapped segment files "
        "it read (dropped by the kernel under pressure). "
        "Recall is against the exact float MaxSim top 10 over "
        "the stored float16 vectors; `exact p50` is brute-force MaxSim over every page, streamed from the "
        "same memory-mapped file, in the same run.",
        "",
        "| config | pages | bytes/page (RAM) | p50 ms | p95 ms | QPS | recall@10 | exact p50 ms | speedup | "
        "stage p50 ms (1/2/3) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        st = r["stage_p50_ms"]
        stage_txt = " / ".join(f"{st[k]:.1f}" for k in ("stage1", "stage2", "stage3") if k in st)
        lines.append(
            f"| {r['config']} | {r['pages']:,} | {r['bytes_per_page']:,.0f} | {r['p50_ms']:.1f} | "
            f"{r['p95_ms']:.1f} | {r['qps']:.1f} | {r['recall_at_10']:.3f} | {r['exact_p50_ms']:.0f} | "
            f"{r['speedup']:.1f}× | {stage_txt} |"
        )
    lines += ["", *notes, ""]
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start == -1:
        new = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    else:
        nxt = text.find("\n## ", start + len(heading))
        new = text[:start] + "\n".join(lines) + ("" if nxt == -1 else text[nxt:])
    DOCS.write_text(new.rstrip("\n") + "\n")
    log(f"wrote {DOCS}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--patches", type=int, default=1030)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--exact-queries", type=int, default=5, help="queries timed by brute force")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--centroids", type=int, default=None, help="IVF centroids (default: the service's, by corpus size)"
    )
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--stage1-k", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--chunk-pages", type=int, default=128)
    parser.add_argument("--dense-rows", type=int, default=DEFAULT_ROWS, help="dense stage-1 rows per page")
    parser.add_argument("--only-default", action="store_true", help="run the default configuration only")
    parser.add_argument("--first", type=int, default=None, help="run only the first N configurations")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/patchseek-bench-search"))
    parser.add_argument("--keep", action="store_true", help="keep the segment files afterwards")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    free = shutil.disk_usage(args.workdir.parent if args.workdir.parent.exists() else "/").free
    need = args.pages * args.patches * (args.dim * 2 + 2)
    if need > 0.9 * free:
        parser.error(f"the segment needs {need / 1e9:.1f} GB on disk, only {free / 1e9:.1f} GB free")
    workdir = args.workdir / f"run-{int(time.time())}"
    t_start = time.perf_counter()
    memory = MemoryWatch()
    corpus = SyntheticCorpus(args.pages, args.patches, args.dim, args.seed)
    if args.centroids is None:
        args.centroids = default_n_centroids(args.pages * args.patches)
    try:
        (dense, retriever, by_ids, centroid_stage1), segment, pooled_seg, generator, info = build(
            corpus, workdir, args.centroids, args.chunk_pages, args.dense_rows
        )
        queries, _ = corpus.queries(args.queries)
        t0 = time.perf_counter()
        truth_scores = exact_scores(segment, queries, args.chunk_pages)
        truth = [set(top10(s).tolist()) for s in truth_scores]
        log(f"exact top 10 of {len(queries)} queries in {time.perf_counter() - t0:.0f} s (batched)")
        exact_ms = []
        for q, t in zip(queries[: args.exact_queries], truth, strict=False):
            t0 = time.perf_counter()
            found = brute_force(segment, q, args.chunk_pages)
            exact_ms.append((time.perf_counter() - t0) * 1000)
            assert len(set(found.tolist()) & t) >= K - 1, "brute force disagrees with the batched pass"
        exact_p50 = float(np.percentile(exact_ms, 50))
        log(f"brute force p50 {exact_p50:.0f} ms over {len(exact_ms)} queries")
        pooled_bytes = pooled_seg.vectors.nbytes + pooled_seg.codes.nbytes + pooled_seg.offsets.nbytes
        bytes_per_page = (pooled_bytes + generator.nbytes) / corpus.pages
        default = SearchParams(
            top_k=K, candidates=args.candidates, stage1="auto", stage1_k=args.stage1_k, nprobe=args.nprobe
        )
        rows = []
        for name, which, params in configs(default, dense, retriever, by_ids, centroid_stage1)[
            : 1 if args.only_default else args.first
        ]:
            # RAM per page that the configuration scans: the dense rows, or the pooled rows + lists.
            ram = info["dense_bytes"] / corpus.pages if which is dense else bytes_per_page
            row = {"pages": corpus.pages, "bytes_per_page": ram}
            row |= run_config(name, which, params, queries, truth)
            row |= {
                "exact_p50_ms": exact_p50,
                "speedup": exact_p50 / row["p50_ms"],
                "disk_bytes_per_page": segment.vectors.nbytes / corpus.pages,
                "centroids": args.centroids,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        info["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
        info["peak_anon_gib"] = memory.stop()
        log(
            f"total {time.perf_counter() - t_start:.0f} s, peak RSS {info['peak_rss_gib']:.1f} GiB "
            f"(anonymous {info['peak_anon_gib']:.1f} GiB)"
        )
        if args.write_docs:
            command = "python bench/search.py " + " ".join(argv if argv is not None else sys.argv[1:])
            write_docs(command.strip(), rows, info, [])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
