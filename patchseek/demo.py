"""``make demo``: ingest the generated sample files and answer a few queries, offline, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from patchseek.samples import DEMO_QUERIES, write_samples


def main() -> int:
    data_dir = Path(os.environ.get("PATCHSEEK_DATA_DIR", "patchseek-data/demo"))
    env = {**os.environ, "PATCHSEEK_DATA_DIR": str(data_dir)}
    samples = write_samples(data_dir / "samples")
    print(f"sample files written to {data_dir / 'samples'}: " + ", ".join(p.name for p in samples.all))
    cli = [sys.executable, "-m", "patchseek.cli"]
    # Re-running the demo finds the same bytes already ingested and skips them.
    subprocess.run([*cli, "ingest", *map(str, samples.all), "--collection", "demo"], env=env, check=True)
    queries = data_dir / "queries.txt"
    queries.write_text("\n".join(DEMO_QUERIES) + "\n")
    for query in DEMO_QUERIES:
        subprocess.run([*cli, "search", query, "--collection", "demo", "--top-k", "3"], env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
