"""One ``Settings`` object for every process (CLI, API, worker), read from ``PATCHSEEK_*`` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every field can be set from the environment as ``PATCHSEEK_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="PATCHSEEK_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("patchseek-data"), description="blobs, segment files, SQLite db")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite in data_dir if unset")
    encoder: str = Field(default="lexical", description="'lexical' or a colpali-engine model id / local dir")
    encoder_revision: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=4, ge=1)
    max_image_pixels: int = Field(default=1024 * 1024, description="encoder input resolution cap")

    # sources
    pdf_dpi: int = Field(default=100, ge=36, le=600)
    max_pages: int = Field(default=2000, ge=1, description="pages per PDF before it is refused")
    image_max_side: int = Field(default=4096, ge=64, description="larger images are downscaled")
    video_interval: float = Field(default=1.0, gt=0, description="seconds between sampled video frames")
    video_max_frames: int = Field(default=3600, ge=1, description="units (frames or shots) per video")
    video_sampling: Literal["interval", "scenes"] = Field(
        default="interval",
        description="'interval': a frame every video_interval seconds; 'scenes': one unit per shot "
        "(PySceneDetect), spanning the shot, its image the shot's middle frame",
    )
    video_min_shot_seconds: float = Field(default=0.5, gt=0, description="shortest shot (scenes sampling)")
    video_scene_threshold: float = Field(
        default=3.0,
        gt=0,
        description="a cut: a frame changes this many times more than its neighbours (scenes sampling)",
    )
    thumbnail_size: int = Field(default=256, ge=32)
    ocr: bool = Field(default=True, description="OCR images and video frames for the lexical encoder")

    # API
    api_keys: list[str] = Field(default_factory=list)
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    max_top_k: int = Field(default=1000, ge=1)
    # evaluations (``patchseek eval``, ``POST /v1/collections/{name}/evaluations``)
    eval_max_queries: int = Field(default=1000, ge=1, description="judged queries one evaluation runs")
    eval_max_file_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="size of a queries or qrels file an evaluation reads"
    )
    eval_max_configs: int = Field(default=8, ge=1, description="configurations one evaluation compares")
    worker_in_process: bool = True
    job_stale_seconds: float = Field(
        default=300, gt=0, description="a running job without a heartbeat for this long is re-queued"
    )
    # web/contract
    metrics_require_key: bool | None = Field(
        default=None,
        description="/metrics needs an unscoped X-API-Key (it names every collection); unset: yes once "
        "any API key exists",
    )

    # safety
    max_page_pixels: int = Field(
        default=4096 * 4096, ge=65536, description="rendered pixels per PDF page; larger pages drawn smaller"
    )
    max_decode_pixels: int = Field(
        default=40_000_000,
        ge=65536,
        description="decoded pixels per image (uploads and image queries); larger ones get image_too_large",
    )
    max_heavy_requests: int = Field(
        default=2, ge=1, description="ingests and image queries that render, decode and encode at once"
    )
    heavy_wait_seconds: float = Field(
        default=30, gt=0, description="how long a heavy request waits for a slot before a 503 server_busy"
    )
    encoders: list[str] = Field(
        default_factory=list,
        description="encoders clients may choose (JSON list); PATCHSEEK_ENCODER is always allowed",
    )
    segment_rows: int = Field(
        default=1 << 18,
        ge=1,
        description="patch rows (~64 MB float16 at 128-d) an ingest or rebuild buffers before they become "
        "one segment; smaller: more, smaller segments for the merge policy to combine",
    )
    job_heartbeat_seconds: float = Field(
        default=5,
        gt=0,
        description="how often a running job's worker proves it is alive; 4 missed beats re-queue the job",
    )
    orphan_grace_seconds: float = Field(
        default=3600,
        ge=0,
        description="blobs no document or unit references, and segment files no manifest lists, are "
        "removed once older than this (workers sweep at start and then this often; `patchseek gc`); it "
        "must exceed the longest upload request, whose blobs are written before its rows commit",
    )

    # Ray (extra ``ray``): ingest and rebuild jobs as Ray Data jobs (``patchseek.indexer.distributed``)
    ray_address: str | None = Field(
        default=None,
        description="run ingest and rebuild jobs on this Ray cluster ('auto': the one RAY_ADDRESS or a "
        "local `ray start` names; 'ray://host:10001'; 'local': a Ray started in-process); unset: in-process",
    )
    ray_encode_actors: int | None = Field(
        default=None, ge=1, description="encoder actors; unset: one per GPU, or one per node without GPUs"
    )
    ray_docs_per_segment: int = Field(
        default=64, ge=1, description="documents each Ray writer task turns into one segment"
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'patchseek.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def segment_dir(self) -> Path:
        return self.data_dir / "segments"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
