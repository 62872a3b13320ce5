"""Opening a data dir written by patchseek 0.1 (per-document ``doc-<id>.<part>.npy`` files).

0.1 kept, per index version folder, three files per document (``vectors``, ``positions``,
``salience``) plus derived parts and ``codec/`` / ``ivf/`` folders, with each unit's row span in the
database (``Unit.patch_offset`` / ``n_patches``). ``migrate_legacy`` converts every such folder once
into packed segments of the index engine (a few thousand documents per segment), publishes them, and
removes the old files. It runs on every service start (``ServiceContext.from_settings``) and through
``patchseek migrate``; a folder that already has a manifest is left alone, so it is idempotent, and a
crash midway leaves the old files in place (the next start converts the folder again from scratch).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from patchseek.api.db.models import Collection, Document, IndexVersion, Unit
from patchseek.search.engine import MEDIA_CODES, UnitBatch
from patchseek.search.manifest import MANIFEST

log = logging.getLogger(__name__)

DOCS_PER_SEGMENT = 4096


@dataclass(frozen=True)
class MigrationReport:
    versions: int = 0
    documents: int = 0
    units: int = 0
    files_removed: int = 0


def legacy_folders(segment_dir: Path) -> list[tuple[int, int, Path]]:
    """``(collection id, version number, folder)`` of the version folders still in the 0.1 layout."""
    out: list[tuple[int, int, Path]] = []
    if not segment_dir.is_dir():
        return out
    for cdir in sorted(p for p in segment_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        for vdir in sorted(p for p in cdir.iterdir() if p.is_dir() and p.name.startswith("v")):
            if (vdir / MANIFEST).exists() or not any(vdir.glob("doc-*.vectors.npy")):
                continue
            out.append((int(cdir.name), int(vdir.name[1:]), vdir))
    return out


def migrate_legacy(ctx) -> MigrationReport:  # type: ignore[no-untyped-def]
    """Convert every 0.1 version folder under the data dir into segments; returns what was done."""
    report = MigrationReport()
    for collection_id, number, folder in legacy_folders(ctx.settings.segment_dir):
        with ctx.db.session() as session:
            version = session.scalar(
                select(IndexVersion).where(
                    IndexVersion.collection_id == collection_id, IndexVersion.number == number
                )
            )
            exists = session.get(Collection, collection_id) is not None
            if version is None or not exists:
                shutil.rmtree(folder, ignore_errors=True)  # files of a deleted collection / version
                continue
            session.expunge(version)
            rows = session.execute(
                select(Unit.document_id, Unit.ordinal, Unit.patch_offset, Unit.n_patches, Document.media_type)
                .join(Document, Document.id == Unit.document_id)
                .where(Unit.index_version_id == version.id, Document.status == "ready")
                .order_by(Unit.document_id, Unit.ordinal)
            ).all()
        by_doc: dict[int, list] = {}
        for r in rows:
            by_doc.setdefault(int(r.document_id), []).append(r)
        engine = ctx.version_index(version)
        names, n_units = [], 0
        doc_ids = sorted(by_doc)
        for start in range(0, len(doc_ids), DOCS_PER_SEGMENT):
            batches = []
            for doc_id in doc_ids[start : start + DOCS_PER_SEGMENT]:
                try:
                    parts = {
                        p: np.load(folder / f"doc-{doc_id}.{p}.npy", mmap_mode="r")
                        for p in ("vectors", "positions", "salience")
                    }
                except FileNotFoundError:
                    log.warning("document %s has no vectors in %s; it is left out", doc_id, folder)
                    continue
                units = by_doc[doc_id]
                spans = [(int(u.patch_offset), int(u.n_patches)) for u in units]
                rows_idx = (
                    np.concatenate([np.arange(o, o + n) for o, n in spans]) if spans else np.zeros(0, int)
                )
                batches.append(
                    UnitBatch(
                        doc_ids=np.full(len(units), doc_id, dtype=np.int64),
                        ordinals=np.array([u.ordinal for u in units], dtype=np.int32),
                        media=np.full(len(units), MEDIA_CODES.get(units[0].media_type or "", -1), np.int8),
                        lengths=np.array([n for _, n in spans], dtype=np.int64),
                        vectors=np.asarray(parts["vectors"][rows_idx], np.float16),
                        positions=np.asarray(parts["positions"][rows_idx], np.int16),
                        salience=np.asarray(parts["salience"][rows_idx], np.float16),
                    )
                )
                n_units += len(units)
            if batches:
                names.append(engine.write(UnitBatch.concat(batches, engine.dim)))
        engine.publish(names)  # fits the codec / stage-1 state if the collection is large enough
        removed = 0
        for p in list(folder.iterdir()):
            if p.name.startswith("doc-") and p.suffix == ".npy":
                p.unlink()
                removed += 1
            elif p.is_dir() and p.name in ("codec", "ivf"):
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        log.info("migrated %s: %d documents, %d units", folder, len(by_doc), n_units)
        report = MigrationReport(
            report.versions + 1,
            report.documents + len(by_doc),
            report.units + n_units,
            report.files_removed + removed,
        )
    return report
