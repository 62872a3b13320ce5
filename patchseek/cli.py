"""The ``patchseek`` command line: init, ingest, search, serve, worker, gc, collections."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from patchseek.config import Settings
from patchseek.errors import PatchseekError
from patchseek.storage import StorageSpec

app = typer.Typer(
    help="patchseek: multi-vector visual retrieval over PDFs, images and videos.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

# Files are grouped into jobs of this many so a huge folder is never held in memory at once.
FILES_PER_JOB = 16
# On a Ray cluster each job is one Ray Data job: larger jobs keep its actors busy.
RAY_FILES_PER_JOB = 256

RAY_HELP = (
    "run on a Ray cluster (extra 'ray'): ADDRESS of its head (host:port, ray://host:10001), 'auto' "
    "(RAY_ADDRESS or a local `ray start`; the default when the flag is given alone) or 'local'"
)
RayOption = Annotated[
    str | None, typer.Option("--ray", metavar="[ADDRESS]", is_flag=False, flag_value="auto", help=RAY_HELP)
]


def _context(settings: Settings | None = None):  # type: ignore[no-untyped-def]
    from patchseek.api.services import ServiceContext

    return ServiceContext.from_settings(settings or Settings())


def _fail(exc: PatchseekError) -> None:
    console.print(f"[red]error[/red] ({exc.code}): {exc}")
    raise typer.Exit(2)


def _iter_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise typer.BadParameter(f"{path} does not exist")


@app.command()
def init() -> None:
    """Create the data directory and bring the database schema up to date."""
    ctx = _context()
    try:
        ctx.storage.check()
    except PatchseekError as exc:
        ctx.close()
        _fail(exc)
    console.print(
        f"data dir: {ctx.settings.data_dir.resolve()}\ndatabase: {ctx.db.engine.url!r}\n"
        f"storage: {ctx.storage.url}"
    )
    ctx.close()


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (searched recursively)")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="collection name")] = "default",
    encoder: Annotated[str | None, typer.Option(help="encoder for a new collection")] = None,
    compression: Annotated[
        str | None, typer.Option(help='compression of a new collection, JSON: \'{"quantizer": "pq"}\'')
    ] = None,
    metadata: Annotated[
        str | None, typer.Option(help='JSON object stored on each document, e.g. \'{"team": "ops"}\'')
    ] = None,
    files_per_job: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"files per ingest job; each job's documents become one segment (default {FILES_PER_JOB}, "
            f"{RAY_FILES_PER_JOB} with --ray)",
        ),
    ] = None,
    ray: RayOption = None,
) -> None:
    """Ingest files into a collection (created if missing). Exits 1 if any file failed."""
    from patchseek.api.services import CollectionService, IngestService, JobService
    from patchseek.api.services.ingest import IngestProgress

    ctx = _context()
    address = ray or ctx.settings.jobs_ray_address
    per_job = files_per_job or (RAY_FILES_PER_JOB if address else FILES_PER_JOB)
    cluster = None
    try:
        if address:
            from patchseek.indexer.distributed import connect

            cluster = connect(address)  # once for every job of the call
        CollectionService(ctx).create(
            collection, encoder=encoder, compression=_json_option(compression), exist_ok=True
        )
        files = list(_iter_files(paths))
        service = IngestService(ctx)
        refit: int | None = None
        results: list[dict[str, Any]] = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pages/frames"),
            TimeElapsedColumn(),
            console=console,
            transient=not sys.stderr.isatty(),
        ) as bar:
            # The bar counts pages, images and video frames; its total grows as each file is opened.
            task = bar.add_task("ingesting", total=None)
            units_before = 0  # of the jobs already run
            for start in range(0, len(files), per_job):
                chunk = files[start : start + per_job]
                job = service.submit(
                    collection,
                    [(str(p), p.read_bytes()) for p in chunk],
                    status="running",
                    metadata=_json_option(metadata),
                )

                def on_progress(p: IngestProgress, start: int = start, before: int = units_before) -> None:
                    current = min(start + p.documents_done + 1, len(files))
                    bar.update(
                        task,
                        completed=before + p.units_done,
                        total=before + p.units_total,
                        description=f"{Path(p.filename).name[:40]} (file {current}/{len(files)})",
                    )

                job = service.run_job(job.id, progress=on_progress, ray_address=address)
                units_before += job.units_done
                bar.update(task, completed=units_before, total=units_before)
                results.extend(job.result.get("documents", []))
                # Merges after every job, as a worker does: segments (and open files) stay few.
                refit = JobService(ctx).prepare_search(job.id)
            if files and refit is not None:  # the collection outgrew its codec's fit: refit now
                bar.update(task, description="refitting the codec (rebuild)")
                JobService(ctx).run(refit)
    except PatchseekError as exc:
        _fail(exc)
    finally:
        if cluster is not None:
            from patchseek.indexer.distributed import disconnect

            disconnect(cluster)
        ctx.close()
    ok = sum(r["status"] == "ready" for r in results)
    failed = [r for r in results if r["status"] == "failed"]
    dupes = [r for r in results if r["status"] == "duplicate"]
    units = sum(r["n_units"] for r in results)
    for r in failed:
        console.print(f"[red]failed[/red] {r['filename']}: {r['error']} ({r['code']})")
    for r in dupes:
        console.print(
            f"[yellow]skipped[/yellow] {r['filename']}: already ingested as document {r['duplicate_of']}"
        )
    console.print(
        f"{ok} ingested ({units} units), {len(failed)} failed, {len(dupes)} duplicates "
        f"into collection {collection!r}"
    )
    if failed:
        raise typer.Exit(1)


def _json_option(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("expected a JSON object")
    return value


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="collection name")],
    encoder: Annotated[str | None, typer.Option(help="'lexical' or a colpali-engine model id / dir")] = None,
    compression: Annotated[
        str | None,
        typer.Option(help='JSON, e.g. \'{"prune": "topp", "prune_ratio": 0.5, "quantizer": "binary"}\''),
    ] = None,
    description: Annotated[str, typer.Option()] = "",
) -> None:
    """Create a collection with its encoder and compression settings."""
    from patchseek.api.services import CollectionService

    ctx = _context()
    try:
        c = CollectionService(ctx).create(
            name, description=description, encoder=encoder, compression=_json_option(compression)
        )
        console.print(f"created {c.name!r}: encoder={c.encoder} compression={json.dumps(c.compression)}")
    except PatchseekError as exc:
        _fail(exc)
    finally:
        ctx.close()


def _hit_json(hit: Any) -> dict[str, Any]:
    return {
        "document": Path(hit.document).name,
        "document_id": hit.document_id,
        "unit_id": hit.unit_id,
        "media_type": hit.media_type,
        "kind": hit.kind,
        "page": hit.page,
        "t_start": hit.t_start,
        "t_end": hit.t_end,
        "score": hit.score,
    }


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="the query text")] = None,
    collection: Annotated[str, typer.Option("--collection", "-c")] = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 10,
    queries: Annotated[Path | None, typer.Option(help="file with one query per line")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    where: Annotated[
        str | None, typer.Option("--where", help='metadata filter as JSON, e.g. \'{"team": "design"}\'')
    ] = None,
    stage1: Annotated[str, typer.Option(help="candidate generator: auto, exact, dense or faiss")] = "auto",
    candidates: Annotated[int, typer.Option(min=1, help="shortlist re-scored exactly")] = 100,
) -> None:
    """Search a collection. ``--json`` prints one JSON object per hit (or per query with --queries)."""
    from patchseek.api.services import SearchService

    if (query is None) == (queries is None):
        raise typer.BadParameter("give either a query or --queries FILE")
    if queries is not None:
        texts = [line.strip() for line in queries.read_text().splitlines() if line.strip()]
    else:
        texts = [query or ""]
    ctx = _context()
    try:
        service = SearchService(ctx)
        for text in texts:
            result = service.search(
                collection,
                query=text,
                top_k=top_k,
                metadata=_json_option(where),
                stage1=stage1,
                candidates=candidates,
            )
            hits = [_hit_json(h) for h in result.hits]
            if result.partial:
                missing = ", ".join(f"{i} ({why})" for i, why in result.missing_shards)
                console.print(f"[yellow]partial answer[/yellow]: shards {missing} did not answer")
            if as_json and queries is not None:
                print(json.dumps({"query": text, "hits": hits}, ensure_ascii=False))
            elif as_json:
                for h in hits:
                    print(json.dumps(h, ensure_ascii=False))
            else:
                _print_table(text, result)
    except PatchseekError as exc:
        _fail(exc)
    finally:
        ctx.close()


def _print_table(query: str, result: Any) -> None:
    table = Table(title=f"{query!r}  ({result.n_units} units, {result.took_ms:.1f} ms)", title_justify="left")
    for column in ("#", "score", "document", "where", "text"):
        table.add_column(column, overflow="fold" if column == "text" else "ellipsis")
    for rank, hit in enumerate(result.hits, 1):
        if hit.page is not None:
            where = f"page {hit.page}"
        elif hit.t_start is not None:
            where = f"{hit.t_start:.1f}-{hit.t_end:.1f} s"
        else:
            where = hit.kind
        table.add_row(str(rank), f"{hit.score:.3f}", Path(hit.document).name, where, hit.text[:60])
    Console().print(table)


@app.command()
def collections() -> None:
    """List collections with their document and unit counts."""
    from patchseek.api.services import CollectionService

    ctx = _context()
    try:
        for c, n_docs, n_units in CollectionService(ctx).list():
            print(f"{c.name}\t{n_docs} documents\t{n_units} units\tencoder={c.encoder}")
    finally:
        ctx.close()


@app.command()
def stats(
    collection: Annotated[str, typer.Option("--collection", "-c")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """What the collection's index holds and costs: segments, fitted state, bytes per page by part."""
    from patchseek.api.services import SearchService

    ctx = _context()
    try:
        info = SearchService(ctx).stats(collection)
    except PatchseekError as exc:
        _fail(exc)
        return
    finally:
        ctx.close()
    if as_json:
        print(json.dumps(info))
        return
    n = max(1, info["units"])
    print(f"{collection}: {info['units']} units, {info['rows']} vectors, {info['segments']} segments")
    print(f"fitted state: {info['state'] or 'none (scored exactly)'} {info['fit'] or ''}")
    for where in ("disk", "ram"):
        parts = info[f"{where}_bytes"]
        line = ", ".join(f"{k} {v / n:,.0f}" for k, v in sorted(parts.items())) or "-"
        print(f"{where} bytes per unit: {info[f'{where}_bytes_per_unit']:,.0f} ({line})")


@app.command()
def migrate() -> None:
    """Convert a data dir written by patchseek 0.1 (per-document files) to packed segments (also done
    automatically on start)."""
    from patchseek.api.db.session import Database
    from patchseek.api.services.context import ServiceContext
    from patchseek.api.services.migrate import migrate_legacy

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ctx = ServiceContext(settings, Database(settings.resolved_database_url, upgrade=True), _blobs(settings))
    try:
        report = migrate_legacy(ctx)
    finally:
        ctx.close()
    print(
        f"migrated {report.versions} index versions: {report.documents} documents, {report.units} units; "
        f"{report.files_removed} old files removed"
    )


def _blobs(settings: Settings):  # type: ignore[no-untyped-def]
    from patchseek.indexer.blobs import BlobStore
    from patchseek.storage import storage_from_settings

    return BlobStore(storage_from_settings(settings), "blobs/")


@app.command()
def rebuild(
    collection: Annotated[str, typer.Option("--collection", "-c")] = "default",
    encoder: Annotated[
        str | None, typer.Option(help="switch to this encoder (re-encodes from sources)")
    ] = None,
    reencode: Annotated[
        bool, typer.Option(help="encode every document again from its original bytes (--ray always does)")
    ] = False,
    ray: RayOption = None,
) -> None:
    """Rebuild a collection into a new index version and swap it in atomically."""
    from patchseek.api.services import JobService, RebuildService

    ctx = _context()
    address = ray or ctx.settings.jobs_ray_address
    cluster = None
    try:
        if address:
            from patchseek.indexer.distributed import connect

            cluster = connect(address)  # an unreachable cluster fails here, before any version exists
        service = RebuildService(ctx)
        job = service.submit(
            collection, encoder=encoder, status="running", reencode=reencode or bool(address)
        )
        job = service.run_job(job.id, ray_address=address)
        if job.status in ("succeeded", "partial"):
            JobService(ctx).prepare_search(job.id)  # merges only: a rebuild's fit is fresh
    except PatchseekError as exc:
        _fail(exc)
        return
    finally:
        if cluster is not None:
            from patchseek.indexer.distributed import disconnect

            disconnect(cluster)
        ctx.close()
    failed = [d for d in job.result.get("documents", []) if d["status"] == "failed"]
    for d in failed:
        console.print(f"[red]failed[/red] {d['filename']}: {d.get('error')}")
    if job.status in ("succeeded", "partial"):
        console.print(f"collection {collection!r} now serves index version {job.result['index_version']}")
    else:
        console.print(f"[red]rebuild failed[/red]: {job.error}; the previous index version keeps serving")
        raise typer.Exit(1)


@app.command()
def gc(
    grace: Annotated[
        float | None,
        typer.Option(
            min=0, help="seconds an unreferenced file is kept (default PATCHSEEK_ORPHAN_GRACE_SECONDS)"
        ),
    ] = None,
) -> None:
    """Remove what nothing references: blobs no document or unit uses and segment files no manifest
    lists, once older than the grace period (workers do this on their own at start and then hourly)."""
    from patchseek.api.services import SearchService
    from patchseek.api.services.blobgc import sweep_orphan_blobs

    settings = Settings()
    if grace is not None:
        settings = settings.model_copy(update={"orphan_grace_seconds": grace})
    ctx = _context(settings)
    try:
        report = sweep_orphan_blobs(ctx.db, ctx.blobs, settings.orphan_grace_seconds)
        files = SearchService(ctx).remove_orphan_files()
    except PatchseekError as exc:
        _fail(exc)
        return
    finally:
        ctx.close()
    print(
        f"blobs: {report.stored} stored, {report.referenced} referenced, {report.removed} removed, "
        f"{report.kept_young} unreferenced kept (younger than {settings.orphan_grace_seconds:g} s); "
        f"{report.temp_removed} temp files and {files} index files removed"
    )


def _read_limited(path: Path, limit: int) -> str:
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file")
    if path.stat().st_size > limit:
        raise typer.BadParameter(f"{path} is over {limit} bytes (PATCHSEEK_EVAL_MAX_FILE_BYTES)")
    return path.read_text(encoding="utf-8-sig")


@app.command("eval")
def evaluate(
    collection: Annotated[str, typer.Option("--collection", "-c")] = "default",
    queries: Annotated[Path, typer.Option(help="qid<TAB>text lines, or BEIR JSONL")] = Path("queries.tsv"),
    qrels: Annotated[
        Path, typer.Option(help="TREC qrels: qid 0 item rel (item: name, name#page, name@seconds, unit id)")
    ] = Path("qrels.txt"),
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            help='an alternative, JSON: \'{"name": "pq", "compression": {"quantizer": "pq"}}\' or knobs '
            "(candidates, stage1, stage1_k, nprobe, rerank), or an encoder; repeat for more",
        ),
    ] = None,
    promote: Annotated[
        str | None, typer.Option(help="swap this configuration (by name) in afterwards")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG of quality against bytes per page and latency")
    ] = None,
    depth: Annotated[int, typer.Option(min=1, help="hits retrieved per query")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per configuration")] = False,
) -> None:
    """Score the collection on judged queries, beside alternatives built as shadow index versions
    (never served; dropped unless --promote). Writes the PNG to --plot (default COLLECTION-eval.png)."""
    from patchseek.api.services import EvaluationService
    from patchseek.evaluation import plot_png

    configs = []
    for text in config or []:
        try:
            configs.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--config {text!r} is not valid JSON: {exc}") from exc
    settings = Settings()
    queries_text = _read_limited(queries, settings.eval_max_file_bytes)
    qrels_text = _read_limited(qrels, settings.eval_max_file_bytes)
    ctx = _context(settings)
    try:
        service = EvaluationService(ctx)
        job = service.submit(
            collection,
            queries=queries_text,
            qrels=qrels_text,
            configs=configs,
            promote=promote,
            depth=depth,
            status="running",
        )
        job = service.run_job(job.id, progress=lambda name: console.print(f"scored {name}"))
    except PatchseekError as exc:
        _fail(exc)
        return
    finally:
        ctx.close()
    if job.status != "succeeded":
        console.print(f"[red]evaluation failed[/red]: {job.error}; the live collection is unchanged")
        raise typer.Exit(1)
    result = job.result
    target = plot or Path(f"{collection}-eval.png")
    target.write_bytes(plot_png(result["rows"], title=f"{collection}: {result['queries']} queries"))
    if as_json:
        for row in result["rows"]:
            print(json.dumps(row, ensure_ascii=False))
    else:
        _print_evaluation(result)
    console.print(f"picture: {target}")
    if result.get("promoted"):
        p = result["promoted"]
        console.print(
            f"promoted {p['config']!r}: collection {collection!r} serves index version {p['index_version']}"
        )


def _print_evaluation(result: dict[str, Any]) -> None:
    columns = ["config", *result["measures"], "p50_ms", "p95_ms", "bytes_per_page", "ram_bytes_per_page"]
    table = Table(title=f"{result['queries']} judged queries", title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in result["rows"]:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    Console().print(table)
    sig = result.get("significance")
    if sig:
        ps = ", ".join(f"{m} p={'-' if p is None else f'{p:.3g}'}" for m, p in sig["p_values"].items())
        print(f"best: {sig['config']} against live ({sig['stat_test']} paired t-test): {ps}")


keys_app = typer.Typer(help="API keys (stored hashed; the key is printed once, at creation).")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who or what the key is for")],
    collection: Annotated[
        list[str] | None, typer.Option("--collection", "-c", help="limit the key to these collections")
    ] = None,
) -> None:
    """Create an API key and print it (only this once)."""
    from patchseek.api.services.keys import KeyService

    ctx = _context()
    try:
        row, key = KeyService(ctx).create(name, collection)
    finally:
        ctx.close()
    console.print(f"key {row.id} ({name}), scope: {', '.join(row.collections) if row.collections else 'all'}")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (prefix, scope, revoked)."""
    from patchseek.api.services.keys import KeyService

    ctx = _context()
    try:
        for row in KeyService(ctx).list():
            scope = ",".join(row.collections) if row.collections else "*"
            state = "revoked" if row.revoked_at else "active"
            print(f"{row.id}\t{row.prefix}…\t{row.name}\t{scope}\t{state}")
    finally:
        ctx.close()


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke an API key by id."""
    from patchseek.api.services.keys import KeyService

    ctx = _context()
    try:
        KeyService(ctx).revoke(key_id)
    except PatchseekError as exc:
        _fail(exc)
    finally:
        ctx.close()


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Run the HTTP API (with an in-process worker unless PATCHSEEK_WORKER_IN_PROCESS=false)."""
    import uvicorn

    from patchseek.api.app import create_app

    uvicorn.run(create_app(), host=host, port=port)


@app.command("serve-shards")
def serve_shards(
    collection: Annotated[list[str], typer.Option("--collection", "-c", help="a collection (repeatable)")],
    ray_address: Annotated[
        str | None, typer.Option("--ray", help="Ray cluster address (default: PATCHSEEK_RAY_ADDRESS)")
    ] = None,
    shards: Annotated[
        int | None, typer.Option("--shards", "-n", min=1, help="shards (default: PATCHSEEK_SHARDS)")
    ] = None,
    num_cpus: Annotated[float, typer.Option(min=0.0, help="Ray CPUs each shard server reserves")] = 1.0,
    stop: Annotated[bool, typer.Option("--stop", help="stop the collections' shard servers instead")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per shard")] = False,
) -> None:
    """Start the shard servers of collections on a Ray cluster (detached actors; run again to start any
    that stopped). The API serves sharded with PATCHSEEK_SHARDS and PATCHSEEK_RAY_ADDRESS set alike."""
    from pydantic import ValidationError

    from patchseek.api.services.collections import active_version, get_collection

    try:
        base = Settings()
        settings = Settings(ray_address=ray_address or base.ray_address, shards=shards or max(base.shards, 1))
    except ValidationError as exc:
        console.print(f"[red]error[/red] (invalid_input): {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from exc
    if not settings.ray_address:
        console.print("[red]error[/red] (invalid_input): give --ray ADDRESS or set PATCHSEEK_RAY_ADDRESS")
        raise typer.Exit(2)
    try:
        from patchseek.search.sharded import start_shards, stop_shards
    except PatchseekError as exc:
        _fail(exc)
        return
    ctx = _context(settings)
    try:
        versions = {}
        with ctx.db.session() as session:
            for name in collection:
                version = active_version(session, get_collection(session, name))
                root = ctx.index_root(version.collection_id, version.number).resolve()
                versions[name] = (
                    str(root),
                    version.dim,
                    dict(version.compression or {}),
                    StorageSpec.from_settings(settings),
                    ctx.index_prefix(version.collection_id, version.number),
                )
    except PatchseekError as exc:
        _fail(exc)
        return
    finally:
        ctx.close()
    count = settings.shards
    for name, warm in versions.items():
        if stop:
            n = stop_shards(settings.ray_address, name, count, namespace=settings.ray_namespace)
            console.print(f"{name}: stopped {n} of {count} shard servers")
            continue
        for info in start_shards(
            settings.ray_address,
            name,
            count,
            namespace=settings.ray_namespace,
            num_cpus=num_cpus,
            warm=warm if warm[3] is not None or Path(warm[0]).is_dir() else None,
        ):
            if as_json:
                print(json.dumps(info))
            else:
                print(
                    f"{name} shard {info['shard']}/{info['count']}: pid {info['pid']}, "
                    f"{info.get('segments', 0)} segments, {info.get('units', 0)} units"
                )


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="run queued jobs, then exit")] = False,
) -> None:
    """Process queued ingest jobs from the database (several workers may run)."""
    import time

    from patchseek.api.services import JobService

    ctx = _context()
    jobs = JobService(ctx)
    try:
        while True:
            n = jobs.run_pending()
            if once:
                console.print(f"ran {n} jobs")
                return
            if not n:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        ctx.close()


if __name__ == "__main__":
    app()
