"""Synthetic ColPali-shaped corpus shared by the benchmarks (``bench/compression.py``, ``bench/search.py``).

The distribution (4096 anisotropic "visual words", background words, topics, word instances, noisy
query tokens plus generic tokens) is described in ``bench/compression.py``'s docstring.
``make_corpus`` builds every page in memory from one seeded stream (the compression benchmark's corpus,
unchanged); ``SyntheticCorpus`` draws the same distribution page by page from per-page seeds, so a large
corpus can be generated in chunks, streamed to disk, and any page (a query's target) regenerated alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from patchseek.types import PatchBag

N_WORDS, N_BACKGROUND, GRID_COLS = 4096, 16, 32


@dataclass
class Corpus:
    """Pages as patch bags, queries (n_tokens, dim) each, and each query's ground-truth page."""

    bags: list[PatchBag]
    queries: list[torch.Tensor]
    targets: np.ndarray  # (n_queries,)
    name: str


@dataclass(frozen=True)
class Page:
    """One generated page: vectors (patches, dim) float32, salience (patches,) float32, and for its
    content patches the word each shows, word_of (n_content,), and its row, rows (n_content,)."""

    vectors: np.ndarray
    salience: np.ndarray
    word_of: np.ndarray
    rows: np.ndarray


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Vocabulary:
    """The shared part of the corpus: words, the common direction, topics; drawn from ``rng``."""

    def __init__(self, rng: np.random.Generator, pages: int, dim: int, topic_words: int) -> None:
        self.dim = dim
        spectrum = (np.arange(dim) + 1.0) ** -0.7
        self.spectrum = spectrum / spectrum.sum()
        self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]  # (dim, dim) random rotation
        self.common = _normalize(rng.standard_normal(dim))  # (dim,)
        self.words = _normalize(0.6 * self.common + self.structured(rng, N_WORDS))  # (n_words, dim)
        self.content_ids = np.arange(N_BACKGROUND, N_WORDS)
        popularity = (np.arange(self.content_ids.size) + 1.0) ** -0.8
        self.popularity = popularity / popularity.sum()
        self.n_topics = max(1, pages // 20)
        self.topics = [
            rng.choice(self.content_ids, size=topic_words, replace=False, p=self.popularity)
            for _ in range(self.n_topics)
        ]
        self.noise_scale = 1.0 / math.sqrt(dim)

    def structured(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, dim) anisotropic Gaussian with E‖g‖² = 1."""
        return (rng.standard_normal((n, self.dim)) * np.sqrt(self.spectrum)) @ self.basis.T

    def page(self, rng: np.random.Generator, p: int, patches: int, instance_noise: float) -> Page:
        """Page ``p`` drawn from ``rng``."""
        topic = self.topics[p % self.n_topics]
        n_topic, dim, ns = 56, self.dim, self.noise_scale
        vocab = np.concatenate(
            [
                rng.choice(topic, n_topic, replace=False),
                rng.choice(self.content_ids, 80 - n_topic, replace=False, p=self.popularity),
            ]
        )  # (80,)
        instances = _normalize(
            self.words[vocab] + instance_noise * ns * rng.standard_normal((vocab.size, dim))
        )
        n_bg = int(0.4 * patches)
        word_of = rng.integers(0, vocab.size, size=patches - n_bg)  # (n_content,)
        bg_words = rng.choice(N_BACKGROUND, 3, replace=False)
        bg = _normalize(
            self.words[bg_words[rng.integers(0, 3, size=n_bg)]] + 0.25 * ns * rng.standard_normal((n_bg, dim))
        )  # (n_bg, dim)
        content = _normalize(instances[word_of] + 0.25 * ns * rng.standard_normal((word_of.size, dim)))
        vectors = np.concatenate([bg, content])  # (patches, dim)
        salience = np.concatenate([rng.lognormal(-1.0, 0.4, n_bg), rng.lognormal(0.0, 0.6, word_of.size)])
        perm = rng.permutation(patches)  # background spread over the page
        inv = np.argsort(perm)  # new index of each original row
        return Page(vectors[perm], salience[perm].astype(np.float32), word_of, inv[n_bg:])

    def query(
        self,
        rng: np.random.Generator,
        page: Page,
        *,
        query_noise: float,
        n_generic: int,
        query_words: int,
    ) -> torch.Tensor:
        """A (20, dim) query whose content tokens are noisy patches of ``page``."""
        chosen = rng.choice(np.unique(page.word_of), size=query_words, replace=False)
        picks = np.concatenate(
            [
                rng.choice(page.rows[page.word_of == w], size=min(3, int((page.word_of == w).sum())))
                for w in chosen
            ]
        )[: 20 - n_generic]
        toks = _normalize(
            page.vectors[picks] + query_noise * self.noise_scale * rng.standard_normal((picks.size, self.dim))
        )
        generic = _normalize(self.common + 0.8 * self.structured(rng, n_generic))
        return torch.from_numpy(np.concatenate([toks, generic]))


def _positions(patches: int) -> tuple[torch.Tensor, tuple[int, int]]:
    rows = np.arange(patches)
    pos = np.stack([rows // GRID_COLS, rows % GRID_COLS], axis=1).astype(np.int64)  # (patches, 2)
    return torch.from_numpy(pos), (math.ceil(patches / GRID_COLS), GRID_COLS)


def make_corpus(
    pages: int,
    patches: int = 1030,
    dim: int = 128,
    n_queries: int = 100,
    seed: int = 0,
    query_noise: float = 2.0,
    instance_noise: float = 0.6,
    n_generic: int = 10,
    topic_words: int = 80,
    query_words: int = 3,
) -> Corpus:
    """The whole corpus in memory, every draw from one stream seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(rng, pages, dim, topic_words)
    positions, grid = _positions(patches)
    drawn = [vocab.page(rng, p, patches, instance_noise) for p in range(pages)]
    bags = [
        PatchBag(
            vectors=torch.from_numpy(pg.vectors),
            salience=torch.from_numpy(pg.salience),
            positions=positions,
            grid=grid,
        )
        for pg in drawn
    ]
    targets = rng.integers(0, pages, size=n_queries)
    queries = [
        vocab.query(rng, drawn[t], query_noise=query_noise, n_generic=n_generic, query_words=query_words)
        for t in targets
    ]
    return Corpus(
        bags=bags, queries=queries, targets=targets, name=f"synthetic {pages} pages × {patches} × {dim}"
    )


class SyntheticCorpus:
    """The same distribution as ``make_corpus``, generated page by page (``pages`` can exceed RAM).

    Page ``p`` is drawn from ``default_rng([seed, 1, p])`` and query ``i`` from
    ``default_rng([seed, 2, i])``, so chunks can be produced in any order and queries need only their
    target page.
    """

    def __init__(
        self,
        pages: int,
        patches: int = 1030,
        dim: int = 128,
        seed: int = 0,
        *,
        query_noise: float = 2.0,
        instance_noise: float = 0.6,
        n_generic: int = 10,
        topic_words: int = 80,
        query_words: int = 3,
    ) -> None:
        self.pages, self.patches, self.dim, self.seed = pages, patches, dim, seed
        self.query_noise, self.instance_noise = query_noise, instance_noise
        self.n_generic, self.query_words = n_generic, query_words
        self.vocab = Vocabulary(np.random.default_rng([seed, 0]), pages, dim, topic_words)

    def page(self, p: int) -> Page:
        return self.vocab.page(np.random.default_rng([self.seed, 1, p]), p, self.patches, self.instance_noise)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Pages in order, ``size`` at a time: (n_chunk_pages · patches, dim) float32 each."""
        for start in range(0, self.pages, size):
            stop = min(self.pages, start + size)
            yield np.concatenate([self.page(p).vectors for p in range(start, stop)])

    def queries(self, n: int) -> tuple[list[torch.Tensor], np.ndarray]:
        """``n`` queries (20, dim) float32 and their target pages (n,)."""
        targets = np.random.default_rng([self.seed, 3]).integers(0, self.pages, size=n)
        queries = [
            self.vocab.query(
                np.random.default_rng([self.seed, 2, i]),
                self.page(int(t)),
                query_noise=self.query_noise,
                n_generic=self.n_generic,
                query_words=self.query_words,
            )
            for i, t in enumerate(targets)
        ]
        return queries, targets
