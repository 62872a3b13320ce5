"""Database layer (SQLAlchemy 2 + Alembic)."""

from __future__ import annotations

from patchseek.api.db.models import Base, Collection, Document, IndexVersion, Job, Unit
from patchseek.api.db.session import Database, make_engine, upgrade_database

__all__ = [
    "Base",
    "Collection",
    "Database",
    "Document",
    "IndexVersion",
    "Job",
    "Unit",
    "make_engine",
    "upgrade_database",
]
