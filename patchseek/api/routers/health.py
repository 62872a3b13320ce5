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
    """The database answers."""
    with ctx.db.session() as session:
        session.execute(text("SELECT 1"))
    return {"status": "ready"}
