"""The error answers each route documents in the OpenAPI schema, all with the ``ErrorPublic`` body."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from patchseek.api.schemas import NAME_PATTERN, ErrorPublic, ValidationErrorPublic

_DESCRIPTIONS = {
    400: "The request body could not be parsed (e.g. a malformed multipart body)",
    401: "A valid X-API-Key header is required",
    403: "The API key may not do this",
    404: "The collection, document, unit or job does not exist",
    409: "Conflicts with the current state (exists already, or a job is running)",
    413: "An uploaded file or a query image is over a size limit",
    415: "The file or image format is not supported",
    422: "The request does not match the schema, or its content was refused",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status in ``codes`` with the ``{"detail", "code"}`` body.

    A 422 replaces FastAPI's default ``HTTPValidationError`` (which says ``detail`` is an array): the
    app's handler answers every validation error as ``ValidationErrorPublic``.
    """
    return {
        code: {
            "model": ValidationErrorPublic if code == 422 else ErrorPublic,
            "description": _DESCRIPTIONS[code],
        }
        for code in codes
    }


# Answers every route behind ``require_api_key`` may give.
SECURED = errors(401, 403)
# A collection name in a URL path: anything a collection could not be called is a 422, never a query.
NamePath = Annotated[str, Path(min_length=1, max_length=128, pattern=NAME_PATTERN)]
