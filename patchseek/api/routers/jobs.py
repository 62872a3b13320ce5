from __future__ import annotations

from fastapi import APIRouter

from patchseek.api.db.models import Collection
from patchseek.api.deps import IdPath, JobServiceDep, PrincipalDep
from patchseek.api.routers._responses import errors
from patchseek.api.routers._views import job_public
from patchseek.api.schemas import JobPublic
from patchseek.api.services.keys import Principal

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _collection_name(service: JobServiceDep, job_id: int, principal: Principal) -> str:
    """The job's collection; a job of a collection outside the key's scope is a 404 like a missing one."""
    job = service.get(job_id)
    with service.ctx.db.session() as session:
        c = session.get(Collection, job.collection_id)
        name = c.name if c is not None else None
    principal.check_visible(name, f"job {job_id} does not exist")
    return name or ""


@router.get("/{job_id}", response_model=JobPublic, responses=errors(404, 422))
def get_job(job_id: IdPath, service: JobServiceDep, principal: PrincipalDep) -> JobPublic:
    """Status, progress and per-document results of an ingest or rebuild job."""
    name = _collection_name(service, job_id, principal)
    return job_public(service.get(job_id), name)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409, 422))
def cancel_job(job_id: IdPath, service: JobServiceDep, principal: PrincipalDep) -> JobPublic:
    """Cancel a queued or running job (documents already ingested stay)."""
    name = _collection_name(service, job_id, principal)
    return job_public(service.cancel(job_id), name)
