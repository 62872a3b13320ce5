"""The FastAPI application: ``create_app(settings=None)``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

import patchseek
from patchseek import metrics
from patchseek.api.deps import require_api_key
from patchseek.api.routers import collections, context, documents, evaluations, health, jobs, search, units
from patchseek.api.routers import metrics as metrics_router
from patchseek.api.routers._responses import SECURED
from patchseek.api.services import (
    CollectionService,
    EvaluationService,
    IngestService,
    JobService,
    RebuildService,
    SearchService,
    ServiceContext,
    Worker,
)
from patchseek.api.services.keys import KeyService
from patchseek.config import Settings
from patchseek.errors import PatchseekError

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
# The web page runs only its own script file: no inline script or style, no other origin; thumbnails are
# blob: URLs of images fetched with the key header.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _allowed_methods(app: FastAPI, request: Request) -> str:
    """Every method some route serves at this path (Starlette's own 405 names only the first route's)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The lifespan opens the database (running migrations), the stores and, unless
    ``worker_in_process`` is off, a background worker that runs queued ingest jobs."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = ServiceContext.from_settings(settings)
        app.state.ctx = ctx
        app.state.collections = CollectionService(ctx)
        app.state.ingest = IngestService(ctx)
        app.state.jobs = JobService(ctx)
        app.state.search = SearchService(ctx)
        app.state.rebuild = RebuildService(ctx)
        app.state.evaluations = EvaluationService(ctx)
        app.state.keys = KeyService(ctx)
        app.state.worker = None
        if settings.worker_in_process:
            app.state.jobs.requeue_stale()  # jobs of dead processes (stale heartbeat)
            app.state.worker = Worker(ctx)
            app.state.worker.start()
        try:
            yield
        finally:
            ctx.stopping.set()  # a running job stops after its current document and is re-queued
            if app.state.worker is not None:
                app.state.worker.stop()
                app.state.worker.join(timeout=30)
            ctx.close()

    # Swagger UI and ReDoc from the assets fastapi-offline ships, so /docs and /redoc work without network.
    app = FastAPIOffline(
        static_url="/docs-assets",
        title="patchseek",
        version=patchseek.__version__,
        description="Multi-vector visual retrieval over PDFs, images and videos.",
        lifespan=lifespan,
    )

    @app.exception_handler(PatchseekError)
    async def _patchseek_error(_: Request, exc: PatchseekError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("request failed: %s", exc)
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            {
                "detail": f"{where}: {first.get('msg', 'invalid request')}",
                "code": "invalid_request",
                "errors": [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors],
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(app, request)
        return JSONResponse(
            {"detail": str(exc.detail), "code": code}, status_code=exc.status_code, headers=headers
        )

    @app.middleware("http")
    async def _timing(request: Request, call_next):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.REQUEST_LATENCY.labels(template, request.method, str(response.status_code)).observe(
            time.perf_counter() - start
        )
        return response

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        """The web page: upload, search, results with thumbnails, page/time and heat maps."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/app.js", include_in_schema=False)
    def page_script() -> FileResponse:
        return FileResponse(STATIC_DIR / "app.js", media_type="text/javascript", headers=PAGE_HEADERS)

    @app.get("/app.css", include_in_schema=False)
    def page_style() -> FileResponse:
        return FileResponse(STATIC_DIR / "app.css", media_type="text/css", headers=PAGE_HEADERS)

    app.include_router(health.router)
    app.include_router(metrics_router.router)
    secured = [Depends(require_api_key)]
    for module in (collections, documents, jobs, search, context, units, evaluations):
        app.include_router(module.router, dependencies=secured, responses=SECURED)
    return app
