"""Sharded serving on Ray: one named, detached Ray actor per (collection, shard) and the fan-out client.

A shard server (``ShardServer``, run as the actor ``patchseek-shard/<collection>/<i>of<n>`` in the
``PATCHSEEK_RAY_NAMESPACE`` namespace) opens the collection's index version through the index engine
(``REGISTRY``: the same version folder and manifest the API and the workers use) and answers
``search(request)`` with the shortlist of its shard (``Snapshot.shard(i, n).shortlist``). Every request
names the version folder, so a rebuild's swap reaches the shards with the first search after it; each
search takes the engine's current snapshot, so new segments, merges and deletes (tombstones) reach them
through the manifest as they reach the API. Which documents are visible (the database's answer) travels
with the request, put once per collection generation in Ray's object store.

``ShardClient`` (the API's side) sends the query's token vectors to every shard, waits up to
``PATCHSEEK_SHARD_TIMEOUT_S``, and merges what came back (``merge_shortlists``); a shard that is not
running, died or did not answer in time is reported in the answer (``missing``) instead of failing it.
``start_shards`` / ``stop_shards`` are what ``patchseek serve-shards`` runs. Ray is optional
(``patchseek[ray]``); nothing imports this module unless ``PATCHSEEK_SHARDS`` > 1.

The shard servers read the version folders at the paths the API names: every node that runs one needs
the data dir's ``segments`` folder at the same path (a shared file system).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from patchseek.errors import MissingDependencyError, PatchseekError
from patchseek.indexer.compress import CompressionConfig
from patchseek.search.engine import REGISTRY, EngineResult, Filter, IndexEngine, Shortlist, Snapshot
from patchseek.search.files import IndexFiles
from patchseek.search.shards import MergeMode, merge_shortlists
from patchseek.storage import StorageSpec

log = logging.getLogger(__name__)

ACTOR_PREFIX = "patchseek-shard"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised where ray is absent
        raise MissingDependencyError(
            "sharded serving needs Ray: pip install 'patchseek[ray]' (or set PATCHSEEK_SHARDS=1)"
        ) from exc
    return ray


def actor_name(collection: str, index: int, count: int) -> str:
    """The Ray actor name of shard ``index`` of ``count`` of ``collection``."""
    return f"{ACTOR_PREFIX}/{collection}/{index}of{count}"


@dataclass(frozen=True)
class ShardRequest:
    """One search for a shard: the index version (``root``, ``dim``, ``compression``; on an object store
    also ``storage`` and the version's ``prefix`` in it, ``root`` then naming it only), the query's
    token vectors (n_q, dim) float32, the three stages' knobs and the filter (its ``visible`` ids travel
    as a separate argument, from Ray's object store)."""

    root: str
    dim: int
    compression: dict[str, Any]
    query: np.ndarray
    top_k: int = 10
    candidates: int = 100
    rerank: bool = True
    stage1: str = "auto"
    stage1_k: int = 1000
    nprobe: int | None = None
    flt: Filter = field(default_factory=Filter)
    storage: StorageSpec | None = None
    prefix: str = ""


class ShardServer:
    """Shard ``index`` of ``count`` of ``collection``: searches its segments of any version folder it is
    asked about. Run as a Ray actor (``start_shards``); a plain object in tests of the logic."""

    def __init__(
        self, collection: str, index: int, count: int, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.collection, self.index, self.count, self.device = collection, index, count, device
        if threads is not None:  # an actor's process: as many scoring threads as the CPUs Ray gave it
            torch.set_num_threads(max(1, threads))
        self._views: dict[str, tuple[Snapshot, Snapshot]] = {}  # root -> (snapshot, its shard)
        self._engines: dict[tuple[str, str], IndexEngine] = {}  # (store URL, prefix) -> its engine
        self._lock = threading.Lock()

    def ping(self) -> dict[str, Any]:
        """Who this is: collection, shard, count and process id."""
        return {"collection": self.collection, "shard": self.index, "count": self.count, "pid": os.getpid()}

    def _engine(
        self, root: str, dim: int, compression: dict[str, Any], storage: StorageSpec | None, prefix: str
    ) -> IndexEngine:
        config = CompressionConfig.from_dict(compression)
        if storage is None:  # a version folder every node mounts at the same path
            return REGISTRY.get(root, dim, config, device=self.device)
        key = (storage.url, prefix)
        with self._lock:
            engine = self._engines.get(key)
        if engine is None:  # one client of the store per version, opened on this node
            files = IndexFiles.on_node(storage, prefix)
            engine = REGISTRY.get(files.root, dim, config, device=self.device, files=files)
            with self._lock:
                engine = self._engines.setdefault(key, engine)
        return engine

    def _view(
        self,
        root: str,
        dim: int,
        compression: dict[str, Any],
        storage: StorageSpec | None = None,
        prefix: str = "",
    ) -> Snapshot:
        """This shard of the version's current snapshot (re-cut only when the manifest changed: the
        engine hands back the same snapshot object until then, with its cached filter masks)."""
        snap = self._engine(root, dim, compression, storage, prefix).snapshot()
        with self._lock:
            cached = self._views.get(root)
            if cached is not None and cached[0] is snap:
                return cached[1]
        view = snap.shard(self.index, self.count)
        with self._lock:
            self._views[root] = (snap, view)
        return view

    def search(self, request: ShardRequest, visible: np.ndarray | None = None) -> Shortlist:
        """The shard's shortlist for ``request`` (``Snapshot.shortlist``); ``visible`` replaces the
        filter's (sorted document ids, None: every document)."""
        view = self._view(request.root, request.dim, request.compression, request.storage, request.prefix)
        flt = replace(request.flt, visible=visible) if visible is not None else request.flt
        return view.shortlist(
            torch.from_numpy(np.asarray(request.query, dtype=np.float32)),
            top_k_hits=request.top_k,
            candidates=request.candidates,
            rerank=request.rerank,
            stage1=request.stage1,
            stage1_k=request.stage1_k,
            nprobe=request.nprobe,
            flt=flt,
        )

    def warm(
        self,
        root: str,
        dim: int,
        compression: dict[str, Any],
        storage: StorageSpec | None = None,
        prefix: str = "",
    ) -> dict[str, Any]:
        """Load the shard's stage-1 data (dense rows, FAISS lists) now rather than on the first search;
        returns the shard's segments and units."""
        view = self._view(root, dim, compression, storage, prefix)
        kind = view.stage1_kind()
        for r in view.readers:
            if kind == "dense" and r.dense_rows is not None:
                r.dense(self.device)
            elif kind == "faiss" and view.state is not None:
                r.faiss(view.state)
        return {"segments": len(view.readers), "units": view.n_units, "stage1": kind}


@dataclass(frozen=True)
class MissingShard:
    """A shard left out of an answer: ``reason`` is ``unavailable`` (not running or died), ``timeout``
    (no answer within ``PATCHSEEK_SHARD_TIMEOUT_S``) or ``error`` (it failed; see the API's log)."""

    shard: int
    reason: str


@dataclass(frozen=True)
class ShardedResult:
    result: EngineResult
    missing: list[MissingShard]

    @property
    def partial(self) -> bool:
        return bool(self.missing)


class ShardClient:
    """The API's fan-out to the shard servers of ``count`` shards on the Ray cluster at ``address``.

    Connects on first use (the process becomes a Ray driver in ``namespace``); ``close`` disconnects.
    Actor handles are looked up by name and cached; a shard that failed is looked up again on the next
    search (``patchseek serve-shards`` may have started it again).
    """

    def __init__(
        self,
        address: str,
        count: int,
        *,
        namespace: str = "patchseek",
        timeout_s: float = 10.0,
        mode: MergeMode = "unsharded",
    ) -> None:
        self.address, self.count, self.namespace = address, int(count), namespace
        self.timeout_s, self.mode = float(timeout_s), mode
        self._handles: dict[tuple[str, int], Any] = {}
        self._visible: dict[tuple[str, Any], tuple[np.ndarray, Any]] = {}
        self._lock = threading.Lock()
        self._connected = False

    def _connect(self) -> Any:
        ray = _ray()
        with self._lock:
            if not self._connected and not ray.is_initialized():
                ray.init(
                    address=self.address,
                    namespace=self.namespace,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
                self._connected = True  # this client connected the process: ``close`` disconnects it
        return ray

    def _handle(self, collection: str, index: int) -> Any | None:
        ray = _ray()
        key = (collection, index)
        with self._lock:
            if key in self._handles:
                return self._handles[key]
        try:
            handle = ray.get_actor(actor_name(collection, index, self.count), namespace=self.namespace)
        except ValueError:  # no such actor: not started, or stopped
            return None
        with self._lock:
            self._handles[key] = handle
        return handle

    def _forget(self, collection: str, index: int) -> None:
        with self._lock:
            self._handles.pop((collection, index), None)

    def _visible_ref(self, collection: str, flt: Filter) -> Any:
        """``flt.visible`` in the object store, put once per (collection, filter key)."""
        ray = _ray()
        if flt.visible is None:
            return None
        key = (collection, flt.key)
        with self._lock:
            cached = self._visible.get(key)
            if cached is not None and cached[0] is flt.visible:
                return cached[1]
        ref = ray.put(np.ascontiguousarray(flt.visible, dtype=np.int64))
        with self._lock:
            for k in [k for k in self._visible if k[0] == collection]:
                del self._visible[k]  # one generation per collection is kept
            self._visible[key] = (flt.visible, ref)
        return ref

    def search(
        self,
        collection: str,
        *,
        root: str,
        dim: int,
        compression: dict[str, Any] | None,
        query: torch.Tensor,
        top_k: int,
        candidates: int,
        rerank: bool,
        stage1: str,
        stage1_k: int,
        nprobe: int | None,
        flt: Filter,
        storage: StorageSpec | None = None,
        prefix: str = "",
    ) -> ShardedResult:
        """Fan ``query`` (n_q, dim) out to every shard, wait up to ``timeout_s``, merge what answered.

        A shard's own error that the client caused (a ``PatchseekError`` below 500, e.g. a query of the
        wrong dim) is raised as it is; any other failure leaves the shard out. Shards that answered from
        an older manifest than another (a merge or publish in between) are asked once more, so the
        merge sees one generation where the time allows.
        """
        ray = self._connect()
        started = time.monotonic()
        request = ShardRequest(
            root=root,
            dim=int(dim),
            compression=dict(compression or {}),
            query=query.detach().to("cpu", torch.float32).numpy(),
            top_k=top_k,
            candidates=candidates,
            rerank=rerank,
            stage1=stage1,
            stage1_k=stage1_k,
            nprobe=nprobe,
            flt=replace(flt, visible=None),
            storage=storage,
            prefix=prefix,
        )
        visible = self._visible_ref(collection, flt)
        got, missing = self._gather(ray, collection, range(self.count), request, visible, started)
        newest = max((s.generation for s in got.values()), default=0)
        behind = [i for i, s in got.items() if s.generation < newest]
        if behind:
            again, _ = self._gather(ray, collection, behind, request, visible, started)
            got.update(again)
        result = merge_shortlists([got[i] for i in sorted(got)], top_k, mode=self.mode)
        return ShardedResult(result, sorted(missing, key=lambda m: m.shard))

    def _gather(
        self,
        ray: Any,
        collection: str,
        shards: Sequence[int],
        request: ShardRequest,
        visible: Any,
        started: float,
    ) -> tuple[dict[int, Shortlist], list[MissingShard]]:
        refs: dict[Any, int] = {}
        missing: list[MissingShard] = []
        for i in shards:
            handle = self._handle(collection, i)
            if handle is None:
                missing.append(MissingShard(i, "unavailable"))
                continue
            refs[handle.search.remote(request, visible)] = i
        left = max(0.0, self.timeout_s - (time.monotonic() - started))
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=left) if refs else ([], [])
        got: dict[int, Shortlist] = {}
        for ref in ready:
            i = refs[ref]
            try:
                got[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, PatchseekError) and cause.status_code < 500:
                    raise cause from None
                log.warning("shard %d of %r failed: %s", i, collection, exc)
                missing.append(MissingShard(i, "error"))
            except ray.exceptions.RayError as exc:  # the actor died or cannot be reached
                log.warning("shard %d of %r is unavailable: %s", i, collection, type(exc).__name__)
                self._forget(collection, i)
                missing.append(MissingShard(i, "unavailable"))
        for ref in late:
            missing.append(MissingShard(refs[ref], "timeout"))
            try:
                ray.cancel(ref)
            except Exception:  # best effort: a running actor task finishes on its own
                pass
        return got, missing

    def close(self) -> None:
        """Disconnect from the cluster if this client connected the process (else leave Ray alone)."""
        with self._lock:
            connected, self._connected = self._connected, False
            self._handles.clear()
            self._visible.clear()
        if connected:
            ray = _ray()
            if ray.is_initialized():
                ray.shutdown()


def start_shards(
    address: str,
    collection: str,
    count: int,
    *,
    namespace: str = "patchseek",
    num_cpus: float = 1.0,
    device: str = "cpu",
    concurrency: int = 4,
    warm: tuple[Any, ...] | None = None,
) -> list[dict[str, Any]]:
    """Start (or find running) the ``count`` shard servers of ``collection`` as detached named actors
    that outlive this process; Ray restarts one whose process dies. ``warm`` (``ShardServer.warm``'s
    arguments: root, dim, compression[, storage, prefix]): load each shard's stage-1 data of that
    version now. Returns each shard's ``ping`` (plus ``warm``)."""
    ray = _ray()
    if count < 1:
        raise ValueError("count must be >= 1")
    own = not ray.is_initialized()
    if own:
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING)
    try:
        actor = ray.remote(ShardServer)
        handles = [
            actor.options(
                name=actor_name(collection, i, count),
                namespace=namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=num_cpus,
                max_restarts=-1,
                max_concurrency=concurrency,
            ).remote(collection, i, count, device, max(1, int(num_cpus)))
            for i in range(count)
        ]
        out = ray.get([h.ping.remote() for h in handles], timeout=300)
        if warm is not None:
            loaded = ray.get([h.warm.remote(*warm) for h in handles], timeout=600)
            out = [{**p, **w} for p, w in zip(out, loaded, strict=True)]
        return list(out)
    finally:
        if own:
            ray.shutdown()


def stop_shards(address: str, collection: str, count: int, *, namespace: str = "patchseek") -> int:
    """Kill the shard servers of ``collection`` (no restart); returns how many were running."""
    ray = _ray()
    own = not ray.is_initialized()
    if own:
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING)
    try:
        n = 0
        for i in range(count):
            try:
                handle = ray.get_actor(actor_name(collection, i, count), namespace=namespace)
            except ValueError:
                continue
            ray.kill(handle, no_restart=True)
            n += 1
        return n
    finally:
        if own:
            ray.shutdown()
