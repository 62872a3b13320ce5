"""Request and response models of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorPublic(BaseModel):
    detail: str
    code: str


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = Field(default="", max_length=4096)
    encoder: str | None = Field(default=None, max_length=512, description="default: PATCHSEEK_ENCODER")
    compression: dict[str, Any] = Field(default_factory=dict)


class CollectionPublic(BaseModel):
    name: str
    description: str
    encoder: str
    compression: dict[str, Any]
    documents: int
    units: int
    created_at: datetime


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
    document_ids: list[int] | None = Field(default=None, max_length=10_000)
    media_types: list[Literal["pdf", "image", "video"]] | None = None


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
