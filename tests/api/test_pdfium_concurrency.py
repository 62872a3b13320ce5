"""pdfium is not thread-safe: concurrent PDF ingests (the worker, ``?wait=true`` uploads, direct reads)
must all succeed in one process, and the process must survive them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_concurrent_pdf_ingests_all_succeed_and_the_process_lives(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PATCHSEEK_DATABASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.api.pdf_storm", str(tmp_path / "data")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # A crash inside pdfium is a negative return code (-11 SIGSEGV, -6 SIGABRT): the server died.
    assert proc.returncode == 0, f"server process exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["errors"] == []
    assert summary["statuses"] == ["succeeded"] * 8  # 4 ?wait=true uploads + 4 queued for the worker
    assert summary["reads"] == [10] * 20  # 4 threads x 5 reads of 10 pages
    assert summary["ready"] == 8
