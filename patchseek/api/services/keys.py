"""API keys: created once (the clear key is shown only then), stored hashed, scoped to collections.

Keys from ``PATCHSEEK_API_KEYS`` (environment) are unscoped admin keys. Authentication is required as
soon as any key exists, in the environment or in the database.

A key scoped to collections may search, upload and read in them, and rebuild them with their current
encoder. Creating or deleting a collection and switching its encoder need an unscoped (admin) key.
Documents, units and jobs of a collection outside the key's scope answer 404, exactly as missing ones.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select

from patchseek.api.db.models import ApiKey, utcnow
from patchseek.api.services.context import ServiceContext
from patchseek.errors import AuthError, ForbiddenError, NotFoundError

KEY_PREFIX = "psk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``collections`` is None for full access, else the names the key may use."""

    name: str
    collections: frozenset[str] | None

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def check(self, collection: str) -> None:
        """For a collection named in the URL: 403 for any name outside the scope (existing or not)."""
        if not self.may_use(collection):
            raise ForbiddenError(f"this API key may not use collection {collection!r}")

    def check_visible(self, collection: str | None, not_found: str) -> None:
        """For a row found by id (unit, job): one outside the scope is reported as missing.

        ``collection`` is the row's collection name (None if it has none); ``not_found`` the message of
        the 404, the same one the caller raises for an id that does not exist.
        """
        if collection is None or not self.may_use(collection):
            raise NotFoundError(not_found)

    @property
    def is_admin(self) -> bool:
        return self.collections is None

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ForbiddenError("this API key is scoped to collections; this action needs an unscoped key")

    def require_encoder_change(self, requested: str | None, current: str) -> None:
        """Switching a collection's encoder (``requested`` other than ``current``) needs an admin key."""
        if requested is not None and requested != current:
            self.require_admin()


ANONYMOUS = Principal("anonymous", None)


class KeyService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def create(self, name: str, collections: list[str] | None = None) -> tuple[ApiKey, str]:
        """A new key; returns its row and the clear key (shown once, never stored)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.ctx.db.session() as session:
            row = ApiKey(
                name=name[:128],
                prefix=key[:12],
                key_hash=hash_key(key),
                collections=sorted(set(collections)) if collections else None,
            )
            session.add(row)
            session.flush()
            return row, key

    def list(self) -> list[ApiKey]:
        with self.ctx.db.session() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))

    def revoke(self, key_id: int) -> None:
        with self.ctx.db.session() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise NotFoundError(f"API key {key_id} does not exist")
            row.revoked_at = utcnow()

    def authenticate(self, key: str | None) -> Principal:
        """The caller behind ``key``; anonymous full access only while no key is configured at all."""
        env_keys = self.ctx.settings.api_keys
        if key is not None and any(hmac.compare_digest(key, k) for k in env_keys):
            return Principal("env", None)
        with self.ctx.db.session() as session:
            if key is not None:
                row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
                if row is not None and row.revoked_at is None:
                    scope = frozenset(row.collections) if row.collections is not None else None
                    return Principal(row.name, scope)
            any_db_key = session.scalar(select(func.count(ApiKey.id)).where(ApiKey.revoked_at.is_(None)))
        if env_keys or any_db_key:
            raise AuthError("a valid X-API-Key header is required")
        return ANONYMOUS
