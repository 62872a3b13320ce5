from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from patchseek import metrics
from patchseek.api.db.models import Collection, IndexVersion, Job, Unit
from patchseek.api.deps import ContextDep
from patchseek.api.routers._responses import errors

router = APIRouter(tags=["health"])
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_metrics_key(request: Request, key: Annotated[str | None, Depends(_api_key)] = None) -> None:
    """Unless ``PATCHSEEK_METRICS_REQUIRE_KEY`` is false, the caller needs an unscoped key once any key
    exists (the metrics name every collection)."""
    if request.app.state.ctx.settings.metrics_require_key is False:
        return
    request.app.state.keys.authenticate(key).require_admin()


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_metrics_key)],
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}, **errors(401, 403)},
)
def prometheus_metrics(ctx: ContextDep) -> Response:
    """Prometheus metrics: request latency, queue depth, ingest throughput, index size."""
    with ctx.db.session() as session:
        counts = dict(
            session.execute(
                select(Job.status, func.count(Job.id))
                .where(Job.status.in_(("queued", "running")))
                .group_by(Job.status)
            ).all()
        )
        sizes = session.execute(
            select(
                Collection.name,
                func.max(IndexVersion.dim),
                func.count(Unit.id),
                func.coalesce(func.sum(Unit.n_patches), 0),
            )
            .select_from(Collection)
            .outerjoin(IndexVersion, IndexVersion.id == Collection.active_version_id)
            .outerjoin(Unit, Unit.index_version_id == Collection.active_version_id)
            .group_by(Collection.name)
        ).all()
    metrics.QUEUE_DEPTH.set(counts.get("queued", 0))
    metrics.JOBS_RUNNING.set(counts.get("running", 0))
    metrics.INDEX_UNITS.clear()
    metrics.INDEX_BYTES.clear()
    for name, dim, n_units, n_patches in sizes:
        metrics.INDEX_UNITS.labels(name).set(n_units)
        # A segment row: float16 vector (2·dim B) + two int16 positions (4 B) + float16 salience (2 B).
        metrics.INDEX_BYTES.labels(name).set(int(n_patches) * (2 * int(dim or 0) + 6))
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
