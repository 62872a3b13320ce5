from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from patchseek.api.db.models import Collection, Job
from patchseek.api.deps import CollectionServiceDep, EvaluationServiceDep, IdPath, PrincipalDep
from patchseek.api.routers._responses import NamePath, errors
from patchseek.api.schemas import EvaluationPublic, EvaluationRequest, EvaluationRow
from patchseek.api.services.keys import Principal

router = APIRouter(tags=["evaluations"])


def evaluation_public(job: Job, collection: str, *, detail: bool = True) -> EvaluationPublic:
    result = job.result or {}
    return EvaluationPublic(
        id=job.id,
        collection=collection,
        status=job.status,
        progress=job.progress,
        total=job.total,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        queries=result.get("queries"),
        unjudged_queries=result.get("unjudged_queries"),
        measures=result.get("measures", []),
        rows=[EvaluationRow.model_validate(r) for r in result.get("rows", [])],
        best=result.get("best"),
        significance=result.get("significance"),
        promoted=result.get("promoted"),
        per_query=result.get("per_query") if detail else None,
        runs=result.get("runs") if detail else None,
    )


def _visible(service: EvaluationServiceDep, job_id: int, principal: Principal) -> tuple[Job, str]:
    """The evaluation and its collection; one outside the key's scope is a 404 like a missing one."""
    job = service.get(job_id)
    with service.ctx.db.session() as session:
        c = session.get(Collection, job.collection_id)
        name = c.name if c is not None else None
    principal.check_visible(name, f"evaluation {job_id} does not exist")
    return job, name or ""


@router.post(
    "/v1/collections/{name}/evaluations",
    response_model=EvaluationPublic,
    response_model_by_alias=True,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(400, 403, 404, 409, 422),
)
def create_evaluation(
    name: NamePath,
    body: EvaluationRequest,
    request: Request,
    service: EvaluationServiceDep,
    collections: CollectionServiceDep,
    principal: PrincipalDep,
) -> EvaluationPublic:
    """Queue an evaluation: the judged queries run on the live collection and on each configuration
    (a shadow index version for a compression or encoder, never served), side by side; the shadows are
    dropped unless ``promote`` names one. A malformed file, an unknown judged item or no judged query
    is a 422 (``invalid_evaluation_input`` / ``unknown_judged_item``)."""
    current = collections.get(name)[0].encoder
    for config in body.configs:
        principal.require_encoder_change(config.encoder, current)
    job = service.submit(
        name,
        queries=body.queries,
        qrels=body.qrels,
        configs=[c.model_dump(exclude_none=True) for c in body.configs],
        promote=body.promote,
        depth=body.depth,
    )
    if (worker := getattr(request.app.state, "worker", None)) is not None:
        worker.wake()
    return evaluation_public(job, name)


@router.get(
    "/v1/collections/{name}/evaluations",
    response_model=list[EvaluationPublic],
    response_model_by_alias=True,
    responses=errors(404, 422),
)
def list_evaluations(name: NamePath, service: EvaluationServiceDep) -> list[EvaluationPublic]:
    """The collection's latest 20 evaluations, newest first (without per-query results)."""
    return [evaluation_public(job, name, detail=False) for job in service.recent(name)]


@router.get(
    "/v1/evaluations/{job_id}",
    response_model=EvaluationPublic,
    response_model_by_alias=True,
    responses=errors(404, 422),
)
def get_evaluation(
    job_id: IdPath, service: EvaluationServiceDep, principal: PrincipalDep
) -> EvaluationPublic:
    """Status and, once it succeeded, the table (one row per configuration, the live one first), the
    paired test of the best row against the live one, per-query measures and runs."""
    job, name = _visible(service, job_id, principal)
    return evaluation_public(job, name)


@router.get(
    "/v1/evaluations/{job_id}/plot",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **errors(404, 409, 422)},
)
def evaluation_plot(job_id: IdPath, service: EvaluationServiceDep, principal: PrincipalDep) -> Response:
    """PNG: nDCG@10 against bytes per page and against p50 latency, Pareto fronts marked."""
    _visible(service, job_id, principal)
    return Response(service.plot(job_id), media_type="image/png")
