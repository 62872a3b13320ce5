"""Sharded serving against in-process search, through ``SearchService.search`` (the API's path).

Needs a collection in ``--data-dir`` and its shard servers running on the cluster
(``patchseek serve-shards --ray ADDRESS -c NAME --shards N``). Runs the same queries both ways, checks
the answers agree, and prints p50 / p95 latency (query encoding included) of each::

    python bench/sharded.py --data-dir ./data -c c --ray 127.0.0.1:6379 --shards 2 --queries 50
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np

from patchseek.api.services import SearchService, ServiceContext
from patchseek.config import Settings


def _words(service: SearchService, collection: str, n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    hits = service.search(collection, query="a e i o u", top_k=200, stage1="exact").hits
    words = sorted({w for h in hits for w in h.text.split() if len(w) > 3})
    return [" ".join(rnd.sample(words, 3)) for _ in range(n)]


def _run(service: SearchService, collection: str, queries: list[str]) -> tuple[list[list[int]], np.ndarray]:
    service.search(collection, query=queries[0])  # warm: encoder, maps, dense rows
    ids, took = [], []
    for q in queries:
        t0 = time.perf_counter()
        result = service.search(collection, query=q, top_k=10)
        took.append((time.perf_counter() - t0) * 1000)
        assert not result.partial, result.missing_shards
        ids.append([h.unit_id for h in result.hits])
    return ids, np.array(took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("-c", "--collection", default="default")
    ap.add_argument("--ray", required=True)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--namespace", default="patchseek")
    ap.add_argument("--queries", type=int, default=50)
    args = ap.parse_args()
    base = {
        "data_dir": args.data_dir,
        "ocr": False,
        "worker_in_process": False,
        "ray_namespace": args.namespace,
    }
    local = ServiceContext.from_settings(Settings(**base))  # type: ignore[arg-type]
    sharded = ServiceContext.from_settings(
        Settings(**base, shards=args.shards, ray_address=args.ray)  # type: ignore[arg-type]
    )
    try:
        queries = _words(SearchService(local), args.collection, args.queries, seed=0)
        a, ta = _run(SearchService(local), args.collection, queries)
        b, tb = _run(SearchService(sharded), args.collection, queries)
        same = sum(x == y for x, y in zip(a, b, strict=True))
        units = SearchService(local).stats(args.collection)["units"]
        for name, t in (("in-process", ta), (f"{args.shards} shards", tb)):
            print(
                json.dumps(
                    {
                        "search": name,
                        "units": units,
                        "queries": len(queries),
                        "p50_ms": round(float(np.percentile(t, 50)), 1),
                        "p95_ms": round(float(np.percentile(t, 95)), 1),
                        "same_top10": same,
                    }
                )
            )
    finally:
        sharded.close()
        local.close()


if __name__ == "__main__":
    main()
