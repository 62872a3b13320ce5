"""Evaluations end to end: ``patchseek eval`` and ``POST /v1/collections/{name}/evaluations`` on a
collection of PDF pages, images and a video whose words and judgments this test knows.

The measures the service reports (ranx) are checked against a computation written here from the raw
hits (``patchseek search --json``) or the runs the service returns, with numpy; shadow versions are
checked never to change the live answers, and ``--promote`` to swap one in.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.api.server import running_server
from tests.conftest import make_settings
from tests.e2e.test_cli import run_cli

COLLECTION = "mixed"
# Extra PDFs: a page per topic, each with a known phrase and filler words (so that the collection
# holds enough vectors for the codecs to be fitted on it).
TOPICS = {
    "atlas.pdf": ["coral reefs bleaching ocean", "desert dunes sandstorm camel", "tundra permafrost lichen"],
    "kitchen.pdf": ["sourdough starter flour", "fermented kimchi cabbage", "tempering chocolate cocoa"],
    "garage.pdf": ["carburetor idle mixture", "torque wrench lug nuts", "brake caliper rotor"],
}
QUERIES = {
    "q1": "solar panel installations",  # report.pdf page 1
    "q2": "glacier meltwater",  # report.pdf page 3 (graded), page 1 judged not relevant
    "q3": "espresso croissant",  # receipt.png (document level)
    "q4": "sprint backlog",  # whiteboard.jpg
    "q5": "volcanic lava",  # lecture.mp4 at 4.5 s
    "q6": "photosynthesis green leaves",  # lecture.mp4 at 1 s
    "q7": "coral reefs bleaching",  # atlas.pdf page 1
    "q8": "sourdough kimchi chocolate",  # kitchen.pdf (document level)
    "q9": "onboarding mentor",  # a unit id: report.pdf page 2
    "q10": "brake rotor",  # judged on the wrong page: garage.pdf page 1 (found: page 3)
    "q11": "carburetor lava",  # two judged items, one a video time
}
CONFIGS = [
    {"name": "binary", "compression": {"quantizer": "binary"}, "rerank": False},
    {"name": "kmeans16", "compression": {"quantizer": "kmeans", "kmeans_k": 16}, "rerank": False},
    {"name": "int8", "compression": {"quantizer": "binary", "keep": "int8"}},
    {"name": "shortlist3", "candidates": 3},
]
MEASURED = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")


def _pdf(pages: list[str], seed: int) -> bytes:
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    filler = [
        "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(90)
    ]
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, invariant=1)
    for p, phrase in enumerate(pages):
        pdf.setFont("Helvetica", 14)
        pdf.drawString(72, 760, phrase)
        words = filler[p * 30 : (p + 1) * 30]
        for line in range(5):
            pdf.drawString(72, 700 - 24 * line, " ".join(words[line * 6 : (line + 1) * 6]))
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, samples) -> Path:  # type: ignore[no-untyped-def]
    """A data dir whose collection ``mixed`` holds the samples (3-page PDF, 2 images, a 6 s video)
    and three more PDFs, ingested by the CLI; plus the files and the queries / qrels."""
    root = tmp_path_factory.mktemp("eval")
    files = root / "files"
    files.mkdir()
    for path in samples.all:
        shutil.copy(path, files / path.name)
    for n, (name, pages) in enumerate(TOPICS.items()):
        (files / name).write_bytes(_pdf(pages, n))
    data = root / "data"
    out = run_cli(data, "ingest", str(files), "-c", COLLECTION)
    assert "7 ingested" in out.stderr, out.stderr
    hits = json.loads(
        run_cli(data, "search", "onboarding mentor", "-c", COLLECTION, "--json").stdout.splitlines()[0]
    )
    assert (hits["document"], hits["page"]) == ("report.pdf", 2)
    qrels = {
        "q1": {"report.pdf#1": 1},
        "q2": {"report.pdf#3": 2, "report.pdf#1": 0},
        "q3": {"receipt.png": 1},
        "q4": {"whiteboard.jpg": 1},
        "q5": {"lecture.mp4@4.5": 1},
        "q6": {"lecture.mp4@1": 1},
        "q7": {"atlas.pdf#1": 2},
        "q8": {"kitchen.pdf": 1},
        "q9": {str(hits["unit_id"]): 1},
        "q10": {"garage.pdf#1": 1},
        "q11": {"garage.pdf#1": 2, "lecture.mp4@5": 1},
    }
    (root / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()))
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items())
    )
    (root / "qrels.txt").write_text(
        "".join(f"{q} 0 {i} {r}\n" for q, j in qrels.items() for i, r in j.items())
    )
    (root / "qrels.json").write_text(json.dumps(qrels))
    return root


# ------------------------------------------------------------------ the independent computation
def _ndcg10(ranked: list[str], judged: dict[str, int]) -> float:
    """nDCG@10 with gain = relevance (Järvelin & Kekäläinen, as trec_eval and ranx's ``ndcg``)."""
    gains = np.array([float(max(judged.get(item, 0), 0)) for item in ranked[:10]])
    ideal = np.sort(np.array([float(r) for r in judged.values() if r > 0]))[::-1][:10]
    discount = 1 / np.log2(np.arange(2, 12))
    idcg = float((ideal * discount[: ideal.size]).sum())
    return float((gains * discount[: gains.size]).sum()) / idcg if idcg else 0.0


def _mrr10(ranked: list[str], judged: dict[str, int]) -> float:
    for rank, item in enumerate(ranked[:10], 1):
        if judged.get(item, 0) > 0:
            return 1 / rank
    return 0.0


def _label(hit: dict[str, Any], judged: dict[str, int]) -> str:
    """What the test says a hit is, for one query's judgments (written apart from the service)."""
    name = hit["document"]
    if hit["t_start"] is not None:
        for item in judged:
            if item.startswith(f"{name}@") and hit["t_start"] <= float(item.split("@")[1]) <= hit["t_end"]:
                return item
        return f"{name}@{hit['t_start']}"
    if hit["page"] is not None and f"{name}#{hit['page']}" in judged:
        return f"{name}#{hit['page']}"
    if str(hit["unit_id"]) in judged:
        return str(hit["unit_id"])
    if name in judged:
        return name
    return f"{name}#{hit['page']}"


def _from_hits(corpus_dir: Path) -> dict[str, float]:
    """Mean MRR@10 and nDCG@10 of the live collection from ``patchseek search --json`` hits."""
    qrels = json.loads((corpus_dir / "qrels.json").read_text())
    out = run_cli(
        corpus_dir / "data",
        "search",
        "--queries",
        str(corpus_dir / "queries.txt"),
        "-c",
        COLLECTION,
        "--json",
        "--top-k",
        "100",
    ).stdout
    mrr, ndcg = [], []
    for qid, line in zip(QUERIES, out.splitlines(), strict=True):
        ranked = list(dict.fromkeys(_label(h, qrels[qid]) for h in json.loads(line)["hits"]))
        mrr.append(_mrr10(ranked, qrels[qid]))
        ndcg.append(_ndcg10(ranked, qrels[qid]))
    return {"mrr@10": float(np.mean(mrr)), "ndcg@10": float(np.mean(ndcg))}


def _eval_cli(corpus_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["eval", "-c", COLLECTION, "--queries", str(corpus_dir / "queries.tsv")]
    args += ["--qrels", str(corpus_dir / "qrels.txt"), "--json", "--plot", str(corpus_dir / "eval.png")]
    return run_cli(corpus_dir / "data", *args, *extra, check=check)


# ------------------------------------------------------------------------------------ tests
class TestCommandLine:
    def test_reports_live_and_compression_rows_matching_an_independent_computation(self, corpus_dir) -> None:  # type: ignore[no-untyped-def]
        (corpus_dir / "queries.txt").write_text("".join(f"{t}\n" for t in QUERIES.values()))
        before = run_cli(
            corpus_dir / "data", "search", "glacier meltwater", "-c", COLLECTION, "--json"
        ).stdout
        args = [a for c in CONFIGS for a in ("--config", json.dumps(c))]
        rows = [json.loads(line) for line in _eval_cli(corpus_dir, *args).stdout.splitlines()]
        assert [r["config"] for r in rows] == ["live", "binary", "kmeans16", "int8", "shortlist3"]
        for r in rows:
            assert set(MEASURED) | {"config", "p50_ms", "p95_ms", "bytes_per_page"} <= set(r)
        live = rows[0]
        expected = _from_hits(corpus_dir)
        assert live["mrr@10"] == pytest.approx(expected["mrr@10"], abs=1e-6)
        assert live["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-6)
        assert 0.3 < live["mrr@10"] < 1.0  # q10 is judged on the wrong page: not a perfect score
        by = {r["config"]: r for r in rows}
        # The codecs were fitted on their shadow versions (even below the fit rule); int8 rows and
        # binary codes take less than float16 rows (keep applies once a codec is fitted).
        assert by["binary"]["index_state"] and by["kmeans16"]["index_state"]
        assert by["int8"]["bytes_per_page"] < live["bytes_per_page"]
        assert by["live"]["exact_recall@10"] == 1.0
        assert all(0 <= r["exact_recall@10"] <= 1 for r in rows)
        assert by["int8"]["p_vs_live"].keys() == {"ndcg@10", "mrr@10"}
        image = Image.open(corpus_dir / "eval.png")
        assert image.format == "PNG" and image.width > 600
        # Nothing of the shadows is left, and the live answers are those of before.
        assert (
            run_cli(corpus_dir / "data", "search", "glacier meltwater", "-c", COLLECTION, "--json").stdout
            == before
        )
        versions = [p.name for p in (corpus_dir / "data" / "segments").glob("*/v*")]
        assert len(versions) == 1, versions
        (corpus_dir / "cli_rows.json").write_text(json.dumps(rows))

    def test_bad_input_is_a_usage_error(self, corpus_dir) -> None:  # type: ignore[no-untyped-def]
        bad = corpus_dir / "bad-qrels.txt"
        bad.write_text("q1 report.pdf#1\n")
        result = run_cli(
            corpus_dir / "data",
            "eval",
            "-c",
            COLLECTION,
            "--queries",
            str(corpus_dir / "queries.tsv"),
            "--qrels",
            str(bad),
            check=False,
        )
        assert result.returncode == 2 and "invalid_evaluation_input" in result.stderr


class TestHttp:
    def test_same_numbers_and_live_answers_untouched(self, corpus_dir) -> None:  # type: ignore[no-untyped-def]
        cli_rows = json.loads((corpus_dir / "cli_rows.json").read_text())
        qrels = json.loads((corpus_dir / "qrels.json").read_text())
        settings = make_settings(corpus_dir / "data", None, worker_in_process=True)
        with running_server(settings) as client:
            search = {"query": "coral reefs bleaching", "top_k": 10}
            before = client.post(f"/v1/collections/{COLLECTION}/search", json=search).json()["hits"]
            r = client.post(
                f"/v1/collections/{COLLECTION}/evaluations",
                json={
                    "queries": (corpus_dir / "queries.jsonl").read_text(),
                    "qrels": (corpus_dir / "qrels.txt").read_text(),
                    "configs": CONFIGS,
                },
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            during = 0
            deadline = time.monotonic() + 600
            while (job := client.get(f"/v1/evaluations/{job_id}").json())["status"] in ("queued", "running"):
                hits = client.post(f"/v1/collections/{COLLECTION}/search", json=search).json()["hits"]
                assert hits == before
                during += job["status"] == "running"
                assert time.monotonic() < deadline
            assert job["status"] == "succeeded", job
            assert during > 0
            assert client.post(f"/v1/collections/{COLLECTION}/search", json=search).json()["hits"] == before
            for http_row, cli_row in zip(job["rows"], cli_rows, strict=True):
                assert http_row["config"] == cli_row["config"]
                for m in (*MEASURED, "exact_recall@10", "bytes_per_page"):
                    assert http_row[m] == pytest.approx(cli_row[m], abs=1e-9), (http_row["config"], m)
            for row in job["rows"]:  # each row's @10 measures, recomputed from the run it returned
                run = job["runs"][row["config"]]
                assert row["mrr@10"] == pytest.approx(np.mean([_mrr10(run[q], qrels[q]) for q in QUERIES]))
                assert row["ndcg@10"] == pytest.approx(np.mean([_ndcg10(run[q], qrels[q]) for q in QUERIES]))
                assert set(job["per_query"][row["config"]]) == set(QUERIES)
            assert job["significance"]["config"] == job["best"]
            plot = client.get(f"/v1/evaluations/{job_id}/plot")
            assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
            listed = client.get(f"/v1/collections/{COLLECTION}/evaluations").json()
            assert listed[0]["id"] == job_id and listed[0]["rows"][0]["config"] == "live"
            assert client.get(f"/v1/jobs/{job_id}").json()["kind"] == "evaluation"

    @pytest.mark.parametrize(
        ("queries", "qrels", "code"),
        [
            ("q1\tsolar panels\n", "q1 0 report.pdf#1\n", "invalid_evaluation_input"),  # 3 fields, no rel
            ("q1\tsolar panels\n", "q1 0 report.pdf#1 high\n", "invalid_evaluation_input"),
            ("q1\tsolar panels\n", "q1 0 missing.pdf 1\n", "unknown_judged_item"),
            ("q1\tsolar panels\n", "q1 0 report.pdf#9 1\n", "unknown_judged_item"),
            ("q1\tsolar panels\n", "q1 0 lecture.mp4@60 1\n", "unknown_judged_item"),
            ("q1\tsolar panels\n", "q2 0 report.pdf#1 1\n", "invalid_evaluation_input"),  # no judged query
            ("\n\n", "q1 0 report.pdf#1 1\n", "invalid_evaluation_input"),  # empty query set
            ('{"_id": "q1"}\n', "q1 0 report.pdf#1 1\n", "invalid_evaluation_input"),
        ],
    )
    def test_bad_input_is_a_clear_4xx(self, corpus_dir, queries, qrels, code) -> None:  # type: ignore[no-untyped-def]
        settings = make_settings(corpus_dir / "data", None, worker_in_process=False)
        with running_server(settings) as client:
            r = client.post(
                f"/v1/collections/{COLLECTION}/evaluations", json={"queries": queries, "qrels": qrels}
            )
            assert r.status_code == 422, r.text
            assert r.json()["code"] == code
            assert client.get("/v1/evaluations/999999").status_code == 404


class TestPromote:
    def test_promote_swaps_the_shadow_in(self, corpus_dir) -> None:  # type: ignore[no-untyped-def]
        data = corpus_dir / "data"
        before = [
            (h["document"], h["page"])
            for h in map(
                json.loads,
                run_cli(data, "search", "brake rotor", "-c", COLLECTION, "--json").stdout.splitlines(),
            )
        ]
        stats = json.loads(run_cli(data, "stats", "-c", COLLECTION, "--json").stdout)
        assert "vectors" in stats["disk_bytes"]
        rows = [
            json.loads(line)
            for line in _eval_cli(
                corpus_dir, "--config", json.dumps(CONFIGS[2]), "--promote", "int8"
            ).stdout.splitlines()
        ]
        assert [r["config"] for r in rows] == ["live", "int8"]
        stats = json.loads(run_cli(data, "stats", "-c", COLLECTION, "--json").stdout)
        assert "vectors_i8" in stats["disk_bytes"] and "vectors" not in stats["disk_bytes"]
        assert stats["disk_bytes_per_unit"] == pytest.approx(rows[1]["bytes_per_page"], rel=0.05)
        after = [
            (h["document"], h["page"])
            for h in map(
                json.loads,
                run_cli(data, "search", "brake rotor", "-c", COLLECTION, "--json").stdout.splitlines(),
            )
        ]
        assert after[:3] == before[:3]  # int8 rounding may reorder near-ties in the tail only
        assert len(list((data / "segments").glob("*/v*"))) == 1
        # A knob-only configuration cannot be promoted: there is no index to swap in.
        result = _eval_cli(
            corpus_dir, "--config", json.dumps(CONFIGS[3]), "--promote", "shortlist3", check=False
        )
        assert result.returncode == 2 and "invalid_evaluation_input" in result.stderr


def test_server_starts_without_loading_ranx() -> None:
    # The API and the CLI do not pay for ranx / numba / matplotlib until an evaluation runs.
    code = (
        "import sys, patchseek.api.app; assert 'ranx' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
