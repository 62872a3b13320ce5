from __future__ import annotations

from fastapi import APIRouter

from patchseek.api.db.models import Collection
from patchseek.api.deps import JobServiceDep
from patchseek.api.routers._views import job_public
from patchseek.api.schemas import JobPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _collection_name(service: JobServiceDep, collection_id: int) -> str:
    with service.ctx.db.session() as session:
        c = session.get(Collection, collection_id)
        return c.name if c is not None else ""


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: int, service: JobServiceDep) -> JobPublic:
    job = service.get(job_id)
    return job_public(job, _collection_name(service, job.collection_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: int, service: JobServiceDep) -> JobPublic:
    job = service.cancel(job_id)
    return job_public(job, _collection_name(service, job.collection_id))
