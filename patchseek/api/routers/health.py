from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from patchseek.api.deps import ContextDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(ctx: ContextDep) -> dict[str, str]:
    """The database and the storage (``PATCHSEEK_STORAGE_URL``) answer; else 503 with what failed
    (``storage_unavailable`` names the store and the error)."""
    with ctx.db.session() as session:
        session.execute(text("SELECT 1"))
    ctx.storage.check()
    return {"status": "ready"}
