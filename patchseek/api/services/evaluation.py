"""Evaluations: judged queries run against the live index and against alternatives, side by side.

Each configuration is a compression setting, an encoder and/or the search knobs (``candidates``,
``stage1``, ``stage1_k``, ``nprobe``, ``rerank``). One that changes the index (encoder or compression)
is built as a *shadow* index version (``RebuildService.build_shadow``: stored vectors copied, or the
sources encoded again) that search never serves; it is queried explicitly, scored on the same queries,
and dropped at the end unless it is promoted (the rebuild's atomic swap). Knob-only configurations run
on the live version.

Judged items (``patchseek.evaluation.formats``) are resolved once, at submit, to keys that do not
depend on the index version: a document, a PDF page ``(document, page)`` or a video time
``(document, seconds)``; a unit id becomes its page, its image or the middle of its time span. For one
query, each hit is labelled with the most specific judged item it matches (a video unit whose
``[t_start, t_end]`` contains a judged time, then its page, then its document), or with its own
unjudged label; a label keeps its best rank only, so document-level judgments are scored on the best
hit of each document. Measures come from ranx (``patchseek.evaluation.measures``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np
from sqlalchemy import func, select

from patchseek.api.db.models import Collection, Document, IndexVersion, Job, Unit, utcnow
from patchseek.api.services.collections import active_version, get_collection
from patchseek.api.services.context import ServiceContext
from patchseek.api.services.rebuild import RebuildService
from patchseek.api.services.search import Hit, SearchService
from patchseek.errors import ConflictError, NotFoundError, PatchseekError
from patchseek.evaluation import (
    MEASURES,
    EvaluationInputError,
    UnknownItemError,
    paired_test,
    parse_item,
    plot_png,
    read_qrels,
    read_queries,
    score_run,
)
from patchseek.indexer.compress import CompressionConfig
from patchseek.search.candidates import STAGE1_CHOICES

log = logging.getLogger(__name__)
KIND = "evaluation"
LIVE = "live"
# Items kept per query in a stored run: enough to recompute every @10 measure.
STORED_RUN_DEPTH = 10
_KNOBS = ("candidates", "stage1", "stage1_k", "nprobe", "rerank")
_CONFIG_KEYS = frozenset(("name", "encoder", "compression", *_KNOBS))


@dataclass(frozen=True)
class EvalConfig:
    """One row of an evaluation: what index (``encoder`` / ``compression``; None: the live one's) and
    which search knobs."""

    name: str
    encoder: str | None = None
    compression: dict[str, Any] | None = None
    candidates: int = 100
    stage1: str = "auto"
    stage1_k: int = 1000
    nprobe: int | None = None
    rerank: bool = True

    @property
    def shadow(self) -> bool:
        """True when the configuration needs its own index version."""
        return self.encoder is not None or self.compression is not None

    @property
    def knobs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _KNOBS}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "encoder": self.encoder, "compression": self.compression, **self.knobs}


def parse_config(data: Any, default_name: str) -> EvalConfig:
    """An ``EvalConfig`` from a JSON object (``name``, ``encoder``, ``compression`` and the knobs);
    unknown keys and wrong types are an ``EvaluationInputError``."""
    if not isinstance(data, dict):
        raise EvaluationInputError("a configuration must be a JSON object")
    unknown = set(data) - _CONFIG_KEYS
    if unknown:
        raise EvaluationInputError(
            f"unknown configuration keys {sorted(unknown)}; use {sorted(_CONFIG_KEYS)}"
        )

    def integer(key: str, default: int | None, low: int, high: int) -> int | None:
        value = data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise EvaluationInputError(f"configuration {key!r} must be an integer in [{low}, {high}]")
        return value

    name = data.get("name", default_name)
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise EvaluationInputError("a configuration name is 1-64 printable characters")
    encoder = data.get("encoder")
    if encoder is not None and (not isinstance(encoder, str) or not encoder):
        raise EvaluationInputError("configuration 'encoder' must be a non-empty string")
    compression = data.get("compression")
    if compression is not None:
        if not isinstance(compression, dict):
            raise EvaluationInputError("configuration 'compression' must be a JSON object")
        compression = CompressionConfig.from_dict(compression).to_dict()
    stage1 = data.get("stage1", "auto")
    if stage1 not in STAGE1_CHOICES:
        raise EvaluationInputError(f"configuration 'stage1' must be one of {list(STAGE1_CHOICES)}")
    rerank = data.get("rerank", True)
    if not isinstance(rerank, bool):
        raise EvaluationInputError("configuration 'rerank' must be true or false")
    return EvalConfig(
        name=name,
        encoder=encoder,
        compression=compression,
        candidates=integer("candidates", 100, 1, 10_000) or 100,
        stage1=stage1,
        stage1_k=integer("stage1_k", 1000, 1, 100_000) or 1000,
        nprobe=integer("nprobe", None, 1, 4096),
        rerank=rerank,
    )


def config_label(data: dict[str, Any]) -> str:
    """A short default name for a configuration: its settings, ``k=v`` joined by commas."""
    parts = []
    if data.get("encoder"):
        parts.append(f"encoder={PurePath(str(data['encoder'])).name}")
    for k, v in sorted((data.get("compression") or {}).items()):
        parts.append(f"{k}={v}")
    for k in _KNOBS:
        if k in data and data[k] is not None:
            parts.append(f"{k}={json.dumps(data[k])}")
    return (",".join(parts) or "default")[:64]


# A judged key, version-independent: ("d", doc) | ("p", doc, page) | ("t", doc, seconds).
Key = tuple[Any, ...]


@dataclass
class _Judged:
    """One query's judged keys, their labels and relevance, and the judged times per video."""

    labels: dict[Key, str] = field(default_factory=dict)
    times: dict[int, list[tuple[float, str]]] = field(default_factory=dict)

    def label(self, hit: Hit) -> str:
        """The most specific judged item ``hit`` matches, or the hit's own (unjudged) label."""
        doc = hit.document_id
        if hit.t_start is not None and hit.t_end is not None:
            for seconds, label in self.times.get(doc, ()):
                if hit.t_start <= seconds <= hit.t_end:
                    return label
        if hit.page is not None and ("p", doc, hit.page) in self.labels:
            return self.labels[("p", doc, hit.page)]
        if ("d", doc) in self.labels:
            return self.labels[("d", doc)]
        return unit_label(hit)


def unit_label(hit: Hit) -> str:
    """A unit's own label: ``name#page`` (PDF), ``name@t_start-t_end`` (video), ``name`` (image)."""
    name = PurePath(hit.document).name
    if hit.page is not None:
        return f"{name}#{hit.page}"
    if hit.t_start is not None and hit.t_end is not None:
        return f"{name}@{hit.t_start:g}-{hit.t_end:g}"
    return name


def _unit_key(hit: Hit) -> tuple[Any, ...]:
    # What "the same unit" means across index versions (unit ids and ordinals are per version).
    return (hit.document_id, hit.page, None if hit.t_start is None else round(hit.t_start, 3))


class EvaluationService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.search = SearchService(ctx)
        self.rebuild = RebuildService(ctx)

    # ------------------------------------------------------------------------------ submit
    def submit(
        self,
        collection_name: str,
        *,
        queries: str,
        qrels: str,
        configs: list[dict[str, Any]] | None = None,
        promote: str | None = None,
        depth: int = 100,
        status: str = "queued",
    ) -> Job:
        """Check the inputs and queue an evaluation job (``status="running"``: the caller runs it).

        ``queries`` / ``qrels`` are file contents (see ``patchseek.evaluation.formats``); every judged
        item must name a ready document, page, time or unit of the collection. ``configs`` are the
        alternatives (``parse_config``); the live collection is always the first row. ``promote``
        names the configuration to swap in at the end (it must change the index). ``depth`` hits are
        retrieved per query.
        """
        s = self.ctx.settings
        for what, text in (("queries", queries), ("qrels", qrels)):
            if len(text.encode()) > s.eval_max_file_bytes:
                raise EvaluationInputError(
                    f"the {what} file is over {s.eval_max_file_bytes} bytes (PATCHSEEK_EVAL_MAX_FILE_BYTES)"
                )
        if not 1 <= depth <= s.max_top_k:
            raise EvaluationInputError(f"depth must be between 1 and {s.max_top_k}")
        parsed_queries = read_queries(queries, max_queries=s.eval_max_queries)
        parsed_qrels = read_qrels(qrels)
        configs = configs or []
        if len(configs) > s.eval_max_configs:
            raise EvaluationInputError(
                f"at most {s.eval_max_configs} configurations per evaluation (PATCHSEEK_EVAL_MAX_CONFIGS)"
            )
        parsed = [parse_config(c, config_label(c if isinstance(c, dict) else {})) for c in configs]
        names = [LIVE] + [c.name for c in parsed]
        if len(set(names)) != len(names):
            raise EvaluationInputError(
                f"configuration names must be unique and not {LIVE!r}; give each a 'name'"
            )
        for c in parsed:
            if c.encoder is not None:
                self.ctx.check_encoder_spec(c.encoder)
        if promote is not None:
            chosen = next((c for c in parsed if c.name == promote), None)
            if chosen is None or not chosen.shadow:
                raise EvaluationInputError(
                    f"promote names no configuration that changes the index ({promote!r}); name one with "
                    "an encoder or a compression"
                )
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            version = active_version(session, collection)
            qids = [q for q in parsed_queries if q in parsed_qrels]
            if not qids:
                raise EvaluationInputError(
                    "no query of the queries file has judgments in the qrels file (compare their query ids)"
                )
            judgments = {q: self._resolve(session, collection, version, parsed_qrels[q]) for q in qids}
            job = Job(
                collection_id=collection.id,
                kind=KIND,
                status=status,
                total=len(parsed) + 1,
                payload={
                    "queries": {q: parsed_queries[q] for q in qids},
                    "judgments": judgments,
                    "configs": [c.to_dict() for c in parsed],
                    "promote": promote,
                    "depth": depth,
                    "unjudged_queries": len(parsed_queries) - len(qids),
                },
                result={},
                started_at=utcnow() if status == "running" else None,
            )
            session.add(job)
            session.flush()
            return job

    def _resolve(
        self, session: Any, collection: Collection, version: IndexVersion, judged: dict[str, int]
    ) -> list[list[Any]]:
        """A query's judgments as ``[label, kind, document id, page or seconds, relevance]`` rows, one
        per judged key (the highest relevance where two items name the same key)."""
        docs = session.execute(
            select(Document.id, Document.filename, Document.media_type).where(
                Document.collection_id == collection.id, Document.status == "ready"
            )
        ).all()
        by_name: dict[str, set[int]] = {}
        media: dict[int, str] = {}
        for d in docs:
            media[d.id] = d.media_type or ""
            for n in {d.filename, PurePath(d.filename).name}:
                by_name.setdefault(n, set()).add(d.id)
        keys: dict[Key, list[Any]] = {}
        for text, rel in judged.items():
            item = parse_item(text, set(by_name))
            if item.kind == "unit":
                assert item.unit_id is not None
                unit = session.get(Unit, item.unit_id) if item.unit_id <= 2_147_483_647 else None
                if unit is None or unit.index_version_id != version.id or unit.document_id not in media:
                    raise UnknownItemError(f"judged item {text!r}: no unit {item.unit_id} in the collection")
                doc = unit.document_id
                if unit.page is not None:
                    key: Key = ("p", doc, unit.page)
                elif unit.t_start is not None and unit.t_end is not None:
                    key = ("t", doc, (unit.t_start + unit.t_end) / 2)
                else:
                    key = ("d", doc)
            else:
                assert item.name is not None
                ids = by_name[item.name]
                if len(ids) > 1:
                    raise EvaluationInputError(
                        f"judged item {text!r}: {len(ids)} documents are called {item.name!r}; give a unit id"
                    )
                doc = next(iter(ids))
                if item.kind == "document":
                    key = ("d", doc)
                elif item.kind == "page":
                    pages = session.scalar(
                        select(func.max(Unit.page)).where(
                            Unit.index_version_id == version.id, Unit.document_id == doc
                        )
                    )
                    if media[doc] != "pdf" or pages is None or (item.page or 0) > pages:
                        raise UnknownItemError(f"judged item {text!r}: {item.name!r} has no page {item.page}")
                    key = ("p", doc, item.page)
                else:
                    end = session.scalar(
                        select(func.max(Unit.t_end)).where(
                            Unit.index_version_id == version.id, Unit.document_id == doc
                        )
                    )
                    if media[doc] != "video" or end is None or (item.seconds or 0.0) > end:
                        raise UnknownItemError(
                            f"judged item {text!r}: {item.name!r} is not a video that long"
                        )
                    key = ("t", doc, item.seconds)
            if key in keys:
                keys[key][4] = max(keys[key][4], int(rel))
            else:
                keys[key] = [text, key[0], key[1], key[2] if len(key) > 2 else None, int(rel)]
        return list(keys.values())

    # --------------------------------------------------------------------------------- read
    def get(self, job_id: int) -> Job:
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.kind != KIND:
                raise NotFoundError(f"evaluation {job_id} does not exist")
            return job

    def recent(self, collection_name: str, *, limit: int = 20) -> list[Job]:
        """The collection's latest evaluations, newest first."""
        with self.ctx.db.session() as session:
            collection = get_collection(session, collection_name)
            return list(
                session.scalars(
                    select(Job)
                    .where(Job.collection_id == collection.id, Job.kind == KIND)
                    .order_by(Job.id.desc())
                    .limit(limit)
                )
            )

    def plot(self, job_id: int, *, measure: str = "ndcg@10") -> bytes:
        """The PNG of a finished evaluation (``plot_png``)."""
        job = self.get(job_id)
        if job.status != "succeeded":
            raise ConflictError(f"evaluation {job_id} is {job.status}; its picture exists once it succeeded")
        return plot_png(job.result["rows"], measure=measure, title=f"evaluation {job_id}")

    # ---------------------------------------------------------------------------------- run
    def run_job(self, job_id: int, *, progress: Callable[[str], None] | None = None) -> Job:
        """Score the live collection and every configuration, keep the result on the job, drop the
        shadow versions (but the promoted one). ``progress(config name)`` is called after each row."""
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} does not exist")
            collection = session.get(Collection, job.collection_id)
            if collection is None:
                raise NotFoundError("the collection was deleted")
            name = collection.name
            payload = dict(job.payload)
            # A previous attempt that died left its shadows: drop them before building new ones.
            self._drop_shadows(job.collection_id, job.result.get("shadows", []))
        shadows: dict[str, IndexVersion] = {}
        promoted: str | None = None
        try:
            result = self._evaluate(job_id, name, payload, shadows, progress)
            if payload.get("promote"):
                promoted = payload["promote"]
                number = self.rebuild.promote(shadows[promoted])
                shadows.pop(promoted)  # active now: not dropped below
                result["promoted"] = {"config": promoted, "index_version": number}
        except Exception as exc:
            with self.ctx.db.session() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if job.status != "cancelled":
                    job.status = "failed"
                job.error = str(exc) if isinstance(exc, PatchseekError) else f"{type(exc).__name__}: {exc}"
                job.finished_at = utcnow()
                if not isinstance(exc, PatchseekError):
                    log.exception("evaluation %s failed", job_id)
            return self.get(job_id)
        finally:
            for shadow in shadows.values():
                self.rebuild.drop_shadow(shadow)
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.status, job.result, job.finished_at = "succeeded", result, utcnow()
            job.progress = job.total
        return self.get(job_id)

    def _check(self, job_id: int, **updates: Any) -> None:
        """Beat, record ``updates`` on the job, and stop if it was cancelled."""
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} was deleted")
            if job.status == "cancelled":
                raise ConflictError("the evaluation was cancelled")
            job.heartbeat_at = utcnow()
            for k, v in updates.items():
                setattr(job, k, v)

    def _drop_shadows(self, collection_id: int, numbers: list[int]) -> None:
        with self.ctx.db.session() as session:
            rows = session.scalars(
                select(IndexVersion).where(
                    IndexVersion.collection_id == collection_id,
                    IndexVersion.number.in_(numbers or [-1]),
                    IndexVersion.status == "shadow",
                )
            ).all()
            for row in rows:
                session.expunge(row)
        for row in rows:
            self.rebuild.drop_shadow(row)

    def _evaluate(
        self,
        job_id: int,
        name: str,
        payload: dict[str, Any],
        shadows: dict[str, IndexVersion],
        progress: Callable[[str], None] | None,
    ) -> dict[str, Any]:
        queries: dict[str, str] = payload["queries"]
        depth = int(payload["depth"])
        judged: dict[str, _Judged] = {}
        qrels: dict[str, dict[str, int]] = {}
        for qid, rows in payload["judgments"].items():
            j = judged[qid] = _Judged()
            for label, kind, doc, where, rel in rows:
                qrels.setdefault(qid, {})[label] = int(rel)
                if kind == "t":
                    j.times.setdefault(int(doc), []).append((float(where), label))
                else:
                    j.labels[(kind, int(doc)) if kind == "d" else (kind, int(doc), int(where))] = label
        configs = [EvalConfig(LIVE)] + [EvalConfig(**c) for c in payload["configs"]]
        # The exact ranking of the live version: every unit scored by MaxSim on the stored vectors.
        n_units = self.search.stats(name)["units"]
        exact = {
            qid: {
                _unit_key(h)
                for h in self.search.search(
                    name, query=text, top_k=10, stage1="exact", candidates=max(100, n_units)
                ).hits
            }
            for qid, text in queries.items()
        }
        rows, runs, per_query = [], {}, {}
        for i, config in enumerate(configs):
            number = None
            if config.shadow:
                shadow = self.rebuild.build_shadow(
                    name,
                    encoder=config.encoder,
                    compression=config.compression,
                    check=lambda done, total: self._check(job_id),
                )
                shadows[config.name] = shadow
                number = shadow.number
                with self.ctx.db.session() as session:
                    job = session.get(Job, job_id)
                    assert job is not None
                    job.result = {"shadows": [s.number for s in shadows.values()]}
            run, latencies, overlap = self._run_queries(name, queries, judged, config, number, depth, exact)
            means, scores = score_run(qrels, run)
            stats = self._stats(name, number)
            rows.append(
                {
                    "config": config.name,
                    **{m: round(v, 6) for m, v in means.items()},
                    "exact_recall@10": round(float(np.mean(overlap)), 6),
                    "p50_ms": round(float(np.percentile(latencies, 50)), 3),
                    "p95_ms": round(float(np.percentile(latencies, 95)), 3),
                    "bytes_per_page": stats["disk_bytes_per_unit"],
                    "ram_bytes_per_page": stats["ram_bytes_per_unit"],
                    "index_state": stats["state"],
                    "settings": config.to_dict(),
                }
            )
            runs[config.name] = run
            per_query[config.name] = scores
            self._check(job_id, progress=i + 1)
            if progress is not None:
                progress(config.name)
        # ranx's paired t-test of every row against the live one, on the measures that rank rows.
        for row in rows[1:]:
            row["p_vs_live"] = paired_test(qrels, runs[LIVE], runs[row["config"]])
        best = max(rows[1:], key=lambda r: (r["ndcg@10"], r["mrr@10"]), default=None)
        return {
            "measures": [*MEASURES, "exact_recall@10"],
            "queries": len(queries),
            "unjudged_queries": payload.get("unjudged_queries", 0),
            "rows": rows,
            "best": None if best is None else best["config"],
            "significance": None
            if best is None
            else {"config": best["config"], "stat_test": "student", "p_values": best["p_vs_live"]},
            "per_query": per_query,
            "runs": {c: {q: items[:STORED_RUN_DEPTH] for q, items in r.items()} for c, r in runs.items()},
            "promoted": None,
        }

    def _run_queries(
        self,
        name: str,
        queries: dict[str, str],
        judged: dict[str, _Judged],
        config: EvalConfig,
        number: int | None,
        depth: int,
        exact: dict[str, set[tuple[Any, ...]]],
    ) -> tuple[dict[str, list[str]], list[float], list[float]]:
        """Each query's labelled ranking (best rank per label), its latency (ms, query encoding
        included) and the share of the exact top 10 in its top 10 units."""
        knobs = config.knobs
        first = next(iter(queries.values()))
        self.search.search(name, query=first, top_k=depth, index_version=number, **knobs)  # warm-up
        run: dict[str, list[str]] = {}
        latencies, overlap = [], []
        for qid, text in queries.items():
            start = time.perf_counter()
            result = self.search.search(name, query=text, top_k=depth, index_version=number, **knobs)
            latencies.append((time.perf_counter() - start) * 1000)
            labels = list(dict.fromkeys(judged[qid].label(h) for h in result.hits))
            run[qid] = labels
            reference = exact[qid]
            top = {_unit_key(h) for h in result.hits[:10]}
            overlap.append(len(top & reference) / len(reference) if reference else 1.0)
        return run, latencies, overlap

    def _stats(self, name: str, number: int | None) -> dict[str, Any]:
        if number is None:
            return self.search.stats(name)
        with self.ctx.db.session() as session:
            collection = get_collection(session, name)
            version = session.scalar(
                select(IndexVersion).where(
                    IndexVersion.collection_id == collection.id, IndexVersion.number == number
                )
            )
            if version is None:
                raise NotFoundError(f"index version {number} was dropped during the evaluation")
            session.expunge(version)
        return self.ctx.version_index(version).stats()
