"""Segment files: round trips, append-only packed segments, and that an unfinished write is never visible."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from patchseek.errors import InvalidInputError
from patchseek.search import Segment, SegmentStore, SegmentWriter, list_segments
from patchseek.search.segments import remove_stale_temp
from patchseek.types import PatchBag


def _bag(n: int, dim: int = 8, seed: int = 0) -> PatchBag:
    g = torch.Generator().manual_seed(seed)
    return PatchBag(
        torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1),
        torch.rand(n, generator=g),
        torch.randint(0, 5, (n, 2), generator=g),
        (5, 5),
    )


class TestDocumentStore:
    def test_round_trip(self, tmp_path: Path) -> None:
        store = SegmentStore(tmp_path)
        bags = [_bag(3), _bag(0), _bag(5, seed=1)]
        spans = store.write(1, 1, 7, bags)
        assert spans == [(0, 3), (3, 0), (3, 5)]
        doc = store.read(1, 1, 7)
        assert doc.vectors.dtype == np.float16 and doc.vectors.shape == (8, 8)
        unit = store.read_unit(1, 1, 7, 3, 5)
        torch.testing.assert_close(unit.vectors, bags[2].vectors.half().float())
        assert not [p for p in store.folder(1, 1).iterdir() if p.name.startswith(".tmp")]

    def test_derived_parts_are_dropped_when_a_document_is_rewritten(self, tmp_path: Path) -> None:
        store = SegmentStore(tmp_path)
        store.write(1, 1, 7, [_bag(3)])
        store.write_part(1, 1, 7, "codes", np.arange(3, dtype=np.uint8))
        assert store.read_part(1, 1, 7, "codes").tolist() == [0, 1, 2]  # type: ignore[union-attr]
        store.write(1, 1, 7, [_bag(4)])  # a reused id: the old codes must not survive
        assert store.read_part(1, 1, 7, "codes") is None
        with pytest.raises(ValueError):
            store.write_part(1, 1, 7, "vectors", np.zeros(3))

    def test_delete_removes_every_part(self, tmp_path: Path) -> None:
        store = SegmentStore(tmp_path)
        store.write(1, 1, 7, [_bag(3)])
        store.write_part(1, 1, 7, "codes", np.zeros(3, dtype=np.uint8))
        store.delete_document(1, 7)
        assert list(store.folder(1, 1).iterdir()) == []

    def test_failed_write_leaves_the_old_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        store = SegmentStore(tmp_path)
        store.write(1, 1, 7, [_bag(3)])
        before = np.array(store.read(1, 1, 7).vectors)

        def crash(fd: int) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(os, "fsync", crash)
        with pytest.raises(OSError):
            store.write(1, 1, 7, [_bag(6, seed=3)])
        monkeypatch.undo()
        np.testing.assert_array_equal(store.read(1, 1, 7).vectors, before)
        assert not [p for p in store.folder(1, 1).iterdir() if p.name.startswith(".tmp")]


class TestPackedSegments:
    def test_round_trip_in_chunks(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((10, 4)).astype(np.float32)
        codes = rng.integers(0, 256, size=(10, 2)).astype(np.uint8)
        with SegmentWriter(tmp_path, "a", 4, code_dtype=np.uint8, code_shape=(2,)) as writer:
            writer.append(vectors[:6], np.array([2, 0, 4]), codes=codes[:6], unit_ids=np.array([10, 11, 12]))
            writer.append(vectors[6:], np.array([4]), codes=codes[6:], unit_ids=np.array([13]))
            segment = writer.commit()
        again = Segment.open(segment.path)
        np.testing.assert_array_equal(again.vectors, vectors.astype(np.float16))
        np.testing.assert_array_equal(again.codes, codes)
        assert again.offsets.tolist() == [0, 2, 2, 6, 10] and again.unit_ids.tolist() == [10, 11, 12, 13]
        assert [s.path.name for s in list_segments(tmp_path)] == ["seg-a"]

    def test_uncommitted_segment_is_invisible_and_cleaned(self, tmp_path: Path) -> None:
        writer = SegmentWriter(tmp_path, "b", 4)
        writer.append(np.zeros((3, 4), np.float32), np.array([3]))
        assert list_segments(tmp_path) == []  # written bytes, no commit: nothing to read
        writer.abort()
        assert list(tmp_path.iterdir()) == []

    def test_writer_killed_mid_write_leaves_nothing_visible(self, tmp_path: Path) -> None:
        with SegmentWriter(tmp_path, "old", 4) as w:
            w.append(np.ones((2, 4), np.float32), np.array([2]))
            w.commit()
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_write_then_die, args=(tmp_path,))
        child.start()
        child.join(30)
        assert child.exitcode == 9
        assert [s.path.name for s in list_segments(tmp_path)] == ["seg-old"]  # the committed one only
        assert remove_stale_temp(tmp_path) == 1
        assert [p.name for p in tmp_path.iterdir()] == ["seg-old"]

    def test_append_only_and_shape_checks(self, tmp_path: Path) -> None:
        with SegmentWriter(tmp_path, "c", 4) as w:
            with pytest.raises(InvalidInputError):
                w.append(np.zeros((3, 5), np.float32), np.array([3]))
            with pytest.raises(InvalidInputError):
                w.append(np.zeros((3, 4), np.float32), np.array([3]), codes=np.zeros(3, np.uint8))
            w.commit()
        with pytest.raises(InvalidInputError):
            SegmentWriter(tmp_path, "c", 4)


def _write_then_die(root: Path) -> None:
    writer = SegmentWriter(root, "new", 4)
    writer.append(np.ones((1000, 4), np.float32), np.array([1000]))
    os._exit(9)  # killed before commit: no rename ever happens
