"""``ColPaliEncoder``: multi-vector document and query encoding with any colpali-engine model family.

Supported families (see ``colpali_families``): ColQwen2, ColQwen2.5, ColPali (PaliGemma) and
ColIdefics3 (ColSmol checkpoints are ColIdefics3). The family is read from the checkpoint's
``config.json`` (its colpali-engine architecture, else its backbone ``model_type``).

Per page the encoder keeps only the image-token vectors (prompt and special tokens are dropped), with
their (row, col) on the page's patch grid, and a salience per token for pruning:

- ``salience="attention"`` (all four families): the attention each image token receives in the text
  decoder's last ``attention_layers`` layers, averaged over heads, layers and the query positions that
  follow the image (the prompt, e.g. "Describe the image.", which attends to every image token; a causal
  average over all positions would favour early tokens). This is the HPC-ColPali / DocPruner signal. The
  model then runs with eager attention in its text decoder (the vision tower keeps SDPA); only one
  ``(batch, L, L)`` running sum is kept, not every layer's ``(batch, heads, L, L)`` weights.
- ``salience="norm"``: the L2 norm of each token's projection before normalisation, a free proxy; used
  when asked for, and as the fallback when a model returns no attention weights (a non-eager attention
  implementation), with a warning.
- ``salience="auto"`` (what the service loads): the model runs with SDPA attention, and switches its text
  decoder to eager attention only for the batches whose salience is asked for (``encode_units(...,
  salience=True)``: the pipeline asks when the collection prunes); other batches get the norm salience.
  Eager attention with its weights roughly halves throughput (docs/BENCHMARKS.md, "Encoding"), so a
  collection that never prunes never pays for it.

On CUDA the model runs in bfloat16 (``dtype="auto"``), and ``batch_size=0`` sizes the batches from free
device memory: the first batch is one page, whose peak memory gives the bytes per page, and later
batches take ``AUTO_BATCH_FRACTION`` of the free memory (at most ``AUTO_BATCH_MAX`` pages); on the CPU
``batch_size=0`` means ``CPU_BATCH``.

Vectors are what colpali-engine's own ``forward`` returns at those tokens (the projection is read with a
forward hook, so every family's input handling stays colpali-engine's), L2-normalised, float32 on CPU.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from patchseek.errors import MissingDependencyError, ModelLoadError
from patchseek.indexer.encoders.base import Encoder, ProgressFn
from patchseek.indexer.encoders.colpali_families import FAMILIES, Family, LayoutInput, find_family
from patchseek.indexer.encoders.colpali_source import ModelSource, resolve_source
from patchseek.types import PatchBag, SourceUnit

__all__ = ["ColPaliEncoder", "SalienceMode", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

SalienceMode = Literal["attention", "norm", "auto"]
CPU_BATCH = 4
AUTO_BATCH_MAX = 64
AUTO_BATCH_FRACTION = 0.6
# The text decoder's attention while salience is read: eager (it returns weights); the vision tower
# keeps SDPA (its sequences are the longest: ~4 patches per image token).
EAGER_TEXT = {"": "eager", "text_config": "eager", "vision_config": "sdpa"}
DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _import_colpali() -> Any:
    """``colpali_engine.models``, or ``MissingDependencyError`` when the ``colpali`` extra is missing."""
    from patchseek._compat import ensure_torchvision

    try:
        ensure_torchvision()  # before transformers' image processors / colpali_engine import torchvision
        import colpali_engine.models as models
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"the ColPali encoders need colpali-engine, transformers and torchvision ({exc}); install them "
            "with: pip install 'patchseek[colpali]'"
        ) from exc
    return models


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU raises ``ModelLoadError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was requested but CUDA is not available; use 'auto' or 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on GPU, float32 on CPU (CPU bf16 matmuls are slow and lose precision)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


class _Capture:
    """What forward hooks collect during one model call.

    projection  (B, L, dim) the projection's output, before colpali-engine normalises it
    attn_sum    (B, L, L) float32, sum over hooked layers of the head-averaged attention weights
    n_layers    how many layers added to ``attn_sum``
    """

    def __init__(self) -> None:
        self.projection: torch.Tensor | None = None
        self.attn_sum: torch.Tensor | None = None
        self.n_layers = 0


def _tie_unloaded_lm_head(model: Any) -> None:
    """Tie a language-model head left on the meta device to the input embeddings.

    ColPali checkpoints do not store PaliGemma's ``lm_head`` (colpali-engine lists it as ignorable and
    PaliGemma ties it to the embeddings), and transformers 5 leaves it unmaterialised, so ``.to(device)``
    fails. The head is never used for retrieval; tying restores what the checkpoint means. Any other
    parameter still on the meta device means the checkpoint is incomplete.
    """
    for name, param in list(model.named_parameters()):
        if not param.is_meta:
            continue
        if not name.endswith("lm_head.weight"):
            raise ModelLoadError(f"checkpoint is missing weights for {name}; it is incomplete or corrupt")
        head = model.get_submodule(name.rsplit(".", 1)[0])
        head.weight = model.get_input_embeddings().weight


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def auto_batch_size(free_bytes: float, bytes_per_page: float, *, cap: int = AUTO_BATCH_MAX) -> int:
    """Pages per batch that fit ``AUTO_BATCH_FRACTION`` of ``free_bytes`` at ``bytes_per_page``, in [1, cap].

    >>> auto_batch_size(80e9, 1e9), auto_batch_size(80e9, 5e8, cap=64), auto_batch_size(1e8, 1e9)
    (48, 64, 1)
    """
    if bytes_per_page <= 0:
        return cap
    return max(1, min(cap, int(AUTO_BATCH_FRACTION * free_bytes // bytes_per_page)))


class ColPaliEncoder(Encoder):
    """Encode pages and queries with a colpali-engine model from a Hub id or a local directory.

    Parameters
    ----------
    model_name_or_path
        A checkpoint directory (``config.json`` + weights + processor files, or a PEFT adapter) or a
        Hugging Face id such as ``vidore/colqwen2-v1.0`` (looked up in the local cache first).
    revision
        Hub branch, tag or commit (ignored for directories). ``self.revision`` records the resolved
        commit hash, or ``local-<hash>`` of a directory's configs and weight files.
    device, dtype
        ``auto`` picks CUDA + bfloat16 when a GPU is present, else CPU + float32.
    batch_size
        Pages per forward pass; memory grows linearly with it. 0: from free memory on CUDA (see the
        module docstring), ``CPU_BATCH`` on the CPU.
    max_image_pixels
        Cap on the model's input resolution (it is never raised above the checkpoint's own): Qwen2
        families' ``max_pixels``; ColIdefics3's longest edge (in whole tiles). ColPali is fixed at 448 px.
    salience
        ``"attention"``, ``"norm"`` or ``"auto"``; see the module docstring.
    attention_layers
        How many of the last text-decoder layers the attention salience averages.
    query_batch_size
        Queries per forward pass (queries are short).

    Raises ``ModelLoadError`` (missing directory, model not cached and not downloadable, unsupported
    architecture, unreadable weights) and ``MissingDependencyError`` (the ``colpali`` extra is missing).
    Safe to share between threads: forward passes are serialised.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        revision: str | None = None,
        device: DeviceName | str = "auto",
        dtype: DtypeName | str = "auto",
        batch_size: int = 4,
        max_image_pixels: int = 1024 * 1024,
        salience: SalienceMode = "attention",
        attention_layers: int = 4,
        query_batch_size: int = 32,
    ) -> None:
        if salience not in ("attention", "norm", "auto"):
            raise ValueError(f"salience must be 'attention', 'norm' or 'auto', got {salience!r}")
        if batch_size < 0 or query_batch_size < 1 or attention_layers < 1:
            raise ValueError("batch_size must be >= 0, query_batch_size and attention_layers >= 1")
        models = _import_colpali()
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # batch_size 0 on CUDA: one page first, then sized from its measured peak memory
        self._measure_batch = batch_size == 0 and self.device.type == "cuda"
        self.batch_size = batch_size or (1 if self._measure_batch else CPU_BATCH)
        self.query_batch_size = query_batch_size
        self.salience_mode: SalienceMode = salience
        self.attention_layers = attention_layers
        # Forward hooks live on the shared model: concurrent calls (API threads) would capture each
        # other's outputs, so forward passes are serialised (one model saturates its device anyway).
        self._forward_lock = threading.Lock()

        source = resolve_source(model_name_or_path, revision)
        family = find_family(source.config)
        if family is None:
            supported = ", ".join(f.model_class for f in FAMILIES)
            raise ModelLoadError(
                f"{source.name}: unsupported architecture (model_type={source.config.get('model_type')!r}, "
                f"architectures={source.config.get('architectures')}); supported colpali-engine families: "
                f"{supported} (ColSmol loads as ColIdefics3)"
            )
        self.family: Family = family
        self.model: Any  # a colpali-engine model (an nn.Module with family-specific attributes)
        self.processor: Any  # its colpali-engine processor
        self.model, self.processor = self._load(models, source)
        self._cap_resolution(max_image_pixels)
        self.name = f"{family.model_class}:{source.name}"
        self.revision = source.revision
        self.dim = int(self.model.dim)
        self.image_token_id = int(self.processor.image_token_id)

    # -- loading ---------------------------------------------------------------------------------------

    def _load(self, models: Any, source: ModelSource) -> tuple[Any, Any]:
        model_cls = getattr(models, self.family.model_class)
        processor_cls = getattr(models, self.family.processor_class)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.salience_mode == "attention":
            # Attention weights need the eager implementation; only the text decoder is read.
            kwargs["attn_implementation"] = EAGER_TEXT
        try:
            model, info = model_cls.from_pretrained(
                source.path, dtype=self.dtype, output_loading_info=True, **kwargs
            )
            processor = processor_cls.from_pretrained(self._processor_path(source), local_files_only=True)
        except Exception as exc:  # corrupt weights raise SafetensorError, configs ValueError/KeyError, ...
            raise ModelLoadError(
                f"cannot load {self.family.model_class} from {source.path}: {type(exc).__name__}: {exc}"
            ) from exc
        missing = [
            k for k in info.get("missing_keys", ()) if "custom_text_proj" in k or k.startswith("linear.")
        ]
        if missing and not source.is_adapter:
            raise ModelLoadError(
                f"{source.name} has no trained multi-vector projection "
                f"({', '.join(sorted(missing))} missing): it is a base vision-language model, not a "
                f"{self.family.model_class} retriever checkpoint"
            )
        _tie_unloaded_lm_head(model)
        model = model.to(self.device).eval()
        return model, processor

    @staticmethod
    def _processor_path(source: ModelSource) -> Path:
        """Where the processor files are: the checkpoint, or for an adapter saved without them its base."""
        has_processor = any(
            (source.path / f).is_file()
            for f in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
        )
        if has_processor or source.base_path is None:
            return source.path
        return source.base_path

    def _cap_resolution(self, max_image_pixels: int) -> None:
        """Lower the processor's input resolution to ``max_image_pixels`` (never raise it)."""
        ip = self.processor.image_processor
        if self.family.name in ("colqwen2", "colqwen2_5"):
            size = ip.size
            cap = max(int(size["shortest_edge"]), min(int(size["longest_edge"]), max_image_pixels))
            size["longest_edge"] = cap
            if hasattr(ip, "max_pixels"):
                ip.max_pixels = cap
        elif self.family.name == "colidefics3":
            tile = int(ip.max_image_size["longest_edge"])
            edge = max(tile, math.isqrt(max_image_pixels) // tile * tile)
            ip.size["longest_edge"] = min(int(ip.size["longest_edge"]), edge)

    # -- forward with hooks ---------------------------------------------------------------------------

    @contextmanager
    def _hooks(self, want_attention: bool) -> Iterator[_Capture]:
        cap = _Capture()

        def on_projection(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            cap.projection = out

        def on_attention(_m: nn.Module, _i: Any, out: Any) -> None:
            weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if weights is None:  # non-eager attention: no weights, the caller falls back to norms
                return
            mean = weights.float().mean(dim=1)  # (B, L, L) averaged over heads
            cap.attn_sum = mean if cap.attn_sum is None else cap.attn_sum + mean
            cap.n_layers += 1

        handles = [self.family.projection(self.model).register_forward_hook(on_projection)]
        if want_attention:
            layers = self.family.decoder_layers(self.model)
            for layer in list(layers)[-self.attention_layers :]:
                attention: nn.Module = layer.self_attn  # type: ignore[assignment]
                handles.append(attention.register_forward_hook(on_attention))
        try:
            yield cap
        finally:
            for h in handles:
                h.remove()

    def _to_device(self, batch: Any) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, v in batch.items():
            if k in self.family.drop_inputs or not isinstance(v, torch.Tensor):
                continue
            v = v.to(self.device)
            out[k] = v.to(self.dtype) if v.is_floating_point() else v
        return out

    def _run(self, inputs: dict[str, torch.Tensor], want_attention: bool) -> tuple[torch.Tensor, _Capture]:
        """One forward pass: ((B, L, dim) float32 projection before normalisation, the capture)."""
        switch = want_attention and self.salience_mode == "auto"
        with self._forward_lock, torch.inference_mode():
            loaded = self.model.config._attn_implementation
            if switch:
                self.model.set_attn_implementation(EAGER_TEXT)
            try:
                with self._hooks(want_attention) as cap:
                    self.model(**inputs, **self.family.forward_kwargs)
            finally:
                if switch:
                    self.model.set_attn_implementation(loaded)
        if cap.projection is None:
            raise RuntimeError(f"{self.family.model_class} did not call its projection layer")
        return cap.projection.float(), cap

    # -- documents ------------------------------------------------------------------------------------

    def _encode_batch(self, images: list[Image.Image], with_salience: bool = True) -> list[PatchBag]:
        """Encode one batch of page images into one ``PatchBag`` per image."""
        images = [im.convert("RGB") for im in images]
        batch = self.processor.process_images(images)
        inputs = self._to_device(batch)
        want_attention = with_salience and self.salience_mode != "norm"
        measure = self._measure_batch
        if measure:
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        proj, cap = self._run(inputs, want_attention)  # (B, L, dim)
        if measure:
            per_page = (torch.cuda.max_memory_allocated(self.device) - before) / len(images)
            self.batch_size = auto_batch_size(torch.cuda.mem_get_info(self.device)[0], per_page)
            self._measure_batch = False
            log.info("%s: %.0f MiB per page, batch size %d", self.name, per_page / 2**20, self.batch_size)
        if want_attention and cap.attn_sum is None:
            log.warning("%s returned no attention weights; falling back to norm salience", self.name)
        attn = cap.attn_sum / cap.n_layers if cap.attn_sum is not None else None  # (B, L, L)
        input_ids = inputs["input_ids"]  # (B, L)
        valid = inputs["attention_mask"].bool()  # (B, L)
        image_mask = input_ids == self.image_token_id  # (B, L)
        bags = []
        for i, image in enumerate(images):
            layout = self.family.layout(
                LayoutInput(batch, i, image_mask[i].cpu(), image.size, self.processor, self.model)
            )
            idx = layout.token_index.to(proj.device)  # (n,)
            raw = proj[i, idx]  # (n, dim)
            norms = raw.norm(dim=-1)  # (n,)
            if attn is not None:
                salience = self._attention_salience(attn[i], valid[i], image_mask[i], idx)
            else:
                salience = norms
            bags.append(
                PatchBag(
                    vectors=F.normalize(raw, dim=-1).cpu(),
                    salience=salience.float().cpu(),
                    positions=layout.positions,
                    grid=layout.grid,
                )
            )
        return bags

    @staticmethod
    def _attention_salience(
        attn: torch.Tensor, valid: torch.Tensor, image_mask: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """Mean attention paid to each kept image token by the tokens after the image.

        attn (L, L) head- and layer-averaged weights (row = query, col = key); valid, image_mask (L,)
        bool; idx (n,) kept image-token positions -> (n,) float32. The queries are the real, non-image
        tokens after the last image token: under causal attention they all see every image token. When
        there are none (no prompt after the image), all real tokens are used.
        """
        L = attn.shape[0]
        last_image = int(image_mask.nonzero().max())
        after = torch.arange(L, device=attn.device) > last_image  # (L,)
        queries = valid & ~image_mask & after  # (L,)
        if not bool(queries.any()):
            queries = valid
        return attn[queries][:, idx].mean(dim=0)  # (n,)

    def iter_encode(self, images: Iterable[Image.Image]) -> Iterator[PatchBag]:
        """Stream ``PatchBag``s for a (possibly lazy) iterable of images, ``batch_size`` at a time.

        Only one batch of images and activations is held at a time, so a generator over a large PDF's
        pages encodes in bounded memory.
        """
        for chunk in _batched(images, self.batch_size):
            yield from self._encode_batch(chunk)

    def encode_images(self, images: Iterable[Image.Image]) -> list[PatchBag]:
        """Encode page / image / frame images: one ``PatchBag`` per image (see ``iter_encode``)."""
        return list(self.iter_encode(images))

    def encode_units(
        self, units: Sequence[SourceUnit], progress: ProgressFn | None = None, *, salience: bool = True
    ) -> list[PatchBag]:
        """Encode units' images in batches, calling ``progress(done, total)`` after each batch.

        ``salience=False`` (a collection that does not prune) skips the attention salience of
        ``salience="auto"``: SDPA attention, norm salience."""
        bags: list[PatchBag] = []
        total = len(units)
        done = 0
        while done < total:
            chunk = units[done : done + self.batch_size]  # the size may change after the first batch
            with_salience = salience or self.salience_mode == "attention"
            bags.extend(self._encode_batch([u.image for u in chunk], with_salience=with_salience))
            done += len(chunk)
            if progress is not None:
                progress(len(bags), total)
        return bags

    # -- queries --------------------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str]) -> list[torch.Tensor]:
        """Encode text queries: one ``(n_tokens, dim)`` float32 L2-normalised tensor per query.

        Uses the processor's ``process_queries`` (query prefix and augmentation tokens included, as the
        model was trained); padding positions are dropped by the attention mask.
        """
        out: list[torch.Tensor] = []
        for chunk in _batched(queries, self.query_batch_size):
            inputs = self._to_device(self.processor.process_queries(list(chunk)))
            raw, _ = self._run(inputs, want_attention=False)
            proj = F.normalize(raw, dim=-1)  # (B, L, dim)
            mask = inputs["attention_mask"].bool()  # (B, L)
            out.extend(proj[i, mask[i]].cpu() for i in range(len(chunk)))
        return out

    def encode_image_queries(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Encode image queries: the image-token vectors of each image, ``(n, dim)`` (no salience pass)."""
        out: list[torch.Tensor] = []
        for chunk in _batched(images, self.batch_size):
            out.extend(bag.vectors for bag in self._encode_batch(chunk, with_salience=False))
        return out
