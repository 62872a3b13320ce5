"""Retrieval evaluation: query and qrels formats, ranx measures, the quality/cost picture."""

from __future__ import annotations

from patchseek.evaluation.formats import (
    EvaluationInputError,
    JudgedItem,
    UnknownItemError,
    parse_item,
    read_qrels,
    read_queries,
)
from patchseek.evaluation.measures import MEASURES, STAT_TESTS, paired_test, score_run
from patchseek.evaluation.plot import pareto_front, plot_png

__all__ = [
    "MEASURES",
    "STAT_TESTS",
    "EvaluationInputError",
    "JudgedItem",
    "UnknownItemError",
    "paired_test",
    "pareto_front",
    "parse_item",
    "plot_png",
    "read_qrels",
    "read_queries",
    "score_run",
]
