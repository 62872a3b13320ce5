"""Compression benchmark: bytes per page and ranking fidelity of every codec and prune/merge setting.

Usage::

    python bench/compression.py                      # quick: 200 synthetic pages
    python bench/compression.py --pages 1000 --queries 100 --write-docs   # docs/BENCHMARKS.md

For each setting it prints code bytes per page, the ratio to float16 (1030 × 128 × 2 = 263,680 B), and
how well the stage-2 ranking on the codes agrees with exact float32 MaxSim on the uncompressed vectors:

- ``R@10``: recall@10 against the exact top 10 (share of the exact top-10 pages found in the codec's top 10);
- ``nDCG ret``: nDCG@10 of the codec's ranking divided by nDCG@10 of the exact ranking, both judged on
  the query's ground-truth page (ratio of means over queries);
- the same two after an exact rerank of the codec's top 100 on the float16 copy of the kept
  (pruned / merged) vectors (``keep="float16"``, the stage-3 path);
- fit time (sampling + quantizer fitting, 50k-vector sample) and encode time (prune/merge + codes).

Synthetic ColPali-shaped corpus (``make_corpus``), seeded. Each choice mirrors a property of real
ColPali/ColQwen patch embeddings; none was picked to make a codec look good, and the knobs are exposed:

- 4096 shared "visual-word" centroids in 128-d: ``normalize(0.6·m + g)``. ``m`` is one common direction
  (contrastively trained token embeddings are anisotropic: patches share a mean direction, here a
  cosine of ~0.48 with the collection mean); ``g`` is Gaussian with a decaying spectrum (variance of
  principal component i ∝ (i+1)^-``spectrum_decay``, default 1.0: the top 10 of 128 components hold
  ~54% of the variance) in a random basis — the model's 128-d projection concentrates variance in a
  few directions;
- 16 of the words are "background" (margins, white space): each page spends 40% of its patches on 3 of
  them, near-duplicates shared across pages, with low salience (lognormal(-1, 0.4)); content patches
  have lognormal(0, 0.6) salience;
- pages belong to topics (20 pages per topic, 80 topic words drawn by a Zipf-like popularity); a page
  uses 80 content words, 70% from its topic and 30% from the whole vocabulary, so pages compete on
  shared words;
- each (page, word) is an instance ``normalize(w + 0.6·e)`` (a word rendered in that page's style) and
  each patch of it ``normalize(instance + 0.25·e)``: many near-duplicate patches per page;
- a query has 20 tokens: 10 built from patches of 3 content words of its target page plus noise,
  ``normalize(patch + σ·e)`` with σ = ``--query-noise`` (token-to-source cosine ≈ 1/sqrt(1+σ²): 0.71
  at σ = 1, 0.55 at σ = 1.5), and 10 generic tokens ``normalize(m + 0.8·g)`` that match every page a
  little (like ColPali's query augmentation tokens). The target page is the ground truth.

The noise ``e`` (E‖e‖² = 1) is drawn from the embeddings' own anisotropic distribution: what varies
between renderings of a word, or between a text token and the patch it matches, lives in the model's
subspace. The previous generator drew it isotropically (``--sensitivity 2i`` reproduces that: flatter
spectrum aside, σ = 2 isotropic), which puts most of a query token's energy in directions where no
page varies — exactly where every codec has its largest relative error — so it over-states codec loss
at a given token-to-patch cosine; anisotropic noise at the same σ is in turn a much harder retrieval
task (exact nDCG@10 drops), hence the main table at σ = 1 and the ``--sensitivity`` levels beside it.

Part (b), real documents: the PDFs of ``/work/shared/corpus/pdf-samples`` (or ``--corpus``) are read by
``patchseek.indexer.sources`` and encoded by the lexical encoder; queries are 8-word windows of a page's
own text, whose page is the ground truth. Skipped, with a note, when the corpus or those modules are
missing.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from patchseek.indexer.compress import CompressionConfig, Compressor, SignBinaryQuantizer
from patchseek.kernels import maxsim
from patchseek.types import PatchBag

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
DEFAULT_CORPUS = Path("/work/shared/corpus/pdf-samples")
SECTION = "## Compression"
RERANK_DEPTH = 100
K = 10


# --------------------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """Pages as patch bags, queries (n_tokens, dim) each, and each query's ground-truth page."""

    bags: list[PatchBag]
    queries: list[torch.Tensor]
    targets: np.ndarray  # (n_queries,)
    name: str


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


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
    spectrum_decay: float = 1.0,
    isotropic_noise: bool = False,
) -> Corpus:
    """The synthetic ColPali-shaped corpus described in the module docstring.

    Parameters
    ----------
    pages, patches, dim : int
        Corpus shape: ``pages`` bags of ``patches`` vectors of ``dim`` floats.
    n_queries : int
        Queries, each with one ground-truth page drawn uniformly.
    seed : int
        Seed of every draw.
    query_noise : float
        Norm (in expectation) of the noise added to a query's content tokens, relative to the unit
        patch they are drawn from: the difficulty knob (``--query-noise``).
    instance_noise : float
        Norm of the per-page perturbation of a word (how differently pages render the same word).
    n_generic : int
        Query tokens that match every page a little (of 20 tokens).
    topic_words : int
        Words per topic.
    query_words : int
        Content words of the target page a query is built from.
    spectrum_decay : float
        Variance of principal component ``i`` ∝ ``(i + 1) ** -spectrum_decay``.
    isotropic_noise : bool
        Draw instance, patch and query noise isotropically (the previous generator) instead of from
        the embedding's own anisotropic distribution: the sensitivity check of that choice.

    Returns
    -------
    Corpus
        Bags (patches, dim) float32 with salience, queries (20, dim) float32, targets (n_queries,).
    """
    rng = np.random.default_rng(seed)
    n_words, n_background = 4096, 16
    spectrum = (np.arange(dim) + 1.0) ** -spectrum_decay
    spectrum /= spectrum.sum()
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]  # (dim, dim) random rotation
    common = _normalize(rng.standard_normal(dim))  # (dim,)

    def structured(n: int) -> np.ndarray:
        return (rng.standard_normal((n, dim)) * np.sqrt(spectrum)) @ basis.T  # (n, dim), E‖g‖² = 1

    def noise(n: int) -> np.ndarray:
        """(n, dim) noise with E‖e‖² = 1: isotropic, or shaped like the embeddings themselves."""
        return rng.standard_normal((n, dim)) / math.sqrt(dim) if isotropic_noise else structured(n)

    words = _normalize(0.6 * common + structured(n_words))  # (n_words, dim)
    content_ids = np.arange(n_background, n_words)
    popularity = (np.arange(content_ids.size) + 1.0) ** -0.8
    popularity /= popularity.sum()
    n_topics = max(1, pages // 20)
    topics = [rng.choice(content_ids, size=topic_words, replace=False, p=popularity) for _ in range(n_topics)]

    grid_cols = 32
    grid = (math.ceil(patches / grid_cols), grid_cols)
    positions = torch.from_numpy(
        np.stack([np.arange(patches) // grid_cols, np.arange(patches) % grid_cols], axis=1).astype(np.int64)
    )  # (patches, 2)
    n_bg = int(0.4 * patches)
    bags: list[PatchBag] = []
    page_content: list[tuple[np.ndarray, np.ndarray]] = []  # per page: (word of each patch, patch ids)
    for p in range(pages):
        topic = topics[p % n_topics]
        n_topic = 56
        vocab = np.concatenate(
            [
                rng.choice(topic, n_topic, replace=False),
                rng.choice(content_ids, 80 - n_topic, replace=False, p=popularity),
            ]
        )  # (80,)
        instances = _normalize(words[vocab] + instance_noise * noise(vocab.size))  # (80, dim)
        word_of = rng.integers(0, vocab.size, size=patches - n_bg)  # (n_content,)
        bg_words = rng.choice(n_background, 3, replace=False)
        bg = _normalize(words[bg_words[rng.integers(0, 3, size=n_bg)]] + 0.25 * noise(n_bg))  # (n_bg, dim)
        content = _normalize(instances[word_of] + 0.25 * noise(word_of.size))  # (n_content, dim)
        vectors = np.concatenate([bg, content])  # (patches, dim)
        salience = np.concatenate([rng.lognormal(-1.0, 0.4, n_bg), rng.lognormal(0.0, 0.6, word_of.size)])
        perm = rng.permutation(patches)  # background spread over the page
        bags.append(
            PatchBag(
                vectors=torch.from_numpy(vectors[perm]),
                salience=torch.from_numpy(salience[perm].astype(np.float32)),
                positions=positions,
                grid=grid,
            )
        )
        inv = np.argsort(perm)  # new index of each original row
        page_content.append((word_of, inv[n_bg:]))
    targets = rng.integers(0, pages, size=n_queries)
    queries = []
    for t in targets:
        word_of, rows = page_content[t]
        chosen = rng.choice(np.unique(word_of), size=query_words, replace=False)
        picks = np.concatenate(
            [rng.choice(rows[word_of == w], size=min(3, int((word_of == w).sum()))) for w in chosen]
        )[: 20 - n_generic]
        toks = _normalize(
            bags[t].vectors.numpy()[picks] + query_noise * noise(picks.size)
        )  # (n_content_q, dim)
        generic = _normalize(common + 0.8 * structured(n_generic))  # (n_generic, dim)
        queries.append(torch.from_numpy(np.concatenate([toks, generic])))
    shape = "isotropic" if isotropic_noise else "anisotropic"
    return Corpus(
        bags=bags,
        queries=queries,
        targets=targets,
        name=f"synthetic {pages} pages × {patches} × {dim}, query noise {query_noise:g} ({shape})",
    )


def load_real_corpus(folder: Path, n_queries: int, seed: int) -> Corpus | None:
    """Lexical-encoder bags of the PDF corpus, or None (with a printed note) where it cannot be built."""
    if not folder.is_dir():
        print(f"[real] skipped: corpus folder {folder} is missing")
        return None
    try:
        from patchseek.indexer.encoders.lexical import LexicalEncoder
        from patchseek.indexer.sources import read_pdf
    except ImportError as exc:
        print(f"[real] skipped: lexical encoder / sources not available yet ({exc})")
        return None
    encoder = LexicalEncoder(ocr=False)
    bags: list[PatchBag] = []
    for path in sorted(folder.rglob("*.pdf")):
        try:
            units = list(read_pdf(path.read_bytes()))
            bags.extend(encoder.encode_units(units))
        except Exception as exc:  # noqa: BLE001 - a bad sample file must not stop the benchmark
            print(f"[real] {path.name}: skipped ({type(exc).__name__})")
    bags = [b for b in bags if b.n_patches >= 8 and len(b.text.split()) >= 12]
    if len(bags) < 20:
        print(f"[real] skipped: only {len(bags)} pages with text")
        return None
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, len(bags), size=n_queries)
    queries = []
    for t in targets:
        words = bags[t].text.split()
        start = int(rng.integers(0, len(words) - 8))
        queries.append(encoder.encode_queries([" ".join(words[start : start + 8])])[0].float())
    return Corpus(
        bags=bags, queries=queries, targets=targets, name=f"real PDFs, lexical encoder, {len(bags)} pages"
    )


# -------------------------------------------------------------------------------------- metrics
def ndcg_at_k(ranked: np.ndarray, target: int, k: int = K) -> float:
    """nDCG@k of one ranking (doc ids, best first) with a single relevant doc."""
    hits = np.nonzero(ranked[:k] == target)[0]
    return float(1.0 / math.log2(hits[0] + 2)) if hits.size else 0.0


@dataclass
class Row:
    label: str
    bytes_per_page: float
    ratio: float
    fit_s: float
    encode_s: float
    recall: float
    ndcg_ret: float
    recall_rr: float
    ndcg_ret_rr: float
    note: str = ""


def exact_rankings(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 MaxSim scores (n_queries, n_pages) and the exact nDCG@10 per query."""
    vecs = torch.cat([b.vectors for b in corpus.bags])  # (N, dim)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([b.n_patches for b in corpus.bags])]))
    scores = torch.stack([maxsim(q, vecs, offsets) for q in corpus.queries]).numpy()  # (n_q, n_pages)
    ndcg = np.array(
        [ndcg_at_k(np.argsort(-s, kind="stable"), t) for s, t in zip(scores, corpus.targets, strict=True)]
    )
    return scores, ndcg


def run_setting(
    label: str,
    cfg: CompressionConfig,
    corpus: Corpus,
    exact: np.ndarray,
    exact_ndcg: np.ndarray,
    cache: dict,
    float16_bytes: float,
    patch_quantizer: Callable | None = None,
) -> Row:
    """Fit, encode and score one setting; compare with the exact ranking."""
    comp = Compressor(cfg)
    if patch_quantizer is not None:
        comp.quantizer = patch_quantizer()
    key = (cfg.prune, cfg.prune_ratio, cfg.prune_k, cfg.prune_min, cfg.merge, cfg.pool_factor)
    if key not in cache:
        t0 = time.perf_counter()
        cache[key] = ([comp.compress_bag(b) for b in corpus.bags], time.perf_counter() - t0)
    bags, compress_s = cache[key]
    t0 = time.perf_counter()
    comp.fit(bags, compressed=True)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = comp.encode(bags, compressed=True)
    encode_s = time.perf_counter() - t0 + compress_s
    approx = comp.score_many(corpus.queries, batch).numpy()  # (n_q, n_pages)
    if ("rerank",) + key not in cache:  # exact scores on the float16 keep copy depend only on prune/merge
        cache[("rerank",) + key] = torch.stack([comp.rerank(q, batch) for q in corpus.queries]).numpy()
    keep_scores = cache[("rerank",) + key]  # (n_q, n_pages)
    n_pages = len(corpus.bags)
    exact_top = np.argsort(-exact, axis=1, kind="stable")[:, :K]
    rec, nd, rec_rr, nd_rr = [], [], [], []
    for i, t in enumerate(corpus.targets):
        ranked = np.argsort(-approx[i], kind="stable")
        rec.append(len(set(ranked[:K]) & set(exact_top[i])) / K)
        nd.append(ndcg_at_k(ranked, t))
        top = ranked[: min(RERANK_DEPTH, n_pages)]
        rr = keep_scores[i, top]  # (depth,) = comp.rerank(q, batch, top), computed once per prune/merge
        reranked = top[np.argsort(-rr, kind="stable")]
        rec_rr.append(len(set(reranked[:K]) & set(exact_top[i])) / K)
        nd_rr.append(ndcg_at_k(reranked, t))
    bpp = batch.code_bytes / n_pages
    base = float(exact_ndcg.mean())
    return Row(
        label,
        bpp,
        float16_bytes / bpp,
        fit_s,
        encode_s,
        float(np.mean(rec)),
        float(np.mean(nd)) / base,
        float(np.mean(rec_rr)),
        float(np.mean(nd_rr)) / base,
    )


def settings(dim: int) -> list[tuple[str, CompressionConfig, Callable | None]]:
    """Every benchmarked setting: (label, config, optional quantizer override)."""
    f16 = CompressionConfig(keep="float16")
    topp = replace(f16, prune="topp", prune_ratio=0.5)
    binary = replace(f16, quantizer="binary")
    pq16 = replace(f16, quantizer="pq", pq_m=16)
    bebr = replace(f16, quantizer="bebr")
    return [
        ("float16 (no compression)", f16, None),
        ("sign binary centered, float q × bits", binary, None),
        ("sign binary uncentered, float q × bits", replace(binary, binary_center=False), None),
        ("sign binary centered, Hamming", binary, lambda: SignBinaryQuantizer(symmetric=True, center=True)),
        ("k-means K=256", replace(f16, quantizer="kmeans"), None),
        ("k-means K=1024 (2 B)", replace(f16, quantizer="kmeans", kmeans_k=1024), None),
        ("k-means K=256 + 1-bit residual", replace(f16, quantizer="kmeans", residual_bits=1), None),
        ("k-means K=256 + 2-bit residual", replace(f16, quantizer="kmeans", residual_bits=2), None),
        ("PQ 8×256, OPQ", replace(pq16, pq_m=8), None),
        ("PQ 16×256, OPQ", pq16, None),
        ("PQ 16×256, no rotation", replace(pq16, pq_opq=False), None),
        ("PQ 32×256, OPQ", replace(pq16, pq_m=32), None),
        ("BEBR u=0, 128 dims (1 bit, 16 B), ADC", replace(bebr, bebr_rounds=0), None),
        ("BEBR u=0, 128 dims (1 bit, 16 B), SDC", replace(bebr, bebr_rounds=0, bebr_scoring="sdc"), None),
        ("BEBR u=1, 64 dims (2 bits, 16 B), ADC", replace(bebr, bebr_rounds=1, bebr_dim=dim // 2), None),
        (
            "BEBR u=1, 64 dims (2 bits, 16 B), SDC",
            replace(bebr, bebr_rounds=1, bebr_dim=dim // 2, bebr_scoring="sdc"),
            None,
        ),
        ("BEBR u=1, 128 dims (2 bits, 32 B), ADC", replace(bebr, bebr_rounds=1), None),
        ("top-50% prune, float16", topp, None),
        ("adaptive prune (k=0), float16", replace(f16, prune="adaptive"), None),
        ("merge /2 (Ward), float16", replace(f16, merge="hierarchical", pool_factor=2), None),
        ("top-50% prune + sign binary centered", replace(topp, quantizer="binary"), None),
        ("top-50% prune + PQ 16×256, OPQ", replace(topp, quantizer="pq", pq_m=16), None),
        (
            "top-50% prune + k-means 256 + 2-bit res.",
            replace(topp, quantizer="kmeans", residual_bits=2),
            None,
        ),
        (
            "top-50% prune + merge /2 + PQ 32×256, OPQ",
            replace(topp, merge="hierarchical", pool_factor=2, quantizer="pq", pq_m=32),
            None,
        ),
    ]


# the rows re-run at the sensitivity noise levels: every codec at ≤ 16 B per patch, and pruning
SENSITIVITY_ROWS = (
    "float16 (no compression)",
    "sign binary centered, float q × bits",
    "sign binary uncentered, float q × bits",
    "PQ 16×256, OPQ",
    "PQ 16×256, no rotation",
    "BEBR u=0, 128 dims (1 bit, 16 B), ADC",
    "BEBR u=1, 64 dims (2 bits, 16 B), ADC",
    "top-50% prune, float16",
)


def run_corpus(
    corpus: Corpus,
    only: Sequence[str] | None,
    float16_bytes: float | None = None,
    labels: Sequence[str] | None = None,
) -> list[Row]:
    """Every setting (or those matching ``only`` / named in ``labels``) on one corpus, printed as it goes."""
    t0 = time.perf_counter()
    exact, exact_ndcg = exact_rankings(corpus)
    dim = corpus.bags[0].dim
    if float16_bytes is None:
        float16_bytes = float(np.mean([b.n_patches for b in corpus.bags])) * dim * 2
    print(
        f"\n{corpus.name}: {len(corpus.queries)} queries; exact MaxSim nDCG@10 = {exact_ndcg.mean():.3f} "
        f"({time.perf_counter() - t0:.1f} s); float16 page = {float16_bytes:,.0f} B"
    )
    print(header())
    rows, cache = [], {}
    for label, cfg, patch in settings(dim):
        if only and not any(o.lower() in label.lower() for o in only):
            continue
        if labels is not None and label not in labels:
            continue
        row = run_setting(label, cfg, corpus, exact, exact_ndcg, cache, float16_bytes, patch)
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


def header() -> str:
    return (
        "| setting | B/page | × smaller than fp16 | R@10 | nDCG@10 ret. | R@10 +rerank100 | nDCG@10 ret. "
        "+rerank100 | fit s | encode s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )


def format_row(r: Row) -> str:
    return (
        f"| {r.label} | {r.bytes_per_page:,.0f} | {r.ratio:.1f} | {r.recall:.3f} | {100 * r.ndcg_ret:.1f}% | "
        f"{r.recall_rr:.3f} | {100 * r.ndcg_ret_rr:.1f}% | {r.fit_s:.1f} | {r.encode_s:.1f} |"
    )


def write_docs(command: str, sections: list[tuple[str, list[Row]]], notes: list[str]) -> None:
    """Replace (or add) the ``## Compression`` section of docs/BENCHMARKS.md, keeping other sections."""
    lines = [
        SECTION,
        "",
        f"Produced by `{command}` (seeded; CPU, {torch.get_num_threads()} torch threads).",
        "",
    ]
    lines += [
        "Columns: code bytes per page (the rerank copy, float16 of the kept vectors, is stored apart); "
        "R@10 = recall of the exact float32 MaxSim top 10; nDCG@10 ret. = nDCG@10 on the ground-truth "
        "page relative to exact MaxSim; +rerank100 = after exact MaxSim on the float16 copy of the kept "
        "vectors of the codec's top 100. Corpus generator and metrics: docstring of "
        "`bench/compression.py`.",
        "",
    ]
    for name, rows in sections:
        lines += [f"### {name}", "", header(), *(format_row(r) for r in rows), ""]
    lines += [*notes, ""]
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start == -1:
        new = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        new = text[:start] + "\n".join(lines) + ("" if nxt == -1 else text[nxt:])
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(new.rstrip("\n") + "\n")
    print(f"\nwrote {DOCS}")


def acceptance(rows: Sequence[Row]) -> str:
    """Issue 4's acceptance, read off the rows: ≤ 1/16 of float16 bytes, ≥ 95% / ≥ 99% nDCG@10 retention."""
    small = [r for r in rows if r.ratio >= 16.0 - 1e-9]
    met = [r.label for r in small if r.ndcg_ret >= 0.95 and r.ndcg_ret_rr >= 0.99]
    best = max(small, key=lambda r: r.ndcg_ret, default=None)
    head = "Acceptance (≤ 1/16 of float16 bytes; stage-1 nDCG@10 retention ≥ 95% and ≥ 99% after rerank100): "
    if met:
        return head + "met by " + "; ".join(met) + "."
    if best is None:
        return head + "no setting at ≤ 1/16 of float16 bytes was run."
    return (
        head + f"not met; best stage-1 at that size is {best.label} with {100 * best.ndcg_ret:.1f}% "
        f"({100 * best.ndcg_ret_rr:.1f}% after rerank)."
    )


def parse_noise(spec: str) -> tuple[float, bool]:
    """``"1.5"`` -> (1.5, anisotropic); ``"2i"`` -> (2.0, isotropic)."""
    iso = spec.endswith("i")
    return float(spec[:-1] if iso else spec), iso


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--patches", type=int, default=1030)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--query-noise",
        type=float,
        default=1.0,
        help="norm of the (anisotropic) noise on query content tokens; token-to-source cosine ≈ 1/sqrt(1+σ²)",
    )
    parser.add_argument(
        "--sensitivity",
        nargs="*",
        default=["1.5"],
        help="further query-noise levels run on the ≤ 16 B codecs; suffix i = isotropic noise (e.g. 2i)",
    )
    parser.add_argument("--only", nargs="*", help="run the settings whose label contains one of these")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--no-real", action="store_true", help="skip part (b), the real PDF corpus")
    parser.add_argument("--write-docs", action="store_true", help="write the tables to docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    float16_bytes = float(args.patches * args.dim * 2)
    synthetic = make_corpus(
        args.pages, args.patches, args.dim, args.queries, args.seed, query_noise=args.query_noise
    )
    print(f"generated {synthetic.name} in {time.perf_counter() - t0:.1f} s")
    main_rows = run_corpus(synthetic, args.only, float16_bytes)
    sections = [(synthetic.name, main_rows)]
    notes = [acceptance(main_rows)]
    del synthetic
    for spec in args.sensitivity:
        noise, iso = parse_noise(spec)
        corpus = make_corpus(
            args.pages,
            args.patches,
            args.dim,
            args.queries,
            args.seed,
            query_noise=noise,
            isotropic_noise=iso,
        )
        sections.append(
            (f"sensitivity: {corpus.name}", run_corpus(corpus, args.only, float16_bytes, SENSITIVITY_ROWS))
        )
        del corpus
    if not args.no_real:
        real = load_real_corpus(args.corpus, args.queries, args.seed)
        if real is not None:
            sections.append((real.name, run_corpus(real, args.only)))
    print("\n" + notes[0])
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.write_docs:
        command = "python bench/compression.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_docs(command.strip(), sections, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
