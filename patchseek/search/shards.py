"""Merging the shortlists of a collection's shards into one answer (no Ray here: ``sharded.py`` serves).

A collection is split by segment: shard ``i`` of ``n`` is the snapshot restricted to the segments that
``shard_of`` sends to ``i`` (``Snapshot.shard``). Stages 1 and 2 score each segment on its own, so a
shard scores its units exactly as the whole snapshot does; only the cuts are global. Each shard returns
its own ``keep`` best units by stage-2 score, re-scored exactly (``Snapshot.shortlist``), and
``merge_shortlists`` redoes the whole snapshot's two cuts on their union:

- ``mode="unsharded"`` (default): the global ``keep`` best by stage-2 score, then the ``top_k`` best of
  those by exact score. The union holds every unit of the whole snapshot's shortlist (a unit among the
  global ``keep`` best is among its own shard's ``keep`` best), ties break on the same manifest-wide
  keys, so the answer is the unsharded one: same units, the same exact scores.
- ``mode="union"``: the ``top_k`` best of the whole union by exact score. Each shard reranked its own
  ``keep``, so up to ``n · keep`` units were scored exactly: the answer's exact scores can only be
  higher than the unsharded one's (recall against exact MaxSim can only improve), at no extra cost.

Without a rerank (``rerank=false``, a codec-less exact scan or FAISS candidates whose stage 2 is already
exact) both modes take the ``top_k`` best of the union by stage-2 score: the unsharded answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from patchseek.search.base import top_k
from patchseek.search.engine import EngineResult, Shortlist

MergeMode = Literal["unsharded", "union"]
MERGE_MODES: tuple[str, ...] = ("unsharded", "union")


def merge_shortlists(
    parts: Sequence[Shortlist], top_k_hits: int, *, mode: MergeMode = "unsharded"
) -> EngineResult:
    """The collection's ``top_k_hits`` best units from its shards' shortlists (see the module doc).

    ``parts`` may miss shards (those that did not answer): the answer is then the best of the shards
    that did. A unit listed by two shards (they read manifests of different generations, across a merge)
    counts once. Timings are the slowest shard's per stage (shards run side by side); ``n_units`` and
    ``n_stage1`` are summed.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode {mode!r}: expected one of {list(MERGE_MODES)}")
    merged = _concat(parts)
    if merged.keys.size == 0:
        return merged.result(top_k_hits)
    if merged.exact is not None and mode == "unsharded":
        chosen, _ = top_k(merged.approx, merged.keys, merged.keep)  # the whole snapshot's stage-2 cut
        merged = _take(merged, np.isin(merged.keys, chosen))
    return merged.result(top_k_hits)


def _concat(parts: Sequence[Shortlist]) -> Shortlist:
    answered = [p for p in parts if p.keys.size]
    # Scores are exact only if every shard with units reranked (the whole snapshot reranks only when
    # every segment can); otherwise the final cut is by stage-2 scores, as unsharded.
    reranked = bool(answered) and all(p.exact is not None for p in answered)

    def cat(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([np.zeros(0, dtype), *(getattr(p, name) for p in answered)]).astype(dtype)

    timings: dict[str, float] = {}
    for p in parts:
        for k, v in p.timings_ms.items():
            timings[k] = max(timings.get(k, 0.0), v)
    merged = Shortlist(
        keys=cat("keys", np.int64),
        approx=cat("approx", np.float32),
        exact=cat("exact", np.float32) if reranked else None,
        doc_ids=cat("doc_ids", np.int64),
        ordinals=cat("ordinals", np.int64),
        keep=max((p.keep for p in parts), default=0),
        stage1=next((p.stage1 for p in [*answered, *parts]), "exact"),
        n_stage1=sum(p.n_stage1 for p in parts),
        n_units=sum(p.n_units for p in parts),
        generation=max((p.generation for p in parts), default=0),
        timings_ms=timings,
    )
    # One entry per unit (doc_id, ordinal), its best-scored copy: only shards that read manifests of
    # different generations (a merge in between) can list a unit twice.
    unit = merged.doc_ids * (1 << 32) + merged.ordinals
    order = np.lexsort((-merged.scores, unit))
    first = np.ones(unit.size, dtype=bool)
    first[1:] = unit[order][1:] != unit[order][:-1]
    if first.all():
        return merged
    mask = np.zeros(unit.size, dtype=bool)
    mask[order[first]] = True
    return _take(merged, mask)


def _take(s: Shortlist, mask: np.ndarray) -> Shortlist:
    return Shortlist(
        s.keys[mask],
        s.approx[mask],
        None if s.exact is None else s.exact[mask],
        s.doc_ids[mask],
        s.ordinals[mask],
        s.keep,
        s.stage1,
        s.n_stage1,
        s.n_units,
        s.generation,
        s.timings_ms,
    )
