"""Request and response models of the HTTP API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

# Database ids are 32-bit integers (PostgreSQL INTEGER); anything outside is refused up front.
MAX_ID = 2_147_483_647
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
# A collection name, as created (``CollectionCreate.name``) and as it appears in URL paths.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# No C0 or C1 control characters except tab, newline and carriage return: PostgreSQL refuses NUL in text
# columns, and none of the others belongs in a description. Written for both pydantic and JSON Schema.
STORED_TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for columns written as UTC; PostgreSQL keeps the offset.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# A timestamp, always serialized with its UTC offset (RFC 3339 ``date-time``).
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
# Client text that is stored in the database.
StoredText = Annotated[str, Field(pattern=STORED_TEXT_PATTERN)]


# What ``CompressionConfig.from_dict`` accepts, for the OpenAPI document (the service validates; a test pins
# that these properties are the config's fields).
_INT = {"type": "integer"}
COMPRESSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "prune → merge → quantize settings (see CompressionConfig); missing keys take defaults",
    "properties": {
        "prune": {"enum": ["none", "topp", "adaptive"]},
        "prune_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "prune_k": {"type": "number"},
        "prune_min": {**_INT, "minimum": 1},
        "merge": {"enum": ["none", "hierarchical"]},
        "pool_factor": {**_INT, "minimum": 1},
        "quantizer": {"enum": ["none", "binary", "kmeans", "pq", "bebr"]},
        "binary_center": {"type": "boolean"},
        "kmeans_k": {**_INT, "minimum": 2, "maximum": 65536},
        "residual_bits": {"enum": [0, 1, 2, 4]},
        "pq_m": {**_INT, "minimum": 1},
        "pq_opq": {"type": "boolean"},
        "bebr_rounds": {"enum": [0, 1, 3]},
        "bebr_dim": {**_INT, "minimum": 0},
        "bebr_scoring": {"enum": ["asymmetric", "sdc"]},
        "keep": {"enum": ["none", "float16", "int8"]},
        "video_segment_frames": {**_INT, "minimum": 1},
        "seed": {**_INT, "minimum": 0},
    },
}
Compression = Annotated[dict[str, Any], WithJsonSchema(COMPRESSION_SCHEMA)]
# Upload metadata as ``validate_metadata`` accepts it: a flat object of scalars.
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": 64,
    "propertyNames": {"minLength": 1, "maxLength": 128},
    "additionalProperties": {
        "anyOf": [{"type": "string", "maxLength": 1024}, {"type": "number"}, {"type": "boolean"}]
    },
}
# Standard base64 with padding (``base64.b64decode(..., validate=True)``), at least one byte.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"


class ErrorPublic(BaseModel):
    """Every 4xx and 5xx answer: ``code`` is stable and machine-readable, ``detail`` says what to do."""

    detail: str
    code: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class ValidationErrorPublic(ErrorPublic):
    """A 422: the request did not match the schema (``errors`` lists each field) or its content was
    refused by the service (no ``errors``)."""

    errors: list[FieldError] = Field(default_factory=list)


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN)
    description: StoredText = Field(default="", max_length=4096)
    encoder: StoredText | None = Field(
        default=None, min_length=1, max_length=512, description="default: PATCHSEEK_ENCODER"
    )
    compression: Compression = Field(default_factory=dict)


class CollectionUpdate(BaseModel):
    """Encoder and compression are changed by a rebuild (``POST /v1/collections/{name}/rebuild``)."""

    model_config = ConfigDict(extra="forbid")

    description: StoredText | None = Field(default=None, max_length=4096)


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
    created_at: UtcDatetime
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
    created_at: UtcDatetime


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
    progress: int = Field(description="documents done (encoded or failed) of `total`")
    total: int = Field(description="documents in the job (rebuilds: documents to index again)")
    units_done: int = Field(
        default=0, description="ingest: pages, images and video frames encoded so far, in all documents"
    )
    units_total: int = Field(
        default=0,
        description="ingest: units of the documents opened so far (a PDF's pages, a video's expected "
        "frames or shots); it grows as each document is opened and equals `units_done` at the end",
    )
    documents: list[DocumentResultPublic]
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


# What ``str.strip`` removes (and U+FEFF), spelled out so that Python and JSON Schema read it alike.
_BLANK = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# A text query must contain something other than white space.
QUERY_TEXT_PATTERN = f"[^{_BLANK}]"


class SearchRequest(BaseModel):
    """A text ``query`` or an ``image_base64`` query (one of the two is required)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {
                    "required": ["query"],
                    "properties": {"query": {"type": "string", "pattern": QUERY_TEXT_PATTERN}},
                },
                {"required": ["image_base64"], "properties": {"image_base64": {"type": "string"}}},
            ]
        },
    )

    query: str | None = Field(default=None, max_length=4096, description="text query")
    image_base64: str | None = Field(
        default=None,
        max_length=20_000_000,
        description="image query (PNG, JPEG, WebP), base64",
        # Documented only: the router decodes it and answers a bad one as ``invalid_input``.
        json_schema_extra={"pattern": BASE64_PATTERN},
    )
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


class MissingShard(BaseModel):
    shard: int = Field(description="the shard's number, 0 .. PATCHSEEK_SHARDS - 1")
    reason: Literal["unavailable", "timeout", "error"] = Field(
        description="unavailable: not running or died; timeout: no answer within "
        "PATCHSEEK_SHARD_TIMEOUT_S; error: it failed (see the server's log)"
    )


class SearchResponse(BaseModel):
    query: str | None
    hits: list[SearchHit]
    took_ms: float
    units_searched: int
    partial: bool = Field(
        default=False,
        description="true when some shards of a sharded collection did not answer: the hits are the best "
        "of the shards that did (missing_shards names the others)",
    )
    missing_shards: list[MissingShard] = Field(default_factory=list)


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: StoredText | None = Field(
        default=None, min_length=1, max_length=512, description="default: the collection's"
    )
    compression: Compression | None = Field(default=None, description="default: the collection's")


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
    partial: bool = Field(default=False, description="as in a search answer: some shards did not answer")
    missing_shards: list[MissingShard] = Field(default_factory=list)


# Queries and qrels travel as the text of their files; the service checks their size against
# PATCHSEEK_EVAL_MAX_FILE_BYTES (this bound only keeps a request body finite).
EVAL_FILE_CHARS = 16_000_000


class EvaluationConfig(BaseModel):
    """One alternative: an index (``encoder`` and/or ``compression``, built as a shadow version) and/or
    search knobs; what is left out is the live collection's (knobs: the search defaults)."""

    model_config = ConfigDict(extra="forbid")

    name: StoredText | None = Field(
        default=None, min_length=1, max_length=64, description="row label; default: its settings"
    )
    encoder: StoredText | None = Field(default=None, min_length=1, max_length=512)
    compression: Compression | None = Field(default=None, description="the whole compression setting")
    candidates: int | None = Field(default=None, ge=1, le=10_000)
    stage1: Literal["auto", "exact", "dense", "faiss"] | None = None
    stage1_k: int | None = Field(default=None, ge=1, le=100_000)
    nprobe: int | None = Field(default=None, ge=1, le=4096)
    rerank: bool | None = None


class EvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: str = Field(
        min_length=1,
        max_length=EVAL_FILE_CHARS,
        description='queries file: qid<TAB>text lines, or BEIR JSONL ({"_id", "text"} per line)',
    )
    qrels: str = Field(
        min_length=1,
        max_length=EVAL_FILE_CHARS,
        description="judgments: TREC qrels 'qid 0 item relevance' (or BEIR qrels TSV); an item is a "
        "document name, name#page (1-based), name@seconds (video) or a unit id",
    )
    configs: list[EvaluationConfig] = Field(default_factory=list, max_length=64)
    promote: StoredText | None = Field(
        default=None, min_length=1, max_length=64, description="swap this configuration in at the end"
    )
    depth: int = Field(default=100, ge=1, le=1000, description="hits retrieved per query")


class EvaluationRow(BaseModel):
    """One configuration's figures: ranx measures, latency, bytes per page, fidelity to exact MaxSim."""

    model_config = ConfigDict(populate_by_name=True)

    config: str
    ndcg_10: float = Field(alias="ndcg@10")
    mrr_10: float = Field(alias="mrr@10")
    recall_10: float = Field(alias="recall@10")
    recall_100: float = Field(alias="recall@100")
    map: float
    exact_recall_10: float = Field(
        alias="exact_recall@10", description="share of the exact MaxSim top 10 units in this top 10"
    )
    p50_ms: float
    p95_ms: float
    bytes_per_page: float = Field(description="index bytes on disk per page / image / video unit")
    ram_bytes_per_page: float
    index_state: str | None = Field(description="the fitted codec / stage-1 state; null: scored exactly")
    settings: dict[str, Any]
    p_vs_live: dict[str, float | None] | None = Field(
        default=None, description="paired t-test p-values (ranx) against the live row"
    )


class EvaluationPublic(BaseModel):
    """An evaluation job; ``rows`` and the rest once it succeeded (``rows[0]`` is the live collection)."""

    id: int
    collection: str
    status: str
    progress: int = Field(description="configurations scored")
    total: int
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    queries: int | None = None
    unjudged_queries: int | None = None
    measures: list[str] = Field(default_factory=list)
    rows: list[EvaluationRow] = Field(default_factory=list)
    best: str | None = None
    significance: dict[str, Any] | None = None
    promoted: dict[str, Any] | None = None
    per_query: dict[str, dict[str, dict[str, float]]] | None = Field(
        default=None, description="config → query id → measure (GET of one evaluation)"
    )
    runs: dict[str, dict[str, list[str]]] | None = Field(
        default=None, description="config → query id → its top 10 judged labels, best first"
    )
