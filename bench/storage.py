"""Storage benchmark: what the object-store backend costs against the local folder.

Usage::

    python bench/storage.py                 # local folder, S3 (moto's server on 127.0.0.1), fsspec memory
    python bench/storage.py --mib 64 --segments 20

For each backend: put and get of one ``--mib`` MiB object (MiB/s), a cold ``local_path`` (a download
into the read cache) and a warm one (a hit), then the index engine: publish of ``--segments``
one-document segments (ms each), a snapshot opened by a second client with an empty cache (ms), and
a snapshot refresh when nothing changed (what a search pays per call once ``poll_s`` has elapsed: one
LIST on an object store, one ``stat`` locally).

moto is an in-process emulator on loopback: its numbers bound the client-side overhead (s3fs,
serialisation, the cache), not what a real S3 endpoint's latency or bandwidth would give.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from patchseek.indexer.compress import CompressionConfig
from patchseek.search.engine import IndexEngine, UnitBatch
from patchseek.search.files import IndexFiles
from patchseek.storage import Storage, open_storage
from patchseek.types import PatchBag

DIM = 128


def _engine(storage: Storage, scratch: Path) -> IndexEngine:
    files = IndexFiles(storage, "segments/1/v1/", scratch=scratch, poll_s=0.0)
    root = storage.local_root / "segments/1/v1" if storage.local_root else scratch
    return IndexEngine(root, DIM, CompressionConfig(), files=files)


def _batch(rng: np.random.Generator, doc: int) -> UnitBatch:
    bags = []
    for _ in range(4):
        v = torch.from_numpy(rng.standard_normal((256, DIM)).astype(np.float32))
        bags.append(PatchBag(v, torch.ones(256), torch.zeros(256, 2, dtype=torch.int64), (16, 16)))
    return UnitBatch.from_bags(doc, "pdf", bags, DIM)


def run(name: str, opener: Any, mib: int, n_segments: int, tmp: Path) -> dict[str, float]:
    store: Storage = opener(tmp / f"cache-{uuid.uuid4().hex[:6]}")
    data = np.random.default_rng(0).integers(0, 256, mib << 20, dtype=np.uint8).tobytes()
    out: dict[str, float] = {}
    t = time.perf_counter()
    store.put("bench/blob", data)
    out["put MiB/s"] = mib / (time.perf_counter() - t)
    t = time.perf_counter()
    assert store.get("bench/blob") == data
    out["get MiB/s"] = mib / (time.perf_counter() - t)
    t = time.perf_counter()
    with store.local_path("bench/blob"):
        out["cold local_path ms"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    with store.local_path("bench/blob"):
        out["warm local_path ms"] = (time.perf_counter() - t) * 1000
    engine = _engine(store, tmp / f"scratch-{uuid.uuid4().hex[:6]}")
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    for d in range(n_segments):
        engine.publish([engine.write(_batch(rng, d))])
    out["write+publish ms/segment"] = (time.perf_counter() - t) * 1000 / n_segments
    other = _engine(opener(tmp / f"cache-{uuid.uuid4().hex[:6]}"), tmp / f"scratch-{uuid.uuid4().hex[:6]}")
    t = time.perf_counter()
    snap = other.snapshot()
    out["cold snapshot ms (other client)"] = (time.perf_counter() - t) * 1000
    assert snap.n_units == 4 * n_segments
    t = time.perf_counter()
    for _ in range(20):
        other.snapshot()
    out["unchanged snapshot ms"] = (time.perf_counter() - t) * 1000 / 20
    print(f"\n{name}")
    for k, v in out.items():
        print(f"  {k:34s} {v:10.1f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--segments", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        import boto3

        creds = {"aws_access_key_id": "k", "aws_secret_access_key": "s", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=f"http://{host}:{port}", **creds).create_bucket(Bucket="bench")
        s3_opts = {"key": "k", "secret": "s", "endpoint_url": f"http://{host}:{port}"}
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            run("local folder", lambda _c: open_storage(tmp / "local"), args.mib, args.segments, tmp)
            run(
                "s3 (s3fs -> moto server)",
                lambda c: open_storage("s3://bench/data", s3_opts, cache_dir=c),
                args.mib,
                args.segments,
                tmp,
            )
            run(
                "fsspec memory",
                lambda c: open_storage("memory://bench", cache_dir=c),
                args.mib,
                args.segments,
                tmp,
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
