"""The indexing pipeline as a Ray Data job (extra ``ray``): ingest and rebuild on a cluster.

The stages are the pipeline's own functions (``patchseek.indexer.pipeline``), one Ray Data operator each:

1. **render** (CPU tasks, one document per task): the document's bytes are read from the blob store by
   key (each task opens the store itself: only the key travels), its pages, images or frames are
   rendered and their images and thumbnails stored as blobs (``render_document``);
2. **encode** (an actor pool; one GPU per actor where the cluster has GPUs): each actor builds its
   encoder once from the encoder spec, then encodes and prunes / merges each document
   (``encode_rendered``) in batches sized for the model and device (``encoder_batch_size``);
3. **write** (CPU tasks): every ``docs_per_segment`` documents become one new, *unpublished* segment
   of the index version, quantized with its fitted state (``write_documents``).

The driver (``run_distributed``) only collects each document's segment name and unit rows: it
publishes nothing. The caller (``IngestService`` / ``RebuildService``) publishes every segment in one
``IndexEngine.publish`` and commits the rows in one database transaction, so a job that fails or is
cancelled publishes nothing; its written segments are removed here (and a crashed task's by the
engine's ``gc``). Worker and node loss is Ray's to retry: Ray Data restarts a lost actor and resubmits
its batch, a lost task is retried; every stage is idempotent (content-addressed blobs, fresh segment
names, per-document progress counters that are set, never added to).

No FastAPI or SQLAlchemy here: the services pass plain dataclasses in and get plain dataclasses back.
"""

from __future__ import annotations

import logging
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchseek.errors import (
    ClusterUnavailableError,
    InvalidInputError,
    MissingDependencyError,
    PatchseekError,
)
from patchseek.indexer.blobs import BlobStore
from patchseek.indexer.compress import CompressionConfig
from patchseek.indexer.pipeline import (
    EncodedDocument,
    RenderedDocument,
    encode_rendered,
    render_document,
    write_documents,
)
from patchseek.indexer.sources import ReadOptions
from patchseek.search.engine import IndexEngine
from patchseek.search.files import IndexFiles
from patchseek.storage import StorageSpec

__all__ = [
    "ClusterProgress",
    "DistributedResult",
    "DocumentOutcome",
    "DocumentTask",
    "EncodeJob",
    "RayOptions",
    "connect",
    "disconnect",
    "encode_job",
    "encoder_batch_size",
    "ray_options",
    "run_distributed",
]

log = logging.getLogger(__name__)

# (units encoded, units expected, documents done): the job's totals so far, reported every ``poll_s``
ClusterProgress = Callable[[int, int, int], None]

# Settings fields an encoder is built from (``load_encoder``); nothing else (API keys, database URL)
# goes to the cluster.
ENCODER_SETTINGS = ("encoder", "encoder_revision", "device", "dtype", "batch_size", "max_image_pixels", "ocr")


@dataclass(frozen=True)
class DocumentTask:
    """One document to index: its id (the database's), name and blob key; never its bytes."""

    document_id: int
    filename: str
    blob_key: str


@dataclass(frozen=True)
class EncodeJob:
    """What every task and actor of one job needs, all picklable and small.

    Where the job reads and writes: with ``storage`` None, folders every node mounts at the same
    path (on one machine or a shared file system): ``blob_root`` the data dir's ``blobs`` and
    ``index_root`` the index version folder segments are written to; with ``storage``, an object
    store every node opens itself (``StorageSpec``), the version's segments under ``index_prefix``.
    ``encoder_settings`` are the ``ENCODER_SETTINGS`` fields of ``Settings`` (``encoder`` the spec).
    """

    blob_root: str
    index_root: str
    dim: int
    compression: dict[str, Any]
    encoder_settings: dict[str, Any]
    read_options: ReadOptions
    thumbnail_size: int = 256
    storage: StorageSpec | None = None
    index_prefix: str = ""

    def blob_store(self) -> BlobStore:
        if self.storage is None:
            return BlobStore(Path(self.blob_root))
        return BlobStore(self.storage.open(), "blobs/")

    def index_files(self) -> IndexFiles:
        """The index version's files as this node reaches them."""
        if self.storage is None:
            return IndexFiles.local(Path(self.index_root))
        return IndexFiles.on_node(self.storage, self.index_prefix)

    def engine(self) -> IndexEngine:
        """A writer of unpublished segments of the index version (it never fits or publishes)."""
        files = self.index_files()
        return IndexEngine(
            files.root,
            self.dim,
            CompressionConfig.from_dict(self.compression),
            auto_fit=False,
            files=files,
            index_workers=1,  # Ray runs one such task per CPU already
        )


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs.

    ``address``: ``"auto"`` (the cluster ``RAY_ADDRESS`` or a local ``ray start`` names), a
    ``ray://host:10001`` client address, ``host:port`` of a head, or ``"local"`` (start Ray in this
    process). ``encode_actors``: encoder actors (None: one per GPU, or one per alive node without
    GPUs). ``actor_gpus``: GPUs per actor (None: 1 where the cluster has GPUs and the encoder is a model,
    else 0). ``actor_cpus`` / ``task_cpus``: logical CPUs an actor / a render or write task holds; the
    defaults below one CPU let a CPU-only node run its actor and the CPU stages side by side (an actor
    holding whole CPUs would starve the render tasks that feed it). They must differ: Ray Data fuses a
    task stage into the actor stage after it when their resources match, and rendering would then run
    inside the encoder actors.
    """

    address: str | None = "auto"
    encode_actors: int | None = None
    docs_per_segment: int = 64
    actor_cpus: float = 0.5
    actor_gpus: float | None = None
    task_cpus: float = 0.25


@dataclass(frozen=True)
class DocumentOutcome:
    """One document's result: ``segment`` and ``rows`` / ``n_patches`` when indexed, else ``code`` and
    ``error`` (the pipeline's ``PatchseekError`` code, or ``internal_error``)."""

    document_id: int
    filename: str
    media_type: str | None = None
    segment: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_patches: list[int] = field(default_factory=list)
    code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.segment is not None


@dataclass(frozen=True)
class DistributedResult:
    """A finished job's outcomes (ordered by document id) and the unpublished segments they are in;
    ``cancelled``: the job stopped early, nothing is returned and its segments are removed."""

    outcomes: list[DocumentOutcome]
    segments: list[str]
    cancelled: bool = False


def encoder_batch_size(spec: str, batch_size: int, gpu_bytes: int | None) -> int:
    """Units per encoder forward pass for ``spec`` on a device with ``gpu_bytes`` of memory (None: CPU).

    The lexical encoder has no forward pass: 64 units per call. A colpali-engine model on a GPU gets
    one image per ~2 GiB of device memory beyond ~8 GiB for its weights, between ``batch_size`` and
    64: an estimate for 2-3B-parameter ColQwen2.5-class models at ~1 M pixels in bfloat16, to be
    measured per model (docs/SCALING.md). On a CPU, ``batch_size`` (``PATCHSEEK_BATCH_SIZE``).
    """
    if spec == "lexical":
        return 64
    if gpu_bytes is None:
        return batch_size
    return int(min(64, max(batch_size, (gpu_bytes - (8 << 30)) // (2 << 30))))


# ----------------------------------------------------------------------------------- the stages
class _Tracker:
    """Progress and cancellation shared by the driver and every stage (a Ray actor of no CPUs).

    Counters are per document and set, not added to, so a retried task never counts twice.
    """

    def __init__(self) -> None:
        self.expected: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.finished: set[int] = set()
        self.cancelled = False

    def expect(self, document_id: int, n: int) -> None:
        self.expected[document_id] = n

    def encoded(self, document_id: int, n: int) -> None:
        self.done[document_id] = max(n, self.done.get(document_id, 0))

    def finish(self, document_id: int) -> None:
        self.finished.add(document_id)

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        return self.cancelled

    def counts(self) -> tuple[int, int, int]:
        ids = self.expected.keys() | self.done.keys()
        done = sum(self.done.values())
        total = sum(max(self.expected.get(d, 0), self.done.get(d, 0)) for d in ids)
        return done, total, len(self.finished)


def _call(tracker: Any, method: str, *args: Any) -> None:
    """Fire-and-forget report to the tracker; a lost tracker never fails the job's work."""
    try:
        getattr(tracker, method).remote(*args)
    except Exception:  # the tracker's node went away: progress stalls, the job goes on
        log.warning("progress report %s failed", method, exc_info=True)


def _cancelled(tracker: Any) -> bool:
    import ray

    try:
        return bool(ray.get(tracker.is_cancelled.remote(), timeout=30))
    except Exception:
        return False


_COLUMNS = ("document_id", "filename", "media_type", "segment", "payload", "code", "error")


def _row(document_id: int, filename: str, **values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "document_id": int(document_id),
        "filename": filename,
        "media_type": "",
        "segment": "",
        "payload": b"",
        "code": "",
        "error": "",
    }
    out.update(values)
    return out


def _failure(document_id: int, filename: str, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, PatchseekError):
        return _row(document_id, filename, code=exc.code, error=str(exc))
    log.exception("unexpected error while indexing %s", filename)
    return _row(
        document_id, filename, code="internal_error", error=f"unexpected error: {type(exc).__name__}: {exc}"
    )


def _render(row: dict[str, Any], *, job: EncodeJob, tracker: Any) -> dict[str, Any]:
    """Stage 1 (a CPU task): read one document from the blob store by key and render its units."""
    document_id, filename = int(row["document_id"]), str(row["filename"])
    if _cancelled(tracker):
        return _row(document_id, filename, code="cancelled", error="the job was cancelled")
    try:
        blobs = job.blob_store()
        rendered = render_document(
            blobs.get(str(row["blob_key"])),
            read_options=job.read_options,
            blobs=blobs,
            thumbnail_size=job.thumbnail_size,
        )
    except Exception as exc:  # one bad file fails alone
        _call(tracker, "finish", document_id)
        return _failure(document_id, filename, exc)
    _call(tracker, "expect", document_id, len(rendered.units))
    return _row(document_id, filename, media_type=rendered.media_type, payload=pickle.dumps(rendered))


class _EncoderActor:
    """Stage 2 (an actor): the encoder, loaded once per actor from the job's encoder settings."""

    def __init__(self, job: EncodeJob, tracker: Any) -> None:
        from patchseek.config import Settings
        from patchseek.indexer.encoders import load_encoder

        settings = Settings(**job.encoder_settings)
        self.encoder = load_encoder(settings)
        gpu_bytes = None
        if settings.encoder != "lexical":
            import torch

            if torch.cuda.is_available():
                gpu_bytes = int(torch.cuda.get_device_properties(0).total_memory)
        self.batch_size = encoder_batch_size(settings.encoder, settings.batch_size, gpu_bytes)
        self.job, self.tracker = job, tracker
        self.compression = CompressionConfig.from_dict(job.compression)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: list[dict[str, Any]] = []
        cancelled = _cancelled(self.tracker)
        for i in range(len(batch["document_id"])):
            row = {c: batch[c][i] for c in _COLUMNS}
            document_id, filename = int(row["document_id"]), str(row["filename"])
            if row["code"]:
                out.append(_row(document_id, filename, code=str(row["code"]), error=str(row["error"])))
                continue
            if cancelled:
                out.append(_row(document_id, filename, code="cancelled", error="the job was cancelled"))
                continue
            out.append(self._encode(document_id, filename, bytes(row["payload"])))
        return _columns(out)

    def _encode(self, document_id: int, filename: str, payload: bytes) -> dict[str, Any]:
        rendered: RenderedDocument = pickle.loads(payload)
        last = [0.0]

        def progress(done: int, expected: int) -> None:
            now = time.monotonic()
            if done >= expected or now - last[0] > 0.25:  # at most 4 reports a second per document
                last[0] = now
                _call(self.tracker, "encoded", document_id, done)

        try:
            if self.encoder.dim != self.job.dim:
                from patchseek.errors import ConflictError

                raise ConflictError(
                    f"the encoder gives {self.encoder.dim}-d vectors but the index holds "
                    f"{self.job.dim}-d ones; rebuild the collection"
                )
            encoded = encode_rendered(
                rendered.media_type,
                rendered.units,
                encoder=self.encoder,
                compression=self.compression,
                batch_size=self.batch_size,
                expected=len(rendered.units),
                progress=progress,
            )
        except Exception as exc:
            _call(self.tracker, "finish", document_id)
            return _failure(document_id, filename, exc)
        return _row(document_id, filename, media_type=encoded.media_type, payload=pickle.dumps(encoded))


def _write(batch: dict[str, np.ndarray], *, job: EncodeJob, tracker: Any) -> dict[str, list[Any]]:
    """Stage 3 (a CPU task): the batch's encoded documents become one unpublished segment."""
    rows = [{c: batch[c][i] for c in _COLUMNS} for i in range(len(batch["document_id"]))]
    docs: list[tuple[int, EncodedDocument]] = [
        (int(r["document_id"]), pickle.loads(bytes(r["payload"]))) for r in rows if not r["code"]
    ]
    segment = ""
    if docs and _cancelled(tracker):
        # Nothing more is written once the job is cancelled; what a task already writing leaves behind
        # is an unlisted file the engine's gc removes.
        rows = [{**r, "code": "cancelled", "error": "the job was cancelled"} for r in rows]
        docs = []
    if docs:
        segment = write_documents(job.engine(), docs)
    encoded = dict(docs)
    out = []
    for r in rows:
        document_id, filename = int(r["document_id"]), str(r["filename"])
        if r["code"]:
            out.append(_row(document_id, filename, code=str(r["code"]), error=str(r["error"])))
            continue
        enc = encoded[document_id]
        payload = pickle.dumps((enc.rows, [b.n_patches for b in enc.bags]))
        out.append(_row(document_id, filename, media_type=enc.media_type, segment=segment, payload=payload))
        _call(tracker, "finish", document_id)
    return _columns(out)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [r[c] for r in rows] for c in _COLUMNS}


# ----------------------------------------------------------------------------------- the driver
def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("distributed jobs need Ray Data: pip install 'patchseek[ray]'") from exc
    return ray


@dataclass
class _Connection:
    owned: bool


def connect(address: str | None) -> _Connection:
    """Connect this process to the cluster at ``address`` (see ``RayOptions``) unless it already is;
    ``owned`` says whether the caller should disconnect (``disconnect``)."""
    ray = _ray()
    if ray.is_initialized():
        return _Connection(owned=False)
    _check_reachable(address)
    try:
        ray.init(
            address=None if address in (None, "local") else address,
            ignore_reinit_error=True,
            log_to_driver=False,
            include_dashboard=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailableError(
            f"cannot reach the Ray cluster at {address!r} ({exc}); start it with `ray start --head` or "
            "fix --ray / PATCHSEEK_RAY_ADDRESS"
        ) from exc
    return _Connection(owned=True)


def _check_reachable(address: str | None) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) nothing listens on: ``ray.init`` would wait
    for the GCS for minutes."""
    if address in (None, "auto", "local"):
        return
    target = address.removeprefix("ray://").removeprefix("ray+").rsplit("/", 1)[0]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterUnavailableError(
            f"nothing answers at the Ray address {address!r} ({exc}); start the head with "
            "`ray start --head` or fix --ray / PATCHSEEK_RAY_ADDRESS"
        ) from exc


def disconnect(connection: _Connection) -> None:
    if connection.owned:
        _ray().shutdown()


def _pool(ray: Any, options: RayOptions, spec: str) -> tuple[int, float]:
    """(encoder actors, GPUs per actor) for the cluster as it is now."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per_actor = options.actor_gpus
    if per_actor is None:
        per_actor = 1.0 if gpus >= 1 and spec != "lexical" else 0.0
    if options.encode_actors is not None:
        return options.encode_actors, per_actor
    if per_actor > 0:
        return max(1, int(gpus // per_actor)), per_actor
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return max(1, nodes), 0.0


def run_distributed(
    job: EncodeJob,
    documents: Sequence[DocumentTask],
    options: RayOptions,
    *,
    progress: ClusterProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
) -> DistributedResult:
    """Render, encode and write ``documents`` on the Ray cluster; publish nothing.

    Returns every document's outcome (failures included: a bad file fails alone) and the segments
    written. Every ``poll_s`` seconds ``progress(units done, units expected, documents done)`` is
    called and ``should_stop()`` asked; once it answers True the stages stop taking work, the segments
    written so far are removed and the result says ``cancelled``. Any other error (the cluster lost
    for good) removes them too and propagates.
    """
    if not documents:
        return DistributedResult([], [])
    ray = _ray()
    connection = connect(options.address)
    written: list[str] = []
    stop = threading.Event()
    cancelled = threading.Event()
    tracker = None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        tracker = ray.remote(num_cpus=0)(_Tracker).remote()
        actors, gpus = _pool(ray, options, str(job.encoder_settings.get("encoder", "lexical")))
        ds = ray.data.from_items([asdict(d) for d in documents], override_num_blocks=len(documents))
        ds = ds.map(_render, fn_kwargs={"job": job, "tracker": tracker}, num_cpus=options.task_cpus)
        ds = ds.map_batches(
            _EncoderActor,
            fn_constructor_kwargs={"job": job, "tracker": tracker},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.actor_cpus,
            num_gpus=gpus,
        )
        ds = ds.map_batches(
            _write,
            fn_kwargs={"job": job, "tracker": tracker},
            batch_size=options.docs_per_segment,
            batch_format="numpy",
            num_cpus=options.task_cpus,
        )
        watcher = threading.Thread(
            target=_watch, args=(ray, tracker, progress, should_stop, poll_s, stop, cancelled), daemon=True
        )
        watcher.start()
        outcomes: dict[int, DocumentOutcome] = {}
        for row in _rows(ds):
            outcome = _outcome(row)
            if outcome.segment and outcome.segment not in written:
                written.append(outcome.segment)
            outcomes[outcome.document_id] = outcome  # a retried batch's row replaces the first
            if cancelled.is_set():
                break
        stop.set()
        watcher.join()
        if cancelled.is_set() or any(o.code == "cancelled" for o in outcomes.values()):
            _remove(job, written)
            return DistributedResult([], [], cancelled=True)
        if progress is not None:
            progress(*ray.get(tracker.counts.remote()))
        used = {o.segment for o in outcomes.values() if o.segment}
        _remove(job, [s for s in written if s not in used])
        return DistributedResult([outcomes[d] for d in sorted(outcomes)], [s for s in written if s in used])
    except BaseException:
        _remove(job, written)
        raise
    finally:
        stop.set()
        if tracker is not None:
            try:
                ray.kill(tracker)
            except Exception:
                pass
        disconnect(connection)


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    yield from ds.iter_rows()


def _watch(
    ray: Any,
    tracker: Any,
    progress: ClusterProgress | None,
    should_stop: Callable[[], bool] | None,
    poll_s: float,
    stop: threading.Event,
    cancelled: threading.Event,
) -> None:
    """The driver's poller: progress out, cancellation in (the stages ask the tracker)."""
    while not stop.wait(poll_s):
        try:
            if should_stop is not None and not cancelled.is_set() and should_stop():
                cancelled.set()
                tracker.cancel.remote()
            if progress is not None:
                progress(*ray.get(tracker.counts.remote(), timeout=30))
        except Exception:  # a slow database or tracker: the next poll tries again
            log.warning("progress poll failed", exc_info=True)


def _outcome(row: dict[str, Any]) -> DocumentOutcome:
    document_id, filename = int(row["document_id"]), str(row["filename"])
    if row["code"]:
        return DocumentOutcome(document_id, filename, code=str(row["code"]), error=str(row["error"]))
    rows, n_patches = pickle.loads(bytes(row["payload"]))
    return DocumentOutcome(
        document_id, filename, str(row["media_type"]), str(row["segment"]), rows, [int(n) for n in n_patches]
    )


def _remove(job: EncodeJob, segments: Sequence[str]) -> None:
    """Delete unpublished segment files (a failed or cancelled job's)."""
    if not segments:
        return
    files = job.index_files()
    for name in segments:
        try:
            files.delete_segment(name)
        except Exception:  # an unlisted file left behind is the engine's gc's to remove
            log.warning("could not remove the unpublished segment %s", name, exc_info=True)


def encode_job(
    settings: Any,
    blob_root: Path | None,
    index_root: Path,
    version: Any,
    read_options: ReadOptions,
    *,
    index_prefix: str | None = None,
) -> EncodeJob:
    """The ``EncodeJob`` of an index version (``version.encoder``, ``.dim``, ``.compression``) from
    ``Settings``: only the encoder's and the store's settings are sent to the cluster.

    With ``PATCHSEEK_STORAGE_URL`` set, every node opens that store and the job writes the version's
    segments under ``index_prefix`` there; else the cluster's tasks read blobs and write segments in
    the data dir's folders, which every node must mount at the same path."""
    storage = StorageSpec.from_settings(settings)
    if storage is not None and index_prefix is None:
        raise InvalidInputError("a distributed job on an object store needs the index version's prefix")
    if storage is None and blob_root is None:
        raise InvalidInputError("a distributed job needs the blob store's folder or PATCHSEEK_STORAGE_URL")
    encoder_settings = {k: getattr(settings, k) for k in ENCODER_SETTINGS}
    encoder_settings["encoder"] = version.encoder
    return EncodeJob(
        blob_root="" if blob_root is None else str(Path(blob_root).resolve()),
        index_root=str(Path(index_root).resolve()),
        dim=int(version.dim),
        compression=dict(version.compression or {}),
        encoder_settings=encoder_settings,
        read_options=read_options,
        thumbnail_size=int(settings.thumbnail_size),
        storage=storage,
        index_prefix=index_prefix or "",
    )


def ray_options(settings: Any, address: str | None) -> RayOptions:
    """``RayOptions`` from ``Settings`` (``PATCHSEEK_RAY_*``) for ``address``."""
    return RayOptions(
        address=address,
        encode_actors=settings.ray_encode_actors,
        docs_per_segment=settings.ray_docs_per_segment,
    )
