"""patchseek: multi-vector visual retrieval over PDFs, images and videos."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
