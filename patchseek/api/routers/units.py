from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from patchseek.api.db.models import Collection, Unit
from patchseek.api.deps import ContextDep, IdPath, PrincipalDep, SearchServiceDep
from patchseek.api.routers._responses import errors
from patchseek.api.services.keys import Principal
from patchseek.errors import NotFoundError

router = APIRouter(prefix="/v1/units", tags=["units"])
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


def _unit_blob(ctx: ContextDep, principal: Principal, unit_id: IdPath, thumbnail: bool) -> bytes:
    with ctx.db.session() as session:
        unit = session.get(Unit, unit_id)
        collection = session.get(Collection, unit.collection_id) if unit is not None else None
        if unit is None:
            raise NotFoundError(f"unit {unit_id} does not exist")
        principal.check_visible(collection.name if collection else None, f"unit {unit_id} does not exist")
        key = unit.thumb_blob if thumbnail else unit.image_blob
    return ctx.blobs.get(key)


@router.get(
    "/{unit_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **errors(404, 422)},
)
def unit_image(unit_id: IdPath, ctx: ContextDep, principal: PrincipalDep) -> Response:
    """The unit's rendered page / image / frame as JPEG."""
    return Response(_unit_blob(ctx, principal, unit_id, False), media_type="image/jpeg", headers=_IMMUTABLE)


@router.get(
    "/{unit_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **errors(404, 422)},
)
def unit_thumbnail(unit_id: IdPath, ctx: ContextDep, principal: PrincipalDep) -> Response:
    """A small JPEG of the unit (longest side ``PATCHSEEK_THUMBNAIL_SIZE``)."""
    return Response(_unit_blob(ctx, principal, unit_id, True), media_type="image/jpeg", headers=_IMMUTABLE)


@router.get(
    "/{unit_id}/heatmap",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **errors(404, 422)},
)
def unit_heatmap(
    unit_id: IdPath,
    query: Annotated[str, Query(min_length=1, max_length=4096)],
    ctx: ContextDep,
    principal: PrincipalDep,
    service: SearchServiceDep,
) -> Response:
    """The unit's image with the patches that match ``query`` highlighted (the MaxSim evidence)."""
    _unit_blob(ctx, principal, unit_id, True)  # existence and scope
    return Response(service.heatmap(unit_id, query), media_type="image/jpeg")
