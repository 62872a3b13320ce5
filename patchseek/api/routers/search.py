from __future__ import annotations

import base64
import binascii
import re
from contextlib import nullcontext

from fastapi import APIRouter

from patchseek.api.deps import SearchServiceDep
from patchseek.api.routers._responses import NamePath, errors
from patchseek.api.routers._views import unit_urls
from patchseek.api.schemas import (
    QUERY_TEXT_PATTERN,
    MissingShard,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from patchseek.errors import InvalidInputError

_QUERY_TEXT = re.compile(QUERY_TEXT_PATTERN)
router = APIRouter(prefix="/v1/collections/{name}/search", tags=["search"])


@router.post("", response_model=SearchResponse, responses=errors(400, 404, 413, 415, 422))
def search(name: NamePath, body: SearchRequest, service: SearchServiceDep) -> SearchResponse:
    if body.image_base64 is None and (body.query is None or not _QUERY_TEXT.search(body.query)):
        raise InvalidInputError("give a non-empty text query or an image")
    image = None
    if body.image_base64 is not None:
        try:
            image = base64.b64decode(body.image_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInputError("image_base64 is not valid base64") from exc
        if not image:
            raise InvalidInputError("image_base64 is empty; send the bytes of a PNG, JPEG or WebP image")
    # Decoding and encoding a query image is heavy work: it waits for a slot (PATCHSEEK_MAX_HEAVY_REQUESTS).
    with service.ctx.heavy_slot() if image is not None else nullcontext():
        result = service.search(
            name,
            query=body.query,
            image=image,
            top_k=body.top_k,
            document_ids=body.document_ids,
            media_types=body.media_types,
            candidates=body.candidates,
            rerank=body.rerank,
            stage1=body.stage1,
            stage1_k=body.stage1_k,
            nprobe=body.nprobe,
            metadata=body.metadata,
        )
    hits = []
    for h in result.hits:
        image_url, thumbnail_url = unit_urls(h.unit_id)
        hits.append(
            SearchHit(
                unit_id=h.unit_id,
                document_id=h.document_id,
                document=h.document,
                media_type=h.media_type,
                kind=h.kind,
                page=h.page,
                t_start=h.t_start,
                t_end=h.t_end,
                score=h.score,
                text=h.text,
                image_url=image_url,
                thumbnail_url=thumbnail_url,
            )
        )
    return SearchResponse(
        query=result.query,
        hits=hits,
        took_ms=result.took_ms,
        units_searched=result.n_units,
        partial=result.partial,
        missing_shards=[MissingShard(shard=i, reason=r) for i, r in result.missing_shards],  # type: ignore[arg-type]
    )
