"""Frozen data carried between the indexer, the encoders, compression and search.

Nothing here imports FastAPI or SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image

UnitKind = Literal["page", "image", "frame", "shot", "segment"]
MediaType = Literal["pdf", "image", "video"]


@dataclass(frozen=True)
class Word:
    """A word of a unit's text with its box in normalised page coordinates (0..1, origin top-left)."""

    text: str
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1)


@dataclass
class SourceUnit:
    """One retrievable unit read from a source file: a PDF page, an image, or a video frame/segment.

    ``index`` is 0-based within the document (page number - 1 for PDFs, sample index for video).
    ``words`` is the text layer when the source has one (PDF); ``None`` means "no text layer, OCR may
    be used"; an empty list means "there is a text layer and it is empty".
    """

    kind: UnitKind
    index: int
    image: Image.Image
    words: list[Word] | None = None
    t_start: float | None = None
    t_end: float | None = None
    frames: list[Image.Image] = field(default_factory=list)  # extra frames of a video segment

    @property
    def page(self) -> int | None:
        return self.index + 1 if self.kind == "page" else None

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words or [])


@dataclass(frozen=True)
class PatchBag:
    """The multi-vector representation of one unit.

    vectors   (n, dim) float32, L2-normalised rows
    salience  (n,) float32, higher = more important (attention received, or a cheaper proxy)
    positions (n, 2) int64, (row, col) on the encoder's patch grid
    grid      (rows, cols) of that grid
    text      the words the encoder saw (lexical encoder / OCR), for citations and RAG context
    """

    vectors: torch.Tensor
    salience: torch.Tensor
    positions: torch.Tensor
    grid: tuple[int, int]
    text: str = ""

    def __post_init__(self) -> None:
        n = self.vectors.shape[0]
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be (n, dim), got {tuple(self.vectors.shape)}")
        if self.salience.shape != (n,):
            raise ValueError(f"salience must be ({n},), got {tuple(self.salience.shape)}")
        if self.positions.shape != (n, 2):
            raise ValueError(f"positions must be ({n}, 2), got {tuple(self.positions.shape)}")

    @property
    def n_patches(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])
