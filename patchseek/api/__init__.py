"""The HTTP service: FastAPI routers over services over the database and the stores."""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name == "create_app":
        from patchseek.api.app import create_app

        return create_app
    raise AttributeError(name)
