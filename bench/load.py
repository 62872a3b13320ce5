"""A bounded load test of the HTTP service on this machine (loopback only): concurrent searches, uploads
and deletes against ``patchseek serve`` on PostgreSQL (or SQLite), for a fixed time; it stops by itself.

Reports requests per kind, p50/p95 latency, and every status code seen (the target is 0 responses of
5xx), with the machine's load and the server's peak RSS.

    python bench/load.py --seconds 120 --database postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from reportlab.pdfgen import canvas

REPO = Path(__file__).resolve().parents[1]
WORDS = "glacier lava espresso receipt solar revenue mentor badge crater basalt meltwater sprint".split()


def pdf(seed: int) -> bytes:
    rnd = random.Random(seed)
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(300, 200), invariant=1)
    for _ in range(2):
        for i in range(6):
            c.drawString(10, 180 - 25 * i, " ".join(rnd.sample(WORDS, 3)) + f" doc{seed}")
        c.showPage()
    c.save()
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--searchers", type=int, default=4)
    ap.add_argument(
        "--database", default=None, help="SQLAlchemy URL (a fresh database is created on PostgreSQL)"
    )
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="load-")) / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATCHSEEK_DATA_DIR": str(data), "PATCHSEEK_OCR": "false"}
    db_url = args.database
    if db_url and db_url.startswith("postgresql"):
        import sqlalchemy

        name = f"patchseek_load_{uuid.uuid4().hex[:8]}"
        admin = sqlalchemy.create_engine(db_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        db_url = db_url.rsplit("/", 1)[0] + f"/{name}"
    if db_url:
        env["PATCHSEEK_DATABASE_URL"] = db_url
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "patchseek.cli", "serve", "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    lat: dict[str, list[float]] = defaultdict(list)
    codes: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    lock = threading.Lock()
    try:
        client = httpx.Client(base_url=base, timeout=120)
        for _ in range(600):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client.post("/v1/collections", json={"name": "load"})
        r = client.post(
            "/v1/collections/load/documents",
            params={"wait": "true"},
            files=[("files", (f"seed{i}.pdf", pdf(10_000 + i))) for i in range(20)],
        )
        assert r.status_code == 200, r.text
        stop = time.monotonic() + args.seconds

        def record(kind: str, t0: float, status: int) -> None:
            with lock:
                lat[kind].append((time.perf_counter() - t0) * 1000)
                codes[kind][status] += 1

        def searcher(i: int) -> None:
            c = httpx.Client(base_url=base, timeout=120)
            rnd = random.Random(i)
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post("/v1/collections/load/search", json={"query": " ".join(rnd.sample(WORDS, 2))})
                record("search", t0, r.status_code)

        def uploader() -> None:
            c = httpx.Client(base_url=base, timeout=300)
            n = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = c.post(
                    "/v1/collections/load/documents",
                    params={"wait": "true"},
                    files=[("files", (f"up{n}-{k}.pdf", pdf(n * 10 + k))) for k in range(3)],
                )
                record("upload", t0, r.status_code)
                n += 1

        def deleter() -> None:
            c = httpx.Client(base_url=base, timeout=120)
            while time.monotonic() < stop:
                docs = c.get("/v1/collections/load/documents", params={"limit": 50}).json()
                ready = [d["id"] for d in docs if d["status"] == "ready" and d["filename"].startswith("up")]
                if ready:
                    t0 = time.perf_counter()
                    r = c.delete(f"/v1/collections/load/documents/{ready[0]}")
                    record("delete", t0, r.status_code)
                time.sleep(0.5)

        threads = [threading.Thread(target=searcher, args=(i,)) for i in range(args.searchers)]
        threads += [threading.Thread(target=uploader), threading.Thread(target=deleter)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        status = Path(f"/proc/{server.pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
    finally:
        server.terminate()
        server.wait(timeout=60)
    load = os.getloadavg()
    print(
        f"\n{args.seconds:.0f} s, {args.searchers} searchers + 1 uploader (3 PDFs per request) + 1 deleter, "
        f"{'PostgreSQL' if db_url and db_url.startswith('postgresql') else 'SQLite'}"
    )
    print("| kind | requests | p50 ms | p95 ms | statuses |\n|---|---|---|---|---|")
    n5xx = 0
    for kind in ("search", "upload", "delete"):
        xs = np.asarray(lat[kind]) if lat[kind] else np.zeros(1)
        st = dict(sorted(codes[kind].items()))
        n5xx += sum(v for k, v in st.items() if k >= 500)
        p50, p95 = np.percentile(xs, 50), np.percentile(xs, 95)
        print(f"| {kind} | {len(lat[kind])} | {p50:.0f} | {p95:.0f} | {st} |")
    print(
        f"5xx responses: {n5xx}; server peak RSS {int(hwm) / 2**20:.2f} GiB; "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} CPUs"
    )
    return 1 if n5xx else 0


if __name__ == "__main__":
    raise SystemExit(main())
