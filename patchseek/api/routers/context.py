from __future__ import annotations

import base64

from fastapi import APIRouter, Request

from patchseek.api.deps import SearchServiceDep
from patchseek.api.routers._responses import NamePath, errors
from patchseek.api.schemas import ContextItemPublic, ContextRequest, ContextResponse, MissingShard

router = APIRouter(prefix="/v1/collections/{name}/context", tags=["rag"])

_PREAMBLE = (
    "Use the numbered sources below (text and page images) to answer the question that follows. "
    "Cite sources as [n]."
)


@router.post("", response_model=ContextResponse, responses=errors(400, 404, 422))
def rag_context(
    name: NamePath, body: ContextRequest, request: Request, service: SearchServiceDep
) -> ContextResponse:
    """Top hits as citable context: text, citation, score and page images, plus a ready chat message."""
    result, items = service.context(
        name, query=body.query, top_k=body.top_k, with_images=body.images == "base64"
    )
    base = str(request.base_url).rstrip("/")
    public, parts = [], []
    lines = [_PREAMBLE]
    for item in items:
        hit = item.hit
        if body.images == "base64" and item.image_jpeg is not None:
            image_url: str | None = "data:image/jpeg;base64," + base64.b64encode(item.image_jpeg).decode()
        elif body.images == "url":
            image_url = f"{base}/v1/units/{hit.unit_id}/image"
        else:
            image_url = None
        public.append(
            ContextItemPublic(
                rank=item.rank,
                citation=item.citation,
                document=hit.document,
                document_id=hit.document_id,
                unit_id=hit.unit_id,
                media_type=hit.media_type,
                page=hit.page,
                t_start=hit.t_start,
                t_end=hit.t_end,
                score=hit.score,
                text=hit.text,
                image_url=image_url,
            )
        )
        lines.append(f"[{item.rank}] {item.citation}: {hit.text[:2000]}")
        if image_url is not None:
            parts.append({"type": "image_url", "image_url": {"url": image_url}})
    message = {"role": "user", "content": [{"type": "text", "text": "\n\n".join(lines)}, *parts]}
    return ContextResponse(
        query=body.query,
        items=public,
        message=message,
        partial=result.partial,
        missing_shards=[MissingShard(shard=i, reason=r) for i, r in result.missing_shards],  # type: ignore[arg-type]
    )
