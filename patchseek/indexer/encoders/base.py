"""The ``Encoder`` interface every encoder implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from patchseek.types import PatchBag, SourceUnit

ProgressFn = Callable[[int, int], None]  # (done, total)


class Encoder(ABC):
    """Turns units into bags of patch vectors and queries into query-token vectors.

    Document and query vectors live in the same ``dim``-dimensional space and are L2-normalised, so
    late interaction (MaxSim) is a sum over query tokens of the best dot product with any patch.
    """

    name: str
    revision: str
    dim: int

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> list[PatchBag]:
        """Encode page / image / frame images: one ``PatchBag`` per image."""

    def encode_units(
        self, units: Sequence[SourceUnit], progress: ProgressFn | None = None, *, salience: bool = True
    ) -> list[PatchBag]:
        """Encode source units. The default encodes their images; text-aware encoders override it.

        ``salience=False`` says the caller will not prune by salience (an encoder may then skip an
        expensive salience signal)."""
        bags = self.encode_images([u.image for u in units])
        if progress is not None:
            progress(len(units), len(units))
        return bags

    @abstractmethod
    def encode_queries(self, queries: Sequence[str]) -> list[torch.Tensor]:
        """Encode text queries: one ``(n_q, dim)`` float32 tensor per query."""

    def encode_image_queries(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Encode image queries: by default the image's patch vectors serve as query tokens."""
        return [bag.vectors for bag in self.encode_images(images)]
