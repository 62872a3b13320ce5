"""The one indexing pipeline: read → encode → prune / merge → (quantize + stage-1 parts) → segment write.

The worker, the CLI, rebuilds and the benchmarks all index through these functions; the API's services
only add database transactions and job bookkeeping around them. Quantization and the stage-1 parts
(codes, coarse ids, dense summary rows) are derived by the index engine when it writes the segment
(``IndexEngine.write``), with the version's fitted state, never at query time.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from patchseek.errors import InvalidInputError
from patchseek.indexer.blobs import BlobStore
from patchseek.indexer.compress import CompressionConfig, Compressor
from patchseek.indexer.encoders import Encoder
from patchseek.indexer.sources import ReadOptions, read_units
from patchseek.search.engine import IndexEngine, UnitBatch
from patchseek.types import PatchBag, SourceUnit

# (units encoded so far in this document, units it is expected to have): called after every unit the
# encoder reports (each unit for the lexical encoder, each encoder batch for colpali-engine models);
# the expected count is the source's (``UnitStream.expected``), never below the units done.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EncodedDocument:
    """A document's units: their metadata rows (for the database) and patch bags, in ordinal order."""

    media_type: str
    rows: list[dict[str, Any]]
    bags: list[PatchBag]

    @property
    def n_rows(self) -> int:
        return sum(b.n_patches for b in self.bags)


def encode_image(image: Image.Image, *, max_side: int | None = None, quality: int = 90) -> bytes:
    """JPEG bytes of ``image`` (downscaled to ``max_side`` when given)."""
    if max_side is not None:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def encode_document(
    data: bytes,
    *,
    encoder: Encoder,
    read_options: ReadOptions,
    compression: CompressionConfig,
    blobs: BlobStore,
    batch_size: int = 4,
    thumbnail_size: int = 256,
    progress: Progress | None = None,
) -> EncodedDocument:
    """Read a file's units, encode them in batches of ``batch_size`` (a long PDF or video never holds
    all its images at once), store each unit's image and thumbnail as blobs, prune / merge the bags.

    Raises the source's ``PatchseekError`` for a corrupt, encrypted or unsupported file.
    """
    media_type, units = read_units(data, read_options)
    rendered = ((unit, store_unit_images(unit, blobs, thumbnail_size)) for unit in units)
    return encode_rendered(
        media_type,
        rendered,
        encoder=encoder,
        compression=compression,
        batch_size=batch_size,
        expected=units.expected or 0,
        progress=progress,
    )


@dataclass(frozen=True)
class RenderedDocument:
    """A document read and rendered, not yet encoded: its units with their stored images' blob keys.

    What the distributed pipeline's CPU tasks hand to its encoder actors (``render_document``).
    """

    media_type: str
    units: list[tuple[SourceUnit, dict[str, str]]]


def render_document(
    data: bytes, *, read_options: ReadOptions, blobs: BlobStore, thumbnail_size: int = 256
) -> RenderedDocument:
    """The pipeline's first stage on its own: read every unit of a file and store its image and
    thumbnail as blobs. The whole document is held (``encode_document`` streams instead).

    Raises the source's ``PatchseekError`` for a corrupt, encrypted or unsupported file.
    """
    media_type, units = read_units(data, read_options)
    return RenderedDocument(media_type, [(u, store_unit_images(u, blobs, thumbnail_size)) for u in units])


def store_unit_images(unit: SourceUnit, blobs: BlobStore, thumbnail_size: int = 256) -> dict[str, str]:
    """Store a unit's image (JPEG) and thumbnail as blobs: ``{"image_blob", "thumb_blob"}`` keys."""
    return {
        "image_blob": blobs.put(encode_image(unit.image)),
        "thumb_blob": blobs.put(encode_image(unit.image, max_side=thumbnail_size, quality=80)),
    }


def encode_rendered(
    media_type: str,
    rendered: Iterable[tuple[SourceUnit, dict[str, str]]],
    *,
    encoder: Encoder,
    compression: CompressionConfig,
    batch_size: int = 4,
    expected: int = 0,
    progress: Progress | None = None,
) -> EncodedDocument:
    """Encode rendered units (``(unit, its image blob keys)``, consumed lazily) in batches of
    ``batch_size``, then prune / merge the bags: the pipeline's encoding stages, shared by
    ``encode_document`` and the distributed pipeline's encoder actors. ``expected`` is the source's
    unit count, for ``progress``.
    """
    rows: list[dict[str, Any]] = []
    bags: list[PatchBag] = []
    batch: list[tuple[SourceUnit, dict[str, str]]] = []

    def encoded(done_in_batch: int) -> None:
        if progress is not None:
            done = len(rows) + done_in_batch
            progress(done, max(done, expected))

    salience = compression.prune != "none"  # only pruning reads salience: the encoder may skip it
    if progress is not None:
        progress(0, expected)
    for item in rendered:
        batch.append(item)
        if len(batch) >= max(1, batch_size):
            _encode_batch(encoder, batch, rows, bags, encoded, salience)
            batch = []
    if batch:
        _encode_batch(encoder, batch, rows, bags, encoded, salience)
    if not rows:
        raise InvalidInputError("the file has no pages or frames")
    rows, bags = compress_units(compression, media_type, rows, bags)
    return EncodedDocument(media_type, rows, bags)


def _encode_batch(
    encoder: Encoder,
    batch: list[tuple[SourceUnit, dict[str, str]]],
    rows: list[dict[str, Any]],
    bags: list[PatchBag],
    encoded: Callable[[int], None],
    salience: bool = True,
) -> None:
    units = [unit for unit, _ in batch]
    for (unit, images), bag in zip(
        batch,
        encoder.encode_units(units, progress=lambda done, _total: encoded(done), salience=salience),
        strict=True,
    ):
        rows.append(
            {
                "ordinal": len(rows),
                "kind": unit.kind,
                "page": unit.page,
                "t_start": unit.t_start,
                "t_end": unit.t_end,
                "width": unit.image.width,
                "height": unit.image.height,
                "grid_rows": bag.grid[0],
                "grid_cols": bag.grid[1],
                **images,
                "text": bag.text or unit.text,
            }
        )
        bags.append(bag)


def compress_units(
    config: CompressionConfig, media_type: str, rows: list[dict[str, Any]], bags: list[PatchBag]
) -> tuple[list[dict[str, Any]], list[PatchBag]]:
    """Apply the collection's pruning and merging to a document's bags before they are stored.

    For video with ``video_segment_frames`` > 1, runs of consecutive frames become one ``segment`` unit
    spanning ``t_start`` of its first frame to ``t_end`` of its last (CenterCLIP-style medoids).
    Quantization is the index engine's (at segment write time).
    """
    if config.prune == "none" and config.merge == "none" and config.video_segment_frames == 1:
        return rows, bags
    compressor = Compressor(config)
    per = config.video_segment_frames
    if media_type == "video" and per > 1:
        out_rows: list[dict[str, Any]] = []
        out_bags: list[PatchBag] = []
        for start in range(0, len(rows), per):
            chunk_rows, chunk_bags = rows[start : start + per], bags[start : start + per]
            nonempty = [b for b in chunk_bags if b.n_patches]
            texts = list(dict.fromkeys(r["text"] for r in chunk_rows if r["text"]))
            row = {
                **chunk_rows[0],
                "kind": "segment",
                "t_end": chunk_rows[-1]["t_end"],
                "text": " ".join(texts),
            }
            row["ordinal"] = len(out_rows)
            merged = compressor.compress_frames(nonempty)[0] if nonempty else chunk_bags[0]
            out_rows.append(row)
            out_bags.append(replace(merged, grid=chunk_bags[0].grid, text=row["text"]))
        return out_rows, out_bags
    out = [replace(compressor.compress_bag(b), grid=b.grid, text=b.text) if b.n_patches else b for b in bags]
    return rows, out


def write_documents(engine: IndexEngine, docs: Sequence[tuple[int, EncodedDocument]]) -> str:
    """Write documents ``(document_id, encoded)`` as one new (unpublished) segment; its name."""
    batch = UnitBatch.concat(
        [UnitBatch.from_bags(doc_id, enc.media_type, enc.bags, engine.dim) for doc_id, enc in docs],
        engine.dim,
    )
    return engine.write(batch)
