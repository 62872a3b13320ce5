from __future__ import annotations

from fastapi import APIRouter, Response

from patchseek.api.db.models import Unit
from patchseek.api.deps import ContextDep
from patchseek.errors import NotFoundError

router = APIRouter(prefix="/v1/units", tags=["units"])


def _blob(ctx: ContextDep, unit_id: int, thumbnail: bool) -> Response:
    with ctx.db.session() as session:
        unit = session.get(Unit, unit_id)
        if unit is None:
            raise NotFoundError(f"unit {unit_id} does not exist")
        key = unit.thumb_blob if thumbnail else unit.image_blob
    return Response(
        ctx.blobs.get(key),
        media_type="image/jpeg",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.get("/{unit_id}/image", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def unit_image(unit_id: int, ctx: ContextDep) -> Response:
    """The unit's rendered page / image / frame as JPEG."""
    return _blob(ctx, unit_id, thumbnail=False)


@router.get("/{unit_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def unit_thumbnail(unit_id: int, ctx: ContextDep) -> Response:
    return _blob(ctx, unit_id, thumbnail=True)
