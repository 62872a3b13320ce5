"""Exact retrieval over packed units on tiny hand-built vectors."""

from __future__ import annotations

import numpy as np
import torch

from patchseek.search.retriever import PackedIndex, UnitRows, search


def _index() -> PackedIndex:
    e = np.eye(4, dtype=np.float32)
    arrays = {
        10: np.stack([e[0], e[1], e[2]]),  # document 10: unit 1 = [e0, e1], unit 2 = [e2]
        20: np.stack([e[3], e[0]]),  # document 20: unit 3 = [], unit 4 = [e3, e0]
    }
    rows = [UnitRows(1, 10, 0, 2), UnitRows(2, 10, 2, 1), UnitRows(3, 20, 0, 0), UnitRows(4, 20, 0, 2)]
    return PackedIndex.build(rows, arrays, dim=4)


def test_ranking_and_scores() -> None:
    q = torch.eye(4)[[0, 1]]  # tokens e0, e1
    hits = search(_index(), q, top_k=10)
    assert [(h.unit_id, h.score) for h in hits] == [(1, 2.0), (4, 1.0), (2, 0.0)]  # empty unit 3 never hits


def test_top_k_mask_and_ties() -> None:
    index = _index()
    q = torch.eye(4)[[2]]
    assert [h.unit_id for h in search(index, q, top_k=1)] == [2]
    mask = index.doc_ids == 20
    assert [h.unit_id for h in search(index, q, top_k=5, unit_mask=mask)] == [4]
    # Equal scores keep index order.
    assert [h.unit_id for h in search(index, torch.eye(4)[[0]], top_k=2)] == [1, 4]


def test_empty_inputs() -> None:
    assert search(_index(), torch.zeros(0, 4), top_k=3) == []
    empty = PackedIndex.build([], {}, dim=4)
    assert search(empty, torch.eye(4), top_k=3) == []
