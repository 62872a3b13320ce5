"""Database rows to response schemas."""

from __future__ import annotations

from patchseek.api.db.models import Document, Job, Unit
from patchseek.api.schemas import (
    DocumentDetail,
    DocumentPublic,
    DocumentResultPublic,
    JobPublic,
    UnitPublic,
)


def unit_urls(unit_id: int) -> tuple[str, str]:
    return f"/v1/units/{unit_id}/image", f"/v1/units/{unit_id}/thumbnail"


def document_public(doc: Document, collection: str) -> DocumentPublic:
    return DocumentPublic(
        id=doc.id,
        collection=collection,
        filename=doc.filename,
        media_type=doc.media_type,
        sha256=doc.sha256,
        size_bytes=doc.size_bytes,
        status=doc.status,
        error=doc.error,
        error_code=doc.error_code,
        n_units=doc.n_units,
        metadata=doc.meta or {},
        created_at=doc.created_at,
    )


def unit_public(unit: Unit) -> UnitPublic:
    image_url, thumbnail_url = unit_urls(unit.id)
    return UnitPublic(
        id=unit.id,
        ordinal=unit.ordinal,
        kind=unit.kind,
        page=unit.page,
        t_start=unit.t_start,
        t_end=unit.t_end,
        width=unit.width,
        height=unit.height,
        image_url=image_url,
        thumbnail_url=thumbnail_url,
    )


def document_detail(doc: Document, collection: str, units: list[Unit]) -> DocumentDetail:
    return DocumentDetail(
        **document_public(doc, collection).model_dump(), units=[unit_public(u) for u in units]
    )


def job_public(job: Job, collection: str) -> JobPublic:
    return JobPublic(
        id=job.id,
        collection=collection,
        kind=job.kind,
        status=job.status,
        progress=job.progress,
        total=job.total,
        units_done=job.units_done,
        units_total=job.units_total,
        documents=[DocumentResultPublic(**d) for d in job.result.get("documents", [])],
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
