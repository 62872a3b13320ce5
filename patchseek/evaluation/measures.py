"""Standard retrieval measures from ranx (nDCG, MRR, recall, MAP and a paired significance test).

Nothing is computed by hand here: this module only turns ``{qid: [item, ...]}`` ranked lists into
ranx ``Run``s (scores that fall with the rank, so ranx ranks exactly as the service did) and reads
ranx's answers back as plain floats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from patchseek.errors import MissingDependencyError

MEASURES = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")
# ranx's paired tests: Student's paired t-test, Fisher's randomization test.
STAT_TESTS = ("student", "fisher")


def _ranx() -> Any:
    try:
        import ranx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "evaluation needs ranx and matplotlib: pip install 'patchseek[eval]'"
        ) from exc
    return ranx


def _qrels(qrels: Mapping[str, Mapping[str, int]]) -> Any:
    return _ranx().Qrels.from_dict({q: dict(j) for q, j in qrels.items()})


def _run(ranked: Mapping[str, Sequence[str]], name: str) -> Any:
    """A ranx Run whose scores (n, n-1, ..., 1) keep the service's order; ties cannot reorder it."""
    return _ranx().Run.from_dict(
        {q: {item: float(len(items) - i) for i, item in enumerate(items)} for q, items in ranked.items()},
        name=name,
    )


def score_run(
    qrels: Mapping[str, Mapping[str, int]],
    ranked: Mapping[str, Sequence[str]],
    measures: Sequence[str] = MEASURES,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query values of ``measures`` (ranx names) for ranked lists ``{qid: [item, ...]}``.

    Every qid of ``qrels`` must have a (possibly empty) list. Returns ``({measure: mean},
    {qid: {measure: value}})``.
    """
    ranx = _ranx()
    run = _run(ranked, "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety notes on ranx's kernels
        means = ranx.evaluate(_qrels(qrels), run, list(measures), make_comparable=True)
    if len(measures) == 1:
        means = {measures[0]: means}
    per_query: dict[str, dict[str, float]] = {}
    for measure in measures:
        for qid, value in run.scores[measure].items():
            per_query.setdefault(qid, {})[measure] = float(value)
    return {m: float(means[m]) for m in measures}, per_query


def paired_test(
    qrels: Mapping[str, Mapping[str, int]],
    baseline: Mapping[str, Sequence[str]],
    other: Mapping[str, Sequence[str]],
    measures: Sequence[str] = ("ndcg@10", "mrr@10"),
    *,
    stat_test: str = "student",
) -> dict[str, float | None]:
    """p-value per measure of ranx's paired ``stat_test`` between two runs over the same queries
    (None where it is undefined: both runs score every query alike)."""
    ranx = _ranx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = ranx.compare(
            _qrels(qrels),
            [_run(baseline, "baseline"), _run(other, "other")],
            metrics=list(measures),
            stat_test=stat_test,
            make_comparable=True,
        )
    comparisons = report.to_dict()["other"]["comparisons"]["baseline"]
    out: dict[str, float | None] = {}
    for m in measures:
        p = float(comparisons[m])
        out[m] = None if math.isnan(p) else p
    return out
