"""What differs between the colpali-engine model families the ``ColPaliEncoder`` runs.

A family is a (model class, processor class) pair of ``colpali_engine.models`` and three facts about it:
where its image tokens sit on the page's patch grid (``layout``), where its text decoder layers are (for
attention salience) and which module projects hidden states to the ``dim``-dimensional output space.

Image-token layouts, for one image of a processed batch:

- ColQwen2 / ColQwen2.5 (Qwen2-VL): the image becomes a ``grid_h x grid_w`` grid of 14-px patches
  (``image_grid_thw``) and the vision tower merges each 2x2 block into one ``<|image_pad|>`` token, in
  row-major order: a ``(grid_h / 2, grid_w / 2)`` grid, variable with the page's aspect ratio.
- ColPali (PaliGemma): the page is resized to a square (448 px) and becomes ``side x side`` = 32 x 32 =
  1024 ``<image>`` tokens, row-major, at the start of the sequence.
- ColIdefics3 / ColSmol (Idefics3): the page is split into ``rows x cols`` tiles plus one downscaled
  global image; each becomes ``image_seq_len`` (= s x s, s = 8 for ColSmol) ``<image>`` tokens, row-major
  within the tile, tiles in row-major order. The tile tokens are kept on a ``(rows * s, cols * s)``
  grid; the global image's tokens duplicate the page at a coarser scale and are dropped, unless the page
  was not split (then the global image is the only one and is kept on an ``(s, s)`` grid).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "FAMILIES",
    "Family",
    "ImageTokenLayout",
    "find_family",
    "idefics3_layout",
    "paligemma_layout",
    "qwen2_layout",
]


@dataclass(frozen=True)
class ImageTokenLayout:
    """The image tokens of one sequence and where they lie on the unit's patch grid.

    token_index (n,) int64 indices into the sequence, in the order the vectors are kept
    positions   (n, 2) int64 (row, col) on ``grid``
    grid        (rows, cols)
    """

    token_index: torch.Tensor
    positions: torch.Tensor
    grid: tuple[int, int]


def _row_major(rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, 2) int64 (row, col) pairs in row-major order."""
    r = torch.arange(rows, dtype=torch.int64).repeat_interleave(cols)  # (rows * cols,)
    c = torch.arange(cols, dtype=torch.int64).repeat(rows)  # (rows * cols,)
    return torch.stack([r, c], dim=1)


def qwen2_layout(image_mask: torch.Tensor, grid_thw: torch.Tensor, merge_size: int) -> ImageTokenLayout:
    """Layout of a Qwen2-VL / Qwen2.5-VL image: ``(grid_h / m, grid_w / m)`` merged tokens, row-major.

    image_mask (L,) bool, True at ``<|image_pad|>`` tokens; grid_thw (3,) = (t, grid_h, grid_w) in 14-px
    patches; merge_size m (2: each token is a 2x2 block of patches).
    """
    token_index = image_mask.nonzero().flatten()  # (n,)
    t, h, w = (int(v) for v in grid_thw)
    rows, cols = h // merge_size, w // merge_size
    if t != 1 or token_index.numel() != rows * cols:
        raise ValueError(
            f"{token_index.numel()} image tokens do not fill the {rows}x{cols} grid of "
            f"image_grid_thw={(t, h, w)}"
        )
    return ImageTokenLayout(token_index, _row_major(rows, cols), (rows, cols))


def paligemma_layout(image_mask: torch.Tensor, side: int) -> ImageTokenLayout:
    """Layout of a PaliGemma image: ``side x side`` tokens (32 x 32 for ColPali at 448 px), row-major.

    image_mask (L,) bool, True at ``<image>`` tokens.
    """
    token_index = image_mask.nonzero().flatten()  # (n,)
    if token_index.numel() != side * side:
        raise ValueError(f"{token_index.numel()} image tokens do not fill the {side}x{side} grid")
    return ImageTokenLayout(token_index, _row_major(side, side), (side, side))


def idefics3_layout(image_mask: torch.Tensor, rows: int, cols: int, seq_len: int) -> ImageTokenLayout:
    """Layout of an Idefics3 image split into ``rows x cols`` tiles of ``seq_len`` tokens plus a global one.

    image_mask (L,) bool, True at ``<image>`` tokens. Keeps the tile tokens on a ``(rows * s, cols * s)``
    grid (s = sqrt(seq_len)) and drops the trailing global image; an unsplit image (rows = cols = 0) keeps
    its only (global) image on an ``(s, s)`` grid.
    """
    token_index = image_mask.nonzero().flatten()  # (n,)
    s = math.isqrt(seq_len)
    if s * s != seq_len:
        raise ValueError(f"image_seq_len {seq_len} is not a square number of tokens")
    n_tiles = rows * cols
    if token_index.numel() != (n_tiles + 1) * seq_len:
        raise ValueError(
            f"{token_index.numel()} image tokens do not match {rows}x{cols} tiles + 1 global image "
            f"of {seq_len} tokens each"
        )
    if n_tiles == 0:
        return ImageTokenLayout(token_index, _row_major(s, s), (s, s))
    within = _row_major(s, s)  # (s * s, 2)
    tiles = _row_major(rows, cols) * s  # (n_tiles, 2) top-left corner of each tile
    positions = (tiles[:, None, :] + within[None, :, :]).reshape(-1, 2)  # (n_tiles * s * s, 2)
    return ImageTokenLayout(token_index[: n_tiles * seq_len], positions, (rows * s, cols * s))


# -- per-family adapters: pull each layout's arguments out of a processed batch -----------------------


@dataclass(frozen=True)
class LayoutInput:
    """What a family's layout needs for sequence ``i`` of a processed image batch."""

    batch: Mapping[str, torch.Tensor]
    i: int
    image_mask: torch.Tensor  # (L,) bool
    image_size: tuple[int, int]  # (width, height) of the input image, as PIL reports it
    processor: Any
    model: Any  # the colpali-engine model (its config is read)


def _qwen2_adapter(x: LayoutInput) -> ImageTokenLayout:
    return qwen2_layout(
        x.image_mask, x.batch["image_grid_thw"][x.i], int(x.processor.image_processor.merge_size)
    )


def _paligemma_adapter(x: LayoutInput) -> ImageTokenLayout:
    vision = x.model.config.vision_config
    return paligemma_layout(x.image_mask, int(vision.image_size) // int(vision.patch_size))


def _idefics3_rows_cols(x: LayoutInput) -> tuple[int, int]:
    """Tile rows and columns, read from the ``<row_i_col_j>`` marker tokens before each tile.

    Falls back to the image processor's own split rule when the tokenizer has no single-token markers.
    """
    proc = x.processor
    unk = proc.tokenizer.unk_token_id
    marker = {
        tid: (i + 1, j + 1)
        for (i, j), tid in zip(((i, j) for i in range(6) for j in range(6)), proc.row_col_ids, strict=True)
        if tid is not None and tid != unk
    }
    ids = x.batch["input_ids"][x.i].tolist()
    found = [marker[t] for t in ids if t in marker]
    if found:
        return max(r for r, _ in found), max(c for _, c in found)
    width, height = x.image_size
    _, rows, cols = proc.image_processor.get_number_of_image_patches(height, width, {})
    return int(rows), int(cols)


def _idefics3_adapter(x: LayoutInput) -> ImageTokenLayout:
    rows, cols = _idefics3_rows_cols(x)
    return idefics3_layout(x.image_mask, rows, cols, int(x.processor.image_seq_len))


@dataclass(frozen=True)
class Family:
    """A colpali-engine model family as the encoder drives it.

    ``decoder_layers(model)`` is the text decoder's layer list (each layer has ``self_attn``), whose last
    layers' attention gives salience; ``projection(model)`` maps hidden states to ``dim``; the
    ``forward_kwargs`` are added to every ``model(**batch)`` call and ``drop_inputs`` removed from it.
    """

    name: str
    model_class: str
    processor_class: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    layout: Callable[[LayoutInput], ImageTokenLayout]
    # model -> module: colpali-engine models are plain nn.Modules whose submodules mypy cannot see
    decoder_layers: Callable[[Any], nn.ModuleList]
    projection: Callable[[Any], nn.Module]
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    drop_inputs: tuple[str, ...] = ()


FAMILIES: tuple[Family, ...] = (
    Family(
        name="colqwen2",
        model_class="ColQwen2",
        processor_class="ColQwen2Processor",
        model_types=("qwen2_vl",),
        architectures=("ColQwen2",),
        layout=_qwen2_adapter,
        decoder_layers=lambda m: m.language_model.layers,
        projection=lambda m: m.custom_text_proj,
    ),
    Family(
        name="colqwen2_5",
        model_class="ColQwen2_5",
        processor_class="ColQwen2_5_Processor",
        model_types=("qwen2_5_vl",),
        architectures=("ColQwen2_5",),
        layout=_qwen2_adapter,
        decoder_layers=lambda m: m.language_model.layers,
        projection=lambda m: m.custom_text_proj,
    ),
    Family(
        name="colpali",
        model_class="ColPali",
        processor_class="ColPaliProcessor",
        model_types=("paligemma",),
        architectures=("ColPali",),
        layout=_paligemma_adapter,
        decoder_layers=lambda m: m.model.model.language_model.layers,
        projection=lambda m: m.custom_text_proj,
        # ColPali runs PaliGemmaForConditionalGeneration, which would compute vocabulary logits (257k) for
        # every position; keep only the last one. Labels are a by-product of the processor.
        forward_kwargs={"logits_to_keep": 1},
        drop_inputs=("labels",),
    ),
    Family(
        name="colidefics3",
        model_class="ColIdefics3",
        processor_class="ColIdefics3Processor",
        model_types=("idefics3",),
        architectures=("ColIdefics3",),
        layout=_idefics3_adapter,
        decoder_layers=lambda m: m.model.text_model.layers,
        projection=lambda m: m.linear,
    ),
)


def find_family(config: Mapping[str, Any]) -> Family | None:
    """The family of a checkpoint's ``config.json`` (a dict), by its architectures, then its model_type.

    A colpali-engine architecture name decides first; otherwise the backbone's ``model_type`` does (the
    config of an adapter's base model names the backbone, e.g. ``Qwen2VLForConditionalGeneration``).
    Bi-encoder (single-vector) architectures are not multi-vector models and return ``None``.
    """
    architectures = list(config.get("architectures") or ())
    for arch in architectures:
        for fam in FAMILIES:
            if arch in fam.architectures:
                return fam
    if any(arch.startswith("Bi") for arch in architectures):
        return None
    model_type = config.get("model_type")
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return None
