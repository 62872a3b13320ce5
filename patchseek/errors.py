"""Exceptions shared by every layer. The API maps them to ``{"detail": ..., "code": ...}``."""

from __future__ import annotations


class JobInterrupted(Exception):  # noqa: N818 (a signal, not an error of the job)
    """The process is shutting down: the running job stops between documents and is re-queued, so the
    next worker resumes it (not a failure of the job)."""


class PatchseekError(Exception):
    """Base class; ``code`` is stable and machine-readable, the message says what to do next."""

    code = "internal_error"
    status_code = 500


class NotFoundError(PatchseekError):
    code, status_code = "not_found", 404


class ConflictError(PatchseekError):
    code, status_code = "conflict", 409


class InvalidInputError(PatchseekError):
    code, status_code = "invalid_input", 422


class UnsupportedMediaError(InvalidInputError):
    code, status_code = "unsupported_media", 415


class PayloadTooLargeError(InvalidInputError):
    code, status_code = "payload_too_large", 413


class DocumentReadError(InvalidInputError):
    """A file could not be read: corrupt, truncated, empty or encrypted."""

    code, status_code = "unreadable_document", 422


class EncryptedDocumentError(DocumentReadError):
    code, status_code = "encrypted_document", 422


class AuthError(PatchseekError):
    code, status_code = "unauthorized", 401


class ForbiddenError(PatchseekError):
    code, status_code = "forbidden", 403


class ModelLoadError(PatchseekError):
    """An encoder could not be loaded (no network, unknown architecture, missing extra)."""

    code, status_code = "model_load_error", 500


class KernelUnavailableError(PatchseekError):
    """A kernel backend was requested where it cannot run (e.g. Triton without CUDA or interpreter)."""

    code, status_code = "kernel_unavailable", 500


class DeviceMemoryError(PatchseekError):
    """Index data does not fit the device-memory budget and ``PATCHSEEK_DEVICE_FALLBACK=error``."""

    code, status_code = "device_memory", 503


class MissingDependencyError(PatchseekError):
    code, status_code = "missing_dependency", 500


class TooManyPagesError(DocumentReadError):
    """A PDF with more pages than ``PATCHSEEK_MAX_PAGES``: readable, but refused."""

    code, status_code = "too_many_pages", 422


class ImageTooLargeError(PayloadTooLargeError):
    """An image (or a page) whose decoded pixels would exceed the server's pixel budget."""

    code, status_code = "image_too_large", 413


class ServiceBusyError(PatchseekError):
    """Every slot for heavy work (rendering, decoding, encoding) stayed taken for too long."""

    code, status_code = "server_busy", 503


class EncoderNotAllowedError(InvalidInputError):
    """An encoder that is not on the operator's allow-list (``PATCHSEEK_ENCODERS``)."""

    code, status_code = "encoder_not_allowed", 422


class ClusterUnavailableError(PatchseekError):
    """The Ray cluster a distributed job was sent to cannot be reached (``--ray`` /
    ``PATCHSEEK_RAY_ADDRESS``)."""

    code, status_code = "cluster_unavailable", 503
