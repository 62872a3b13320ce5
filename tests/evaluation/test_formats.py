"""Query / qrels parsing, judged items, ranx measures and the Pareto front, on tiny hand-made inputs."""

from __future__ import annotations

import pytest

from patchseek.evaluation import (
    EvaluationInputError,
    UnknownItemError,
    pareto_front,
    parse_item,
    read_qrels,
    read_queries,
    score_run,
)


class TestQueries:
    def test_tsv_and_beir_jsonl_read_alike(self) -> None:
        tsv = read_queries("qid\ttext\nq1\tsolar panels\n\nq2\tlava\n", max_queries=10)
        jsonl = read_queries(
            '{"_id": "q1", "text": "solar panels"}\n{"_id": "q2", "text": "lava"}\n', max_queries=10
        )
        assert tsv == jsonl == {"q1": "solar panels", "q2": "lava"}

    @pytest.mark.parametrize("text", ["", "q1 no tab\n", "q1\tx\nq1\ty\n", "{bad json\n", '{"_id": "q"}\n'])
    def test_malformed_files_are_refused(self, text: str) -> None:
        with pytest.raises(EvaluationInputError):
            read_queries(text, max_queries=10)

    def test_query_cap(self) -> None:
        with pytest.raises(EvaluationInputError, match="more than 2"):
            read_queries("a\tx\nb\ty\nc\tz\n", max_queries=2)


class TestQrels:
    def test_trec_and_beir_tsv(self) -> None:
        trec = read_qrels("q1 0 a.pdf#2 1\nq1 0 b.png 0\n")
        beir = read_qrels("query-id\tcorpus-id\tscore\nq1\ta.pdf#2\t1\nq1\tb.png\t0\n")
        assert trec == beir == {"q1": {"a.pdf#2": 1, "b.png": 0}}

    @pytest.mark.parametrize("text", ["q1 0 a.pdf\n", "q1 0 a.pdf x\n", "q1 0 a 1\nq1 0 a 2\n", "\n"])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(EvaluationInputError):
            read_qrels(text)


class TestItems:
    names = {"report.pdf", "talk.mp4", "odd#1.pdf"}

    def test_kinds(self) -> None:
        assert parse_item("report.pdf#3", self.names).page == 3
        assert parse_item("talk.mp4@12.5", self.names).seconds == 12.5
        assert parse_item("odd#1.pdf", self.names).kind == "document"  # a real name wins
        assert parse_item("42", self.names).unit_id == 42

    @pytest.mark.parametrize("item", ["missing.pdf", "missing.pdf#1", "report.pdf#0", "talk.mp4@x"])
    def test_unknown(self, item: str) -> None:
        with pytest.raises(UnknownItemError):
            parse_item(item, self.names)


class TestMeasures:
    def test_ranx_scores_follow_the_given_order(self) -> None:
        means, per_query = score_run({"q": {"b": 1}}, {"q": ["a", "b", "c"]})
        assert means["mrr@10"] == pytest.approx(0.5)
        assert per_query["q"]["recall@10"] == 1.0

    def test_empty_run_scores_zero(self) -> None:
        means, _ = score_run({"q": {"b": 1}, "r": {"a": 1}}, {"q": [], "r": ["a"]})
        assert means["mrr@10"] == pytest.approx(0.5)


def test_pareto_front() -> None:
    # (cost, quality): point 1 is beaten by point 0 (cheaper and better); 2 is better but dearer.
    assert pareto_front([(1.0, 0.8), (2.0, 0.7), (3.0, 0.9), (3.0, 0.85)]) == [0, 2]
