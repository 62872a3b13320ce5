"""The weight-free lexical encoder: hashed character n-grams of words placed on a patch grid.

Each word becomes a unit vector by signed feature hashing of its character n-grams (and the whole
word) into ``dim`` dimensions. Two words share direction in proportion to the n-grams they share, so
MaxSim over words behaves like a soft, typo-tolerant term match. Words come from the PDF text layer, or
from OCR for images and video frames. It is deterministic, runs on the CPU and lets every other part of
patchseek (compression, kernels, search, API) run and be measured on real documents.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from patchseek.indexer.encoders.base import Encoder, ProgressFn
from patchseek.types import PatchBag, SourceUnit, Word

_TOKEN = re.compile(r"\w+", re.UNICODE)


def normalize_word(text: str) -> str:
    """Case- and accent-insensitive form used for hashing (NFKC, casefold)."""
    return unicodedata.normalize("NFKC", text).casefold()


def tokenize(text: str) -> list[str]:
    """Split text into normalised word tokens (letters and digits of any script)."""
    return _TOKEN.findall(normalize_word(text))


def _feature(key: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, (1.0 if (value >> 63) & 1 else -1.0)


class LexicalEncoder(Encoder):
    """Offline default encoder.

    Parameters
    ----------
    dim : embedding dimension (128 as ColPali's projection).
    grid : patch grid (rows, cols) words are placed on; 32×32 mirrors ColPali's 1024 patches.
    ngram : character n-gram length; the whole word is an extra feature weighing ``word_weight`` times
        the n-grams together (so an exact match scores 1 and a variant sharing most n-grams about 0.5).
    ocr : OCR units without a text layer (needs the ``ocr`` extra); otherwise they get no words.
    max_words : cap per unit; beyond it the most frequent words are kept once.

    Examples
    --------
    >>> enc = LexicalEncoder(ocr=False)
    >>> q = enc.encode_queries(["Quarterly revenue"])[0]
    >>> tuple(q.shape)
    (2, 128)
    >>> round(float(q[0] @ enc.word_vector("quarterly")), 4)
    1.0
    """

    name = "lexical"

    def __init__(
        self,
        dim: int = 128,
        grid: tuple[int, int] = (32, 32),
        *,
        ngram: int = 3,
        word_weight: float = 0.75,
        ocr: bool = True,
        max_words: int = 4096,
    ) -> None:
        self.dim = dim
        self.grid = grid
        self.ngram = ngram
        self.word_weight = word_weight
        self.ocr = ocr
        self.max_words = max_words
        self.revision = f"hash-ngram{ngram}-w{word_weight:g}-d{dim}-v1"
        self._vector = lru_cache(maxsize=200_000)(self._compute_vector)

    def _compute_vector(self, word: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float32)
        padded = f"<{word}>"
        n = self.ngram
        grams = [padded[i : i + n] for i in range(max(len(padded) - n + 1, 1))]
        for gram in grams:
            index, sign = _feature("g:" + gram, self.dim)
            vec[index] += sign
        index, sign = _feature("w:" + word, self.dim)
        vec[index] += sign * self.word_weight * max(1.0, len(grams) ** 0.5)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 else vec

    def word_vector(self, word: str) -> torch.Tensor:
        """Unit vector of one (already tokenised) word, shape ``(dim,)``."""
        return torch.from_numpy(self._vector(normalize_word(word)).copy())

    def _bag(self, words: Sequence[Word]) -> PatchBag:
        rows, cols = self.grid
        tokens: list[tuple[str, tuple[float, float, float, float]]] = []
        for w in words:
            for t in tokenize(w.text):
                tokens.append((t, w.box))
        if len(tokens) > self.max_words:
            tokens = tokens[: self.max_words]
        if not tokens:
            return PatchBag(
                vectors=torch.zeros(0, self.dim),
                salience=torch.zeros(0),
                positions=torch.zeros(0, 2, dtype=torch.long),
                grid=self.grid,
                text="",
            )
        counts = Counter(t for t, _ in tokens)
        vectors = np.stack([self._vector(t) for t, _ in tokens])  # (n, dim)
        centers = np.array([((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for _, b in tokens])  # (n, 2) y, x
        positions = np.stack(
            [
                np.clip((centers[:, 0] * rows).astype(np.int64), 0, rows - 1),
                np.clip((centers[:, 1] * cols).astype(np.int64), 0, cols - 1),
            ],
            axis=1,
        )  # (n, 2) row, col
        # Salience: rarer words within the unit matter more (a within-page IDF proxy), longer words too.
        salience = np.array([np.log1p(len(t)) / counts[t] for t, _ in tokens], dtype=np.float32)
        return PatchBag(
            vectors=torch.from_numpy(vectors),
            salience=torch.from_numpy(salience),
            positions=torch.from_numpy(positions),
            grid=self.grid,
            text=" ".join(w.text for w in words),
        )

    def _words_for(self, unit_words: list[Word] | None, image: Image.Image) -> list[Word]:
        if unit_words is not None and (unit_words or not self.ocr):
            return unit_words
        if not self.ocr:
            return []
        from patchseek.indexer.encoders.ocr import ocr_words

        return ocr_words(image)

    def encode_units(
        self, units: Sequence[SourceUnit], progress: ProgressFn | None = None, *, salience: bool = True
    ) -> list[PatchBag]:
        """Text layer words where the unit has them; OCR of the image (and segment frames) otherwise."""
        bags = []
        for i, unit in enumerate(units):
            words = self._words_for(unit.words, unit.image)
            if unit.words is None and unit.frames:
                for frame in unit.frames:
                    words = words + self._words_for(None, frame)
            bags.append(self._bag(words))
            if progress is not None:
                progress(i + 1, len(units))
        return bags

    def encode_images(self, images: Sequence[Image.Image]) -> list[PatchBag]:
        """OCR each image and embed its words."""
        return [self._bag(self._words_for(None, image)) for image in images]

    def encode_queries(self, queries: Sequence[str]) -> list[torch.Tensor]:
        """One vector per query word, ``(n_words, dim)``; an empty query gives ``(0, dim)``."""
        out = []
        for query in queries:
            tokens = tokenize(query)
            if tokens:
                out.append(torch.from_numpy(np.stack([self._vector(t) for t in tokens])))
            else:
                out.append(torch.zeros(0, self.dim))
        return out
