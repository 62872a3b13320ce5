"""The OpenAPI document says what the handlers do: error bodies, hand-written sub-schemas."""

from __future__ import annotations

from dataclasses import fields

from patchseek.api.app import create_app
from patchseek.api.schemas import COMPRESSION_SCHEMA
from patchseek.indexer.compress import CompressionConfig

ERROR_REFS = {"#/components/schemas/ErrorPublic", "#/components/schemas/ValidationErrorPublic"}


def test_every_error_response_has_the_detail_and_code_body() -> None:
    document = create_app().openapi()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    detail = document["components"]["schemas"]["ErrorPublic"]["properties"]["detail"]
    assert detail["type"] == "string"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref in ERROR_REFS, (method, path, status)


def test_secured_operations_document_401_and_403() -> None:
    for path, operations in create_app().openapi()["paths"].items():
        for method, operation in operations.items():
            if operation.get("security"):
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_the_compression_schema_lists_every_config_field() -> None:
    assert set(COMPRESSION_SCHEMA["properties"]) == {f.name for f in fields(CompressionConfig)}
