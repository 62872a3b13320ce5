from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from pydantic import WithJsonSchema
from sqlalchemy import select

from patchseek.api.db.models import Document, Unit
from patchseek.api.deps import ContextDep, IdPath, IngestServiceDep, JobServiceDep
from patchseek.api.routers._responses import NamePath, errors
from patchseek.api.routers._views import document_detail, document_public, job_public
from patchseek.api.schemas import MAX_ID, METADATA_SCHEMA, DocumentDetail, DocumentPublic, JobPublic
from patchseek.api.services.collections import get_collection
from patchseek.errors import InvalidInputError, NotFoundError

router = APIRouter(prefix="/v1/collections/{name}/documents", tags=["documents"])
_CHUNK = 1 << 20


def _read_limited(upload: UploadFile, limit: int) -> bytes | None:
    """Read an upload, stopping as soon as it passes ``limit`` bytes (None: too large; that file fails
    alone, with ``file_too_large``, the rest of the batch is ingested)."""
    chunks, size = [], 0
    while chunk := upload.file.read(_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise InvalidInputError(f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInputError("metadata must be a JSON object")
    return value


@router.post(
    "",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": JobPublic, "description": "Ingested (wait=true)"},
        **errors(400, 404, 409, 413, 422),
    },
)
def upload_documents(
    name: NamePath,
    request: Request,
    response: Response,
    files: Annotated[list[UploadFile], File(min_length=1, description="PDFs, images or videos")],
    service: IngestServiceDep,
    jobs: JobServiceDep,
    wait: Annotated[
        bool, Query(description="ingest before answering (200) instead of queueing (202)")
    ] = False,
    metadata: Annotated[
        str | None,
        Form(description='JSON object stored on every uploaded document, e.g. {"team": "ops"}'),
        WithJsonSchema(METADATA_SCHEMA),
    ] = None,
) -> JobPublic:
    """Upload files and ingest them in a job; poll ``/v1/jobs/{id}`` unless ``wait=true``."""
    limit = service.ctx.settings.max_upload_bytes
    payload = [(f.filename or "upload", _read_limited(f, limit)) for f in files]
    meta = _metadata(metadata)
    if not wait:
        job = service.submit(name, payload, metadata=meta)
        if (worker := getattr(request.app.state, "worker", None)) is not None:
            worker.wake()
        return job_public(job, name)
    # A heavy slot first (503 before anything is stored when the server is saturated), then a job this
    # request runs itself, with a heartbeat so that a restart re-queues it should the process die.
    with service.ctx.heavy_slot():
        job = service.submit(name, payload, status="running", metadata=meta)
        if job.status == "running":
            with jobs.heartbeat(job.id):
                job = service.run_job(job.id)
    response.status_code = status.HTTP_200_OK
    return job_public(job, name)


@router.get("", response_model=list[DocumentPublic], responses=errors(404, 422))
def list_documents(
    name: NamePath,
    ctx: ContextDep,
    status_filter: Annotated[str | None, Query(alias="status", pattern="^(pending|ready|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[DocumentPublic]:
    with ctx.db.session() as session:
        collection = get_collection(session, name)
        stmt = select(Document).where(Document.collection_id == collection.id)
        if status_filter:
            stmt = stmt.where(Document.status == status_filter)
        docs = session.scalars(stmt.order_by(Document.id).offset(offset).limit(limit)).all()
        return [document_public(d, name) for d in docs]


@router.get("/{document_id}", response_model=DocumentDetail, responses=errors(404, 422))
def get_document(name: NamePath, document_id: IdPath, ctx: ContextDep) -> DocumentDetail:
    with ctx.db.session() as session:
        collection = get_collection(session, name)
        doc = session.get(Document, document_id)
        if doc is None or doc.collection_id != collection.id:
            raise NotFoundError(f"document {document_id} is not in collection {name!r}")
        units = session.scalars(select(Unit).where(Unit.document_id == doc.id).order_by(Unit.ordinal)).all()
        return document_detail(doc, name, list(units))


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 422))
def delete_document(name: NamePath, document_id: IdPath, service: IngestServiceDep) -> None:
    service.delete_document(name, document_id)
