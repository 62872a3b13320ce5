"""Tiny, randomly initialised colpali-engine checkpoints built offline, for tests and benchmarks.

``build_tiny_model(family, out_dir)`` writes a directory that loads exactly like a downloaded checkpoint
(``config.json`` + ``model.safetensors`` + tokenizer + processor files): the real ``ColPaliEncoder``
loading path runs on it. Each model has the architecture of its family (same classes, same processor,
same special tokens) at toy size: hidden 64, 2 text layers, 2 vision layers, a ~300-token byte-level BPE
trained on a few sentences, and images cut into a handful of patches. Weights are random (seeded), so
vectors carry no meaning, but shapes, token layouts, attention and batching behave as in the real model.

``full=True`` (Qwen2 families only) gives the published shapes with random weights instead (ColQwen2:
Qwen2-VL-2B, ColQwen2.5: Qwen2.5-VL-3B; the vocabulary stays the toy one, which changes no compute), for
GPU throughput benchmarks; it is saved in bfloat16 (4-6 GB) and is never built by tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from patchseek._compat import ensure_torchvision

FAMILIES = ("colqwen2", "colqwen2_5", "colpali", "colidefics3")

# Sentences the toy tokenizers are trained on: the prompts the processors add, plus query-like text.
_CORPUS = [
    "Describe the image.",
    "What was the revenue in 2023?",
    "A table of quarterly results with totals",
    "user assistant system question answer",
    "figure chart diagram page document invoice",
    "How many employees work in Paris and London?",
]

_QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<image>"]
_IDEFICS3_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    *[f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)],
]


def _train_bpe(special: list[str], *, metaspace: bool = False) -> tuple[dict[str, int], Any]:
    """A small BPE (vocab, merges) over ``_CORPUS`` with ``special`` at ids 0..len(special)-1.

    Byte-level (GPT-2 / Qwen style) by default; ``metaspace=True`` gives a SentencePiece-style vocabulary
    with ``▁`` for spaces, as Gemma's tokenizer expects.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if metaspace:
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        alphabet = sorted(set("".join(_CORPUS).replace(" ", "▁")))
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(special) + len(alphabet) + 64,
        special_tokens=special,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    # merges as (left, right) pairs: what tokenizers' BPE takes (transformers' annotations say list[str])
    return dict(model["vocab"]), [tuple(m) for m in model["merges"]]


def _qwen_processor(family: str, *, full: bool, max_tokens: int | None) -> Any:
    from colpali_engine.models import ColQwen2_5_Processor, ColQwen2Processor
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    vocab, merges = _train_bpe(_QWEN_SPECIAL)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": _QWEN_SPECIAL[1:]})
    # 14-px patches merged 2x2 into one token: 28 px per token side. Tiny: between 2x2 and 4x4 tokens.
    max_pixels = (max_tokens or (768 if full else 16)) * 28 * 28
    image_processor = Qwen2VLImageProcessor(
        min_pixels=2 * 2 * 28 * 28, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    cls = ColQwen2Processor if family == "colqwen2" else ColQwen2_5_Processor
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())


def _qwen_model(family: str, processor: Any, *, full: bool) -> Any:
    from colpali_engine.models import ColQwen2, ColQwen2_5
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    if full and family == "colqwen2":  # Qwen2-VL-2B text shapes (the toy vocabulary aside)
        text: dict[str, Any] = dict(
            hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
            num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                                    "rope_theta": 1_000_000.0},
        )  # fmt: skip
        vision: dict[str, Any] = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)
    elif full:  # Qwen2.5-VL-3B text shapes
        text = dict(
            hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
            num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                                    "rope_theta": 1_000_000.0},
        )  # fmt: skip
        vision = dict(depth=32, embed_dim=1280, hidden_size=2048, num_heads=16, mlp_ratio=4)
    else:
        # head_dim = 64 / 4 = 16; the multimodal rope sections (t, h, w) must sum to head_dim / 2.
        text = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                    "rope_theta": 10_000.0},
        )  # fmt: skip
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    text.update(
        vocab_size=len(tok), bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
    )  # fmt: skip
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    special = dict(
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip
    if family == "colqwen2":
        return ColQwen2(Qwen2VLConfig(text_config=text, vision_config=vision, **special))
    # Qwen2.5-VL's vision tower has an explicit MLP width, RMSNorm, windowed attention and an out size.
    vision.pop("embed_dim"), vision.pop("mlp_ratio")
    if full:
        vision.update(hidden_size=1280, intermediate_size=3420, out_hidden_size=2048, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31])  # fmt: skip
    else:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=56,
                      fullatt_block_indexes=[1])  # fmt: skip
    return ColQwen2_5(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special))


def _colpali(*, full: bool) -> tuple[Any, Any]:
    from colpali_engine.models import ColPali, ColPaliProcessor
    from transformers import GemmaTokenizer, PaliGemmaConfig, SiglipImageProcessor

    if full:
        raise ValueError("full-size shapes are only provided for the Qwen2 families")
    vocab, merges = _train_bpe(_GEMMA_SPECIAL, metaspace=True)
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges)
    # 56 px / 14 px patches -> a 4x4 grid of 16 image tokens (the real model: 448 / 14 -> 32x32 = 1024).
    image_processor = SiglipImageProcessor(
        size={"height": 56, "width": 56}, image_seq_length=16, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    tok = processor.tokenizer
    config = PaliGemmaConfig(
        text_config=dict(
            model_type="gemma", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
            patch_size=14, projection_dim=64,
        ),
        image_token_index=processor.image_token_id, vocab_size=len(tok), projection_dim=64, hidden_size=64,
    )  # fmt: skip
    return processor, ColPali(config)


def _colidefics3(*, full: bool) -> tuple[Any, Any]:
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import GPT2Tokenizer, Idefics3Config, Idefics3ImageProcessor

    if full:
        raise ValueError("full-size shapes are only provided for the Qwen2 families")
    vocab, merges = _train_bpe(_IDEFICS3_SPECIAL)
    tokenizer = GPT2Tokenizer(
        vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|im_start|>",
        eos_token="<end_of_utterance>", pad_token="<|endoftext|>",
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": _IDEFICS3_SPECIAL[1:]})
    # Tiles of 32 px, 8-px patches -> 4x4 patches, pixel-shuffled by 2 -> 2x2 = 4 tokens per tile
    # (ColSmol: 512-px tiles, 16-px patches, shuffle 4 -> 8x8 = 64). Pages up to 2x2 tiles + a global one.
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip
    processor = ColIdefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4)
    tok = processor.tokenizer
    config = Idefics3Config(
        text_config=dict(
            model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8,
        ),
        image_token_id=processor.image_token_id, scale_factor=2,
    )  # fmt: skip
    return processor, ColIdefics3(config)


def _sharpen_attention(model: torch.nn.Module, std: float = 0.15) -> None:
    """Redraw query / key projections with a larger scale so random attention is peaked, not uniform.

    At the default init (std 0.02) a toy model's attention logits are ~0 and every token receives the
    same attention, which would make attention salience constant by construction.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("q_proj", "k_proj")) and isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std)


def build_tiny_model(
    family: str, out_dir: Path, *, full: bool = False, seed: int = 0, max_tokens: int | None = None
) -> Path:
    """Build a random ``family`` checkpoint (see ``FAMILIES``) and save it into ``out_dir``; return it.

    The directory holds what a Hugging Face checkpoint holds, so ``ColPaliEncoder(str(out_dir))`` and
    ``ColQwen2.from_pretrained(out_dir)`` load it. ``seed`` fixes the weights. ``full=True`` (Qwen2
    families) uses the 2B-parameter shapes, for GPU benchmarks only. ``max_tokens`` (Qwen2 families)
    sets the processor's cap on image tokens per page: 16 by default (768 with ``full``, as ColQwen2).
    """
    ensure_torchvision()
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    torch.manual_seed(seed)
    if family in ("colqwen2", "colqwen2_5"):
        processor = _qwen_processor(family, full=full, max_tokens=max_tokens)
        model = _qwen_model(family, processor, full=full)
    elif family == "colpali":
        processor, model = _colpali(full=full)
    else:
        processor, model = _colidefics3(full=full)
    if full:
        model = model.to(torch.bfloat16)  # 4.4 GB on disk instead of 8.8 GB; encoders pick their dtype
    else:
        _sharpen_attention(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
