"""patchseek's index engine against the multi-vector peers that install here, on one corpus, in one run.

The same synthetic ColPali-shaped pages (``bench/synthetic.py``: 1030 patches x 128-d) go to

- **patchseek**: ``IndexEngine.write`` + ``publish`` + ``maybe_merge`` in 500-page jobs (what an ingest job
  runs after the encoder), queried through ``Snapshot.search`` (the call ``SearchService.search`` makes);
- **LanceDB** (``lancedb``): a multivector column (list of 128-d vectors per page), its IVF_PQ index
  with default parameters and cosine distance, queried with the token matrix (its MaxSim search);
- **MUVERA** (``muvera-python``): fixed dimensional encodings with the paper's setting (R=20 repetitions,
  k_sim=5, d_proj=16: 10,240 dims), an exact inner-product scan of them (FAISS ``IndexFlatIP``) for 100
  candidates, re-scored by exact MaxSim (the paper's pipeline);
- **maxsim-cpu** (``maxsim-cpu``): brute-force MaxSim over every page in RAM (float32), beside
  patchseek's brute force (``stage1="exact"`` on the memory-mapped float16 segments).

Index-side throughput counts everything after the encoder, from float vectors in memory to a searchable
index (patchseek: also the segment files and manifest on disk). patchseek fits its stage-1 state once the
collection is large enough (``fit_rule``); both its steady state (the state fitted, pages added by jobs)
and the whole build (fit included) are reported. Recall@10 is measured against exact MaxSim (maxsim-cpu
and patchseek's brute force agree to float16 rounding; the table says how often).

    python bench/peers.py --pages 2000 --queries 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import batch_of, memory_status, pct  # noqa: E402
from synthetic import SyntheticCorpus  # noqa: E402

from patchseek.kernels import maxsim  # noqa: E402
from patchseek.search.engine import IndexEngine  # noqa: E402

JOB_PAGES = 500


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def recall(found: list[int], truth: list[int]) -> float:
    return len(set(found) & set(truth)) / max(len(truth), 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=2000, help="pages indexed by every system")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    corpus = SyntheticCorpus(args.pages)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-peers-"))
    pages = [corpus.page(p).vectors for p in range(args.pages)]  # (1030, 128) float32 each
    queries = [q.numpy().astype(np.float32) for q in corpus.queries(args.queries)[0]]
    rows: list[tuple[str, str, str, str, str]] = []  # system, build pages/s, p50, recall@10, note

    # -- patchseek --------------------------------------------------------------------------------
    engine = IndexEngine(work / "patchseek" / "v1", corpus.dim)
    build_s, fit_s, steady_s, steady_pages = 0.0, 0.0, 0.0, 0
    for start in range(0, args.pages, JOB_PAGES):
        batch = batch_of(corpus, start, min(args.pages, start + JOB_PAGES))
        fitted_before = engine.snapshot().manifest.state is not None
        t0 = time.perf_counter()
        engine.publish([engine.write(batch)])
        engine.maybe_merge()
        dt = time.perf_counter() - t0
        build_s += dt
        if fitted_before:
            steady_s += dt
            steady_pages += batch.n_units
        elif engine.snapshot().manifest.state is not None:
            fit_s = float(engine.snapshot().manifest.fit.get("seconds", 0.0))
    snap = engine.snapshot()
    snap.search(torch.from_numpy(queries[0]))  # load the dense rows
    ours_lat, exact_lat, exact_top, ours_recall = [], [], [], []
    for q in queries:
        qt = torch.from_numpy(q)
        hits, dt = timed(lambda qt=qt: snap.search(qt, top_k_hits=10).hits)
        ours_lat.append(dt * 1000)
        truth, dt = timed(lambda qt=qt: snap.search(qt, top_k_hits=10, stage1="exact").hits)
        exact_lat.append(dt * 1000)
        exact_top.append([h.doc_id for h in truth])
        ours_recall.append(recall([h.doc_id for h in hits], exact_top[-1]))
    steady = f"{steady_pages / steady_s:.1f}" if steady_s else "n/a"
    rows.append(
        (
            "patchseek (default: dense stage 1 + exact rerank)",
            f"{steady} steady / {args.pages / build_s:.1f} with fit",
            f"{pct(ours_lat, 50):.0f}",
            f"{np.mean(ours_recall):.3f}",
            f"stage 1 {snap.stage1_kind()}; fit {fit_s:.0f} s of {build_s:.0f} s; "
            f"{snap.stats()['disk_bytes_per_unit']:,.0f} B/page on disk",
        )
    )
    rows.append(
        ("patchseek brute force (stage1=exact)", "-", f"{pct(exact_lat, 50):.0f}", "1.000", "the reference")
    )

    # -- maxsim-cpu ---------------------------------------------------------------------------------
    try:
        import maxsim_cpu

        dense = np.stack(pages)  # (n_pages, 1030, 128) float32
        lat, agree = [], []
        for q, truth in zip(queries, exact_top, strict=True):
            scores, dt = timed(maxsim_cpu.maxsim_scores, q, dense)
            lat.append(dt * 1000)
            agree.append(recall(np.argsort(-np.asarray(scores))[:10].tolist(), truth))
        rows.append(
            (
                "maxsim-cpu brute force (float32 in RAM)",
                "-",
                f"{pct(lat, 50):.0f}",
                f"{np.mean(agree):.3f}",
                f"{dense.nbytes / args.pages:,.0f} B/page in RAM",
            )
        )
        del dense
    except ImportError:
        rows.append(("maxsim-cpu", "-", "-", "-", "not installed (pip install maxsim-cpu)"))

    # -- MUVERA -------------------------------------------------------------------------------------
    try:
        import faiss
        from muvera import Muvera

        enc = Muvera(
            num_repetitions=20,
            num_simhash_projections=5,
            dimension=corpus.dim,
            projection_type="ams_sketch",
            projection_dimension=16,
            seed=0,
        )
        t0 = time.perf_counter()
        fdes = np.concatenate(
            [enc.encode_documents(pages[s : s + JOB_PAGES]) for s in range(0, args.pages, JOB_PAGES)]
        ).astype(np.float32)
        index = faiss.IndexFlatIP(fdes.shape[1])
        index.add(fdes)
        muvera_s = time.perf_counter() - t0
        offsets = torch.arange(0, 101 * 1030, 1030)
        lat, rec = [], []
        for q, truth in zip(queries, exact_top, strict=True):
            t0 = time.perf_counter()
            _, cand = index.search(enc.encode_queries(q)[None, :].astype(np.float32), 100)
            cand = cand[0][cand[0] >= 0]
            docs = torch.from_numpy(np.concatenate([pages[c] for c in cand]))
            scores = maxsim(torch.from_numpy(q), docs, offsets[: cand.size + 1]).numpy()
            top = cand[np.argsort(-scores)[:10]]
            lat.append((time.perf_counter() - t0) * 1000)
            rec.append(recall(top.tolist(), truth))
        rows.append(
            (
                "MUVERA FDE (R=20, k_sim=5, d_proj=16) + exact rerank of 100",
                f"{args.pages / muvera_s:.1f}",
                f"{pct(lat, 50):.0f}",
                f"{np.mean(rec):.3f}",
                f"{fdes.shape[1]} dims, {fdes.nbytes / args.pages:,.0f} B/page; rerank from RAM",
            )
        )
        del fdes, index
    except ImportError:
        rows.append(("MUVERA", "-", "-", "-", "not installed (pip install muvera-python)"))

    # -- LanceDB ------------------------------------------------------------------------------------
    try:
        import lancedb
        import pyarrow as pa

        t0 = time.perf_counter()
        db = lancedb.connect(str(work / "lancedb"))
        n_rows = np.array([p.shape[0] for p in pages])
        flat = pa.array(np.concatenate(pages).ravel(), pa.float32())
        inner = pa.FixedSizeListArray.from_arrays(flat, corpus.dim)
        outer = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(n_rows)]).astype(np.int32)), inner
        )
        table = db.create_table("pages", pa.table({"page": pa.array(np.arange(args.pages)), "vector": outer}))
        insert_s = time.perf_counter() - t0
        table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_PQ")
        lance_s = time.perf_counter() - t0
        lat, rec = [], []
        for q, truth in zip(queries, exact_top, strict=True):
            t0 = time.perf_counter()
            found = table.search(q, vector_column_name="vector").limit(10).select(["page"]).to_list()
            lat.append((time.perf_counter() - t0) * 1000)
            rec.append(recall([r["page"] for r in found], truth))
        rows.append(
            (
                "LanceDB multivector IVF_PQ (defaults, cosine)",
                f"{args.pages / lance_s:.1f}",
                f"{pct(lat, 50):.0f}",
                f"{np.mean(rec):.3f}",
                f"insert {insert_s:.0f} s + index {lance_s - insert_s:.0f} s",
            )
        )
    except ImportError:
        rows.append(("LanceDB", "-", "-", "-", "not installed (pip install lancedb)"))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load = os.getloadavg()
    status = memory_status()
    print(f"\n{args.pages} pages x 1030 patches x 128-d, {args.queries} queries, top 10")
    header = ("system", "index-side pages/s", "p50 ms", "recall@10 vs exact", "notes")
    print("| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(
        f"\npeak RSS {peak:.1f} GiB (anonymous now {status['RssAnon'] / 2**20:.1f} GiB); load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} CPUs"
    )
    print(json.dumps({"fit": snap.manifest.fit}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
