"""Request and response models of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Database ids are 32-bit integers (PostgreSQL INTEGER); anything outside is refused up front.
MAX_ID = 2_147_483_647
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]


class ErrorPublic(BaseModel):
    detail: str
    code: str


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = Field(default="", max_length=4096)
    encoder: str | None = Field(default=None, max_length=512, description="default: PATCHSEEK_ENCODER")
    compression: dict[str, Any] = Field(default_factory=dict)


class CollectionUpdate(BaseModel):
    """Encoder and compression are changed by a rebuild (``POST /v1/collections/{name}/rebuild``)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=4096)


class IndexStats(BaseModel):
    """The active index version as the engine holds it: what a page costs, on disk and in RAM."""

    generation: int
    segments: int
    units: int
    rows: int
    state: str | None = Field(description="fitted codec / stage-1 state; null while scored exactly")
    fit: dict[str, Any] = Field(description="what the fit saw: vectors, sample, rule, coarse_k")
    disk_bytes: dict[str, int] = Field(description="bytes on disk by part (vectors, codes, dense, ...)")
    ram_bytes: dict[str, int] = Field(description="bytes resident in RAM by part (dense rows, IVF lists)")
    disk_bytes_per_unit: float
    ram_bytes_per_unit: float


class CollectionPublic(BaseModel):
    name: str
    description: str
    encoder: str
    compression: dict[str, Any]
    documents: int
    units: int
    created_at: datetime
    index: IndexStats | None = Field(default=None, description="index engine figures (GET of one collection)")


class DocumentPublic(BaseModel):
    id: int
    collection: str
    filename: str
    media_type: str | None
    sha256: str
    size_bytes: int
    status: str
    error: str | None
    error_code: str | None
    n_units: int
    metadata: dict[str, Any]
    created_at: datetime


class UnitPublic(BaseModel):
    id: int
    ordinal: int
    kind: str
    page: int | None
    t_start: float | None
    t_end: float | None
    width: int
    height: int
    image_url: str
    thumbnail_url: str


class DocumentDetail(DocumentPublic):
    units: list[UnitPublic]


class DocumentResultPublic(BaseModel):
    filename: str
    status: Literal["ready", "failed", "duplicate"]
    document_id: int | None
    n_units: int
    media_type: str | None
    error: str | None
    code: str | None
    duplicate_of: int | None


class JobPublic(BaseModel):
    id: int
    collection: str
    kind: str
    status: str
    progress: int
    total: int
    documents: list[DocumentResultPublic]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(default=None, max_length=4096, description="text query")
    image_base64: str | None = Field(default=None, max_length=20_000_000, description="image query")
    top_k: int = Field(default=10, ge=1, le=1000)
    document_ids: list[DbId] | None = Field(default=None, max_length=10_000)
    media_types: list[Literal["pdf", "image", "video"]] | None = None
    candidates: int = Field(default=100, ge=1, le=10_000, description="shortlist size from the codes")
    rerank: bool = Field(default=True, description="re-score the shortlist exactly on stored vectors")
    metadata: dict[str, str | int | float | bool] | None = Field(
        default=None, max_length=32, description="only documents whose upload metadata has these fields"
    )
    stage1: Literal["auto", "exact", "dense", "faiss"] = Field(
        default="auto",
        description="candidate generator; auto scans small collections exactly, larger ones by their dense "
        "summary rows (no quantizer) or FAISS inverted lists",
    )
    stage1_k: int = Field(default=1000, ge=1, le=100_000, description="units stage 1 passes on")
    nprobe: int | None = Field(default=None, ge=1, le=4096, description="centroids probed per query token")


class SearchHit(BaseModel):
    unit_id: int
    document_id: int
    document: str
    media_type: str
    kind: str
    page: int | None
    t_start: float | None
    t_end: float | None
    score: float
    text: str
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    query: str | None
    hits: list[SearchHit]
    took_ms: float
    units_searched: int


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: str | None = Field(default=None, max_length=512, description="default: the collection's")
    compression: dict[str, Any] | None = Field(default=None, description="default: the collection's")


class ContextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4096)
    top_k: int = Field(default=5, ge=1, le=50)
    images: Literal["url", "base64", "none"] = Field(
        default="url", description="page images as absolute URLs, inline data URLs, or left out"
    )


class ContextItemPublic(BaseModel):
    rank: int
    citation: str
    document: str
    document_id: int
    unit_id: int
    media_type: str
    page: int | None
    t_start: float | None
    t_end: float | None
    score: float
    text: str
    image_url: str | None


class ContextResponse(BaseModel):
    """Retrieved context for a chat app. ``message`` is an OpenAI-style user message (text and
    image_url content parts) that can be sent as is, before the user's question."""

    query: str
    items: list[ContextItemPublic]
    message: dict[str, Any]
