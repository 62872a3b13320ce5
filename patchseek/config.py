"""One ``Settings`` object for every process (CLI, API, worker), read from ``PATCHSEEK_*`` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
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
    batch_size: int = Field(
        default=0, ge=0, description="pages per encoder batch; 0: from free device memory on CUDA, 4 on CPU"
    )
    kernels: Literal["auto", "torch", "triton"] = Field(
        default="auto",
        description="scoring kernels: 'auto' (Triton on CUDA), 'torch', or 'triton' (also on the CPU, "
        "under TRITON_INTERPRET=1: the device path with CPU tensors, for tests)",
    )
    device_memory_bytes: int | None = Field(
        default=None, ge=0, description="device budget of resident index data; unset: free CUDA memory"
    )
    device_fallback: Literal["cpu", "error"] = Field(
        default="cpu",
        description="index data that does not fit the device budget: stays on the CPU, or error",
    )
    index_workers: int = Field(
        default=0,
        ge=0,
        description="processes that share the index-side work of a write (the dense summaries); "
        "0: the CPUs available, up to 8",
    )
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

    # where blobs and index files live (``patchseek.storage``)
    storage_url: str | None = Field(
        default=None,
        description="folder or fsspec URL (s3://bucket/prefix, needs patchseek[s3]) holding blobs/ and "
        "segments/; unset: the data dir. Every node of a cluster points at the same one",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="extra fsspec options for storage_url (JSON object)"
    )
    storage_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, moto), for s3:// storage URLs"
    )
    storage_key: str | None = Field(default=None, description="S3 access key id (else the AWS chain)")
    storage_secret: SecretStr | None = Field(default=None, description="S3 secret access key")
    storage_region: str | None = Field(default=None, description="S3 region")
    storage_cache_dir: Path | None = Field(
        default=None, description="local copies of an object store's segments; unset: <data_dir>/cache"
    )
    storage_cache_bytes: int = Field(
        default=10 << 30, ge=1, description="bound of that cache; copies no open reader uses are evicted"
    )
    storage_poll_seconds: float = Field(
        default=1.0,
        ge=0,
        description="an object store's manifest is looked up at most this often per index (what other "
        "nodes published shows up within it)",
    )
    storage_lock_seconds: float = Field(
        default=600,
        gt=0,
        description="lease of an index writer's lock on an object store (a dead holder's ends after it)",
    )

    @property
    def resolved_storage_options(self) -> dict[str, Any]:
        """``storage_options`` plus the S3 fields, in s3fs's terms."""
        opts = dict(self.storage_options)
        if self.storage_key is not None:
            opts.setdefault("key", self.storage_key)
        if self.storage_secret is not None:
            opts.setdefault("secret", self.storage_secret.get_secret_value())
        if self.storage_endpoint_url is not None:
            opts.setdefault("endpoint_url", self.storage_endpoint_url)
        if self.storage_region is not None:
            client = dict(opts.get("client_kwargs") or {})
            client.setdefault("region_name", self.storage_region)
            opts["client_kwargs"] = client
        return opts

    @property
    def jobs_ray_address(self) -> str | None:
        """The Ray cluster ingest and rebuild jobs run on (``ray_address`` unless ``ray_jobs`` is off)."""
        return self.ray_address if self.ray_jobs else None

    @property
    def resolved_storage_cache_dir(self) -> Path:
        return self.storage_cache_dir or self.data_dir / "cache"

    # sharded serving on Ray (``patchseek[ray]``; ``patchseek serve-shards`` starts the shard servers)
    shards: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="shards each collection is served as; above 1 the API's searches fan out to the shard "
        "servers on the Ray cluster at ray_address (1: searched in-process)",
    )
    ray_namespace: str = Field(default="patchseek", min_length=1, description="Ray namespace of the shards")
    shard_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="how long a search waits for the shards; those that have not answered by then are "
        "left out and named in the answer (partial)",
    )
    shard_merge: Literal["unsharded", "union"] = Field(
        default="unsharded",
        description="'unsharded': the answer the collection gives in-process; 'union': the best exact "
        "scores among every shard's reranked shortlist (recall can only improve)",
    )

    @model_validator(mode="after")
    def _shards_need_a_cluster(self) -> Settings:
        if self.shards > 1 and not self.ray_address:
            raise ValueError("PATCHSEEK_SHARDS > 1 needs PATCHSEEK_RAY_ADDRESS (the Ray cluster's host:port)")
        return self

    # Ray (extra ``ray``): ingest and rebuild jobs as Ray Data jobs (``patchseek.indexer.distributed``)
    ray_address: str | None = Field(
        default=None,
        description="the Ray cluster: ingest and rebuild jobs run on it, and the shard servers "
        "(shards > 1) live there ('auto': the one RAY_ADDRESS or a local `ray start` names; "
        "'ray://host:10001'; 'local': a Ray started in-process); unset: in-process",
    )
    ray_jobs: bool = Field(
        default=True,
        description="with ray_address set, run ingest and rebuild jobs on the cluster (false: jobs stay "
        "in-process, e.g. an API whose only use of the cluster is its shard servers)",
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
