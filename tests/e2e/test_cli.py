"""The ``patchseek`` command line end to end, as users and scripts run it (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from patchseek.samples import make_slides_video

PHRASE = "Es ist also egal in welcher Reihenfolge die Schnittpunkte mit der x Achse"
PHRASE_PAGE = 89  # of 009-pdflatex-geotopo/GeoTopo-komprimiert.pdf


def run_cli(
    data_dir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATCHSEEK_DATA_DIR": str(data_dir),
        "PATCHSEEK_VIDEO_INTERVAL": "1.5",
        **(env or {}),
    }
    env.pop("PATCHSEEK_DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "patchseek.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"patchseek {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def test_ingest_and_search_samples(tmp_path, samples) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    run_cli(data, "init")
    out = run_cli(data, "ingest", str(samples.pdf.parent), "--collection", "demo")
    assert "4 ingested" in out.stderr and "0 failed" in out.stderr

    hits = [
        json.loads(line)
        for line in run_cli(data, "search", "glacier meltwater", "-c", "demo", "--json").stdout.splitlines()
    ]
    assert hits[0]["document"] == "report.pdf" and hits[0]["page"] == 3
    assert set(hits[0]) >= {"document", "page", "t_start", "t_end", "score"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    queries = tmp_path / "queries.txt"
    queries.write_text("volcanic lava\n\nsprint backlog\n")
    lines = [
        json.loads(x)
        for x in run_cli(
            data, "search", "--queries", str(queries), "-c", "demo", "--json", "--top-k", "2"
        ).stdout.splitlines()
    ]
    assert [x["query"] for x in lines] == ["volcanic lava", "sprint backlog"]
    video = lines[0]["hits"][0]
    assert video["document"] == "lecture.mp4" and video["page"] is None
    assert 3.0 <= video["t_start"] < video["t_end"] <= 6.0
    assert lines[1]["hits"][0]["document"] == "whiteboard.jpg"
    assert len(lines[1]["hits"]) == 2

    # The same bytes again: skipped, nothing duplicated.
    again = run_cli(data, "ingest", str(samples.pdf), "--collection", "demo")
    assert "1 duplicates" in again.stderr
    table = run_cli(data, "search", "glacier", "-c", "demo").stdout
    assert "report.pdf" in table and "page 3" in table


def test_scene_sampling_gives_one_unit_per_shot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Slides cut hard at 2.0 s and 5.5 s: three shots, and the hit names the span of its slide."""
    data = tmp_path / "data"
    video = tmp_path / "talk.mp4"
    video.write_bytes(
        make_slides_video(
            [
                (["Photosynthesis", "in green leaves"], 2.0),
                (["Volcanic eruptions", "and lava flows"], 3.5),
                (["Glacier retreat", "in the Alps"], 1.5),
            ],
            fps=8,
        )
    )
    scenes = {"PATCHSEEK_VIDEO_SAMPLING": "scenes", "PATCHSEEK_OCR": "true"}
    out = run_cli(data, "ingest", str(video), "-c", "talks", env=scenes)
    assert "1 ingested (3 units)" in out.stderr, out.stderr
    for query, span in [("volcanic lava", (2.0, 5.5)), ("glacier retreat", (5.5, 7.0))]:
        hits = [
            json.loads(x)
            for x in run_cli(data, "search", query, "-c", "talks", "--json", "-k", "3").stdout.splitlines()
        ]
        assert hits[0]["kind"] == "shot" and hits[0]["document"] == "talk.mp4"
        assert (hits[0]["t_start"], hits[0]["t_end"]) == span
        assert hits[0]["score"] > max(h["score"] for h in hits[1:])


def test_bad_files_fail_alone(tmp_path, samples) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.pdf").write_bytes(b"")
    (bad / "truncated.pdf").write_bytes(samples.pdf.read_bytes()[:600])
    (bad / "notes.txt").write_text("hello")
    (bad / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    result = run_cli(data, "ingest", str(bad), str(samples.receipt), "-c", "mixed", check=False)
    assert result.returncode == 1
    assert "1 ingested" in result.stderr and "4 failed" in result.stderr
    assert "empty" in result.stderr and "unsupported file type" in result.stderr
    hits = [
        json.loads(x)
        for x in run_cli(data, "search", "espresso", "-c", "mixed", "--json").stdout.splitlines()
    ]
    assert [h["document"] for h in hits] == ["receipt.png"]


def test_errors_exit_nonzero_with_a_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(tmp_path / "data", "search", "x", "-c", "missing", check=False)
    assert result.returncode == 2 and "not_found" in result.stderr


def test_shared_corpus(tmp_path, corpus) -> None:  # type: ignore[no-untyped-def]
    """All of ../shared/corpus/pdf-samples: every readable PDF in, the encrypted one failed, phrase found."""
    data = tmp_path / "data"
    result = run_cli(data, "ingest", str(corpus), "-c", "corpus", check=False)
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed")]
    assert any("libreoffice-writer-password.pdf" in f and "password" in f for f in failed), result.stderr
    pdfs = sorted(p.name for p in corpus.rglob("*.pdf"))
    ok_pdfs = {p for p in pdfs if p not in ("libreoffice-writer-password.pdf", "unreadablemetadata.pdf")}
    # unreadablemetadata.pdf is damaged beyond what pdfium, qpdf or pypdf can open (no /Kids in its page
    # tree); it must fail with a clear reason too.
    assert any("unreadablemetadata.pdf" in f and "cannot be read" in f for f in failed)
    assert all(not any(p in f for p in ok_pdfs) for f in failed), failed

    hits = [
        json.loads(x)
        for x in run_cli(data, "search", PHRASE, "-c", "corpus", "--json", "-k", "3").stdout.splitlines()
    ]
    assert hits[0]["document"] == "GeoTopo-komprimiert.pdf" and hits[0]["page"] == PHRASE_PAGE
    query = "Beautiful is better than ugly Explicit is better than implicit"
    hits = [
        json.loads(x)
        for x in run_cli(data, "search", query, "-c", "corpus", "--json", "-k", "1").stdout.splitlines()
    ]
    assert hits[0]["document"] == "google-doc-document.pdf"
