"""``patchseek serve`` in a child process, for tests that measure it or kill it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def start_server(
    data_dir: Path, *, log: Path | None = None, **env: str
) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    """Start ``patchseek serve`` on a free port with ``PATCHSEEK_DATA_DIR=data_dir`` (OCR off) plus
    ``env``; return the process and a client once ``/healthz`` answers. ``log``: a file that gets the
    server's stdout and stderr (appended), instead of the test's own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATCHSEEK_DATA_DIR": str(data_dir),
        "PATCHSEEK_OCR": "false",
        **env,
    }
    full_env.pop("PATCHSEEK_DATABASE_URL", None)
    out = None if log is None else log.open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "patchseek.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=None if out is None else subprocess.STDOUT,
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own copy
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return proc, client
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            client.close()
            proc.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.1)


@contextmanager
def server_process(data_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """``start_server`` as a context manager that stops the server (if still running) afterwards."""
    proc, client = start_server(data_dir, **env)
    try:
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
