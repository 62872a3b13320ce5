from __future__ import annotations

from fastapi import APIRouter

from patchseek.api.db.models import Collection
from patchseek.api.deps import IdPath, JobServiceDep, PrincipalDep
from patchseek.api.routers._responses import errors
from patchseek.api.routers._views import job_public
from patchseek.api.schemas import JobPublic
from patchseek.api.services.keys import Principal

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _collection_name(service: JobServiceDep, collection_id: int, principal: Principal) -> str:
    with service.ctx.db.session() as session:
        c = session.get(Collection, collection_id)
        name = c.name if c is not None else ""
    principal.check(name)
    return name


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404, 422))
def get_job(job_id: IdPath, service: JobServiceDep, principal: PrincipalDep) -> JobPublic:
    """Status, progress and per-document results of an ingest or rebuild job."""
    job = service.get(job_id)
    return job_public(job, _collection_name(service, job.collection_id, principal))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409, 422))
def cancel_job(job_id: IdPath, service: JobServiceDep, principal: PrincipalDep) -> JobPublic:
    """Cancel a queued or running job (documents already ingested stay)."""
    _collection_name(service, service.get(job_id).collection_id, principal)
    job = service.cancel(job_id)
    return job_public(job, _collection_name(service, job.collection_id, principal))
