"""ColPaliEncoder on tiny random checkpoints of every supported colpali-engine family.

Each checkpoint is built offline by ``tiny_models.build_tiny_model`` and loaded back through the real
path (``ColPaliEncoder(str(dir))``). The default run covers ColQwen2 fully and the other families with a
smoke test each; ``-m slow`` runs the full contract on every family.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from patchseek.errors import MissingDependencyError, ModelLoadError
from patchseek.indexer.encoders.colpali import ColPaliEncoder, resolve_device
from patchseek.indexer.encoders.colpali_families import (
    find_family,
    idefics3_layout,
    paligemma_layout,
    qwen2_layout,
)
from patchseek.indexer.encoders.colpali_source import local_revision
from patchseek.types import SourceUnit
from tests.indexer.tiny_models import FAMILIES, build_tiny_model

SLOW_FAMILIES = [pytest.param(f, marks=pytest.mark.slow) if f != "colqwen2" else f for f in FAMILIES]


def _page(seed: int, height: int, width: int) -> Image.Image:
    """A random RGB "page" of ``height x width`` pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# Tall, wide and square pages: different token counts per page, so batches are padded.
PAGES = [_page(0, 200, 60), _page(1, 60, 200), _page(2, 120, 120)]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_dir(family)``: the family's tiny checkpoint directory, built once per session."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(family))
        return built[family]

    return get


@pytest.fixture(scope="session")
def encoder(tiny_dir: Callable[[str], Path]) -> Callable[..., ColPaliEncoder]:
    """``encoder(family, **kwargs)``: a ``ColPaliEncoder`` on the tiny checkpoint, cached per arguments."""
    cache: dict[tuple[str, tuple[tuple[str, object], ...]], ColPaliEncoder] = {}

    def get(family: str, **kwargs: object) -> ColPaliEncoder:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = ColPaliEncoder(str(tiny_dir(family)), **kwargs)  # type: ignore[arg-type]
        return cache[key]

    return get


def _reference(enc: ColPaliEncoder, images: list[Image.Image]) -> tuple[Any, torch.Tensor]:
    """colpali-engine's own forward on ``images``: (processed batch, (B, L, dim) output)."""
    batch = enc.processor.process_images(images)
    inputs = {k: v for k, v in batch.items() if k not in enc.family.drop_inputs}
    with torch.inference_mode():
        out = enc.model(**inputs)
    return batch, out


# -- pure layout functions: hand-built masks whose answer is obvious -------------------------------------


class TestLayouts:
    def test_qwen2_merges_2x2_patches_row_major(self) -> None:
        mask = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 0], dtype=torch.bool)  # 6 image tokens
        lay = qwen2_layout(mask, torch.tensor([1, 4, 6]), merge_size=2)  # 4x6 patches -> 2x3 tokens
        assert lay.grid == (2, 3)
        assert lay.token_index.tolist() == [2, 3, 4, 5, 6, 7]
        assert lay.positions.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]

    def test_qwen2_rejects_count_mismatch(self) -> None:
        with pytest.raises(ValueError, match="image tokens"):
            qwen2_layout(torch.ones(5, dtype=torch.bool), torch.tensor([1, 4, 6]), merge_size=2)

    def test_paligemma_square_grid(self) -> None:
        mask = torch.tensor([1] * 9 + [0, 0], dtype=torch.bool)
        lay = paligemma_layout(mask, side=3)
        assert lay.grid == (3, 3) and lay.positions[-1].tolist() == [2, 2]
        with pytest.raises(ValueError):
            paligemma_layout(mask, side=4)

    def test_idefics3_tiles_drop_global_image(self) -> None:
        # 1 row x 2 tiles of 4 tokens (2x2 each) + 4 global tokens, with markers between tiles.
        mask = torch.tensor([0] + [1] * 4 + [0] + [1] * 4 + [0, 0] + [1] * 4 + [0], dtype=torch.bool)
        lay = idefics3_layout(mask, rows=1, cols=2, seq_len=4)
        assert lay.grid == (2, 4)
        assert lay.token_index.tolist() == [1, 2, 3, 4, 6, 7, 8, 9]  # the global image's 4 are dropped
        # tile 0 covers columns 0-1, tile 1 columns 2-3; row-major inside each tile
        assert lay.positions.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]

    def test_idefics3_unsplit_image_keeps_global(self) -> None:
        mask = torch.tensor([0] + [1] * 4 + [0], dtype=torch.bool)
        lay = idefics3_layout(mask, rows=0, cols=0, seq_len=4)
        assert lay.grid == (2, 2) and lay.token_index.tolist() == [1, 2, 3, 4]

    def test_find_family(self) -> None:
        def name(config: dict[str, Any]) -> str | None:
            fam = find_family(config)
            return fam.name if fam else None

        assert name({"architectures": ["ColQwen2_5"], "model_type": "qwen2_5_vl"}) == "colqwen2_5"
        # an adapter's base config names the backbone class; the model_type decides
        assert (
            name({"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl"})
            == "colqwen2"
        )
        assert name({"architectures": ["ColPali"], "model_type": "paligemma"}) == "colpali"
        assert name({"model_type": "idefics3"}) == "colidefics3"
        assert find_family({"architectures": ["BiQwen2"], "model_type": "qwen2_vl"}) is None
        assert find_family({"model_type": "bert"}) is None


# -- the encoder contract, on every family (ColQwen2 by default, the others under -m slow) -------------


@pytest.mark.parametrize("family", SLOW_FAMILIES)
class TestEncoderContract:
    def test_vectors_are_colpali_engine_outputs_at_image_tokens(
        self, encoder: Callable[..., ColPaliEncoder], family: str
    ) -> None:
        enc = encoder(family)
        bags = enc.encode_images(PAGES)
        batch, ref = _reference(enc, PAGES)
        image_mask = batch["input_ids"] == enc.image_token_id  # (B, L)
        for i, bag in enumerate(bags):
            n_image = int(image_mask[i].sum())
            assert bag.dim == enc.dim == 128
            assert bag.n_patches == bag.grid[0] * bag.grid[1] <= n_image
            # the kept vectors are colpali-engine's image-token outputs, in sequence order
            expected = ref[i][image_mask[i]][: bag.n_patches]  # (n, dim)
            torch.testing.assert_close(bag.vectors, expected.float(), atol=1e-5, rtol=1e-4)
            assert bag.vectors.dtype == torch.float32
            torch.testing.assert_close(bag.vectors.norm(dim=-1), torch.ones(bag.n_patches))

    def test_positions_cover_the_grid_once(self, encoder: Callable[..., ColPaliEncoder], family: str) -> None:
        for bag in encoder(family).encode_images(PAGES):
            rows, cols = bag.grid
            assert bag.positions.dtype == torch.int64
            assert bool((bag.positions >= 0).all())
            assert bool((bag.positions[:, 0] < rows).all()) and bool((bag.positions[:, 1] < cols).all())
            flat = bag.positions[:, 0] * cols + bag.positions[:, 1]
            assert sorted(flat.tolist()) == list(range(rows * cols))

    def test_attention_salience_is_a_distribution_share(
        self, encoder: Callable[..., ColPaliEncoder], family: str
    ) -> None:
        for bag in encoder(family).encode_images(PAGES):
            s = bag.salience
            assert s.shape == (bag.n_patches,) and s.dtype == torch.float32
            assert bool((s >= 0).all()) and float(s.sum()) <= 1.0 + 1e-5  # attention shares of one row
            assert float(s.max() - s.min()) > 1e-3  # the peaked tiny model ranks tokens

    def test_norm_salience_is_projection_norm(
        self, encoder: Callable[..., ColPaliEncoder], family: str
    ) -> None:
        enc = encoder(family, salience="norm")
        bags = enc.encode_images(PAGES[:2])
        captured: list[torch.Tensor] = []
        handle = enc.family.projection(enc.model).register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            batch, _ = _reference(enc, PAGES[:2])
        finally:
            handle.remove()
        image_mask = batch["input_ids"] == enc.image_token_id
        for i, bag in enumerate(bags):
            norms = captured[0][i][image_mask[i]][: bag.n_patches].norm(dim=-1)
            torch.testing.assert_close(bag.salience, norms.float(), atol=1e-5, rtol=1e-4)
        # and it is not what the attention mode gives
        assert not torch.allclose(bags[0].salience, encoder(family).encode_images(PAGES[:1])[0].salience)

    def test_batched_equals_one_by_one(self, encoder: Callable[..., ColPaliEncoder], family: str) -> None:
        enc = encoder(family)
        batched = enc.encode_images(PAGES)  # default batch_size=4: one padded batch
        for page, bag in zip(PAGES, batched, strict=True):
            (single,) = enc.encode_images([page])
            assert single.grid == bag.grid
            torch.testing.assert_close(single.vectors, bag.vectors, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(single.salience, bag.salience, atol=1e-5, rtol=1e-3)

    def test_queries_drop_padding(self, encoder: Callable[..., ColPaliEncoder], family: str) -> None:
        enc = encoder(family)
        long_q, short_q = "How many employees work in Paris and London in 2023?", "revenue"
        both = enc.encode_queries([long_q, short_q])
        alone = enc.encode_queries([short_q])[0]
        n_short = int(enc.processor.process_queries([short_q])["attention_mask"].sum())
        assert [q.shape[1] for q in both] == [128, 128]
        assert both[0].shape[0] > both[1].shape[0] == alone.shape[0] == n_short
        torch.testing.assert_close(both[1], alone, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both[0].norm(dim=-1), torch.ones(both[0].shape[0]))


# -- one smoke test per non-default family in the default run ------------------------------------------


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "colqwen2"])
def test_family_smoke(encoder: Callable[..., ColPaliEncoder], family: str) -> None:
    enc = encoder(family)
    assert enc.family.name == family and enc.revision.startswith("local-")
    bags = enc.encode_images(PAGES[:2])
    _, ref = _reference(enc, PAGES[:2])
    for i, bag in enumerate(bags):
        assert bag.n_patches == bag.grid[0] * bag.grid[1] > 1
        assert float(bag.salience.max() - bag.salience.min()) > 1e-3
        # each kept vector is one of colpali-engine's outputs for that page
        sims = bag.vectors @ ref[i].float().T  # (n, L)
        assert bool((sims.max(dim=1).values > 1 - 1e-4).all())
    (q,) = enc.encode_queries(["revenue 2023"])
    assert q.ndim == 2 and q.shape[1] == enc.dim


# -- ColQwen2 specifics ----------------------------------------------------------------------------------


class TestColQwen2:
    def test_grid_follows_image_grid_thw(self, encoder: Callable[..., ColPaliEncoder]) -> None:
        enc = encoder("colqwen2")
        thw = enc.processor.process_images(PAGES)["image_grid_thw"]
        grids = [bag.grid for bag in enc.encode_images(PAGES)]
        assert grids == [(int(h) // 2, int(w) // 2) for _, h, w in thw]
        assert grids[0][0] > grids[0][1] and grids[1][0] < grids[1][1]  # tall page: more rows; wide: cols

    def test_attention_salience_matches_output_attentions(
        self, encoder: Callable[..., ColPaliEncoder], tiny_dir: Callable[[str], Path]
    ) -> None:
        """The hooks give what ``output_attentions=True`` gives, averaged the documented way."""
        from colpali_engine.models import ColQwen2
        from transformers import Qwen2VLModel

        enc = encoder("colqwen2")
        bags = enc.encode_images(PAGES)
        ref = ColQwen2.from_pretrained(tiny_dir("colqwen2"), attn_implementation="eager").eval()
        batch = dict(enc.processor.process_images(PAGES))
        offsets = batch["image_grid_thw"][:, 1] * batch["image_grid_thw"][:, 2]
        batch["pixel_values"] = torch.cat(
            [p[:o] for p, o in zip(batch["pixel_values"], offsets, strict=True)]
        )
        with torch.inference_mode():
            out = Qwen2VLModel.forward(
                ref, **batch, output_attentions=True, return_dict=True, use_cache=False
            )
        assert len(out.attentions) == 2  # tiny model: both layers are "the last 4"
        attn = torch.stack(out.attentions).float().mean(dim=(0, 2))  # (B, L, L): mean over layers, heads
        for i, bag in enumerate(bags):
            image = (batch["input_ids"][i] == enc.image_token_id).nonzero().flatten()
            valid = batch["attention_mask"][i].bool()
            after = torch.arange(len(valid)) > image.max()
            expected = attn[i][valid & after][:, image].mean(dim=0)  # (n,)
            torch.testing.assert_close(bag.salience, expected, atol=1e-5, rtol=1e-4)

    def test_deterministic_across_loads(self, tiny_dir: Callable[[str], Path]) -> None:
        a = ColPaliEncoder(str(tiny_dir("colqwen2"))).encode_images(PAGES[:1])[0]
        b = ColPaliEncoder(str(tiny_dir("colqwen2"))).encode_images(PAGES[:1])[0]
        assert torch.equal(a.vectors, b.vectors) and torch.equal(a.salience, b.salience)

    def test_streaming_progress_and_image_queries(self, encoder: Callable[..., ColPaliEncoder]) -> None:
        enc = encoder("colqwen2", batch_size=2)
        calls: list[tuple[int, int]] = []
        units = [SourceUnit(kind="page", index=i, image=p) for i, p in enumerate(PAGES)]
        bags = enc.encode_units(units, progress=lambda done, total: calls.append((done, total)))
        assert calls == [(2, 3), (3, 3)]
        streamed = list(enc.iter_encode(p for p in PAGES))  # a generator, consumed batch by batch
        assert [b.grid for b in streamed] == [b.grid for b in bags]
        for q, bag in zip(enc.encode_image_queries(PAGES), bags, strict=True):
            torch.testing.assert_close(q, bag.vectors, atol=1e-4, rtol=1e-4)

    def test_max_image_pixels_caps_tokens(self, tiny_dir: Callable[[str], Path]) -> None:
        enc = ColPaliEncoder(str(tiny_dir("colqwen2")), max_image_pixels=2 * 2 * 28 * 28, salience="norm")
        for bag in enc.encode_images(PAGES):
            assert bag.n_patches <= 4

    def test_revision_identifies_the_checkpoint(
        self, tiny_dir: Callable[[str], Path], tmp_path: Path
    ) -> None:
        src = tiny_dir("colqwen2")
        enc = ColPaliEncoder(str(src), revision="ignored-for-dirs", salience="norm")
        assert enc.revision == local_revision(src) and enc.name == f"ColQwen2:{src.resolve()}"
        copy = shutil.copytree(src, tmp_path / "copy")
        assert local_revision(copy) == enc.revision  # where it lives does not matter
        weights = copy / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # same size, one byte of weights changed
        weights.write_bytes(bytes(data))
        assert local_revision(copy) != enc.revision

    def test_peft_adapter_directory(
        self, encoder: Callable[..., ColPaliEncoder], tiny_dir: Callable[[str], Path], tmp_path: Path
    ) -> None:
        """vidore publishes most checkpoints as PEFT adapters over a base: load base + adapter."""
        from colpali_engine.models import ColQwen2
        from peft import LoraConfig, get_peft_model

        base = ColQwen2.from_pretrained(tiny_dir("colqwen2"))
        lora = LoraConfig(
            r=2, target_modules=r".*language_model.*\.q_proj", modules_to_save=["custom_text_proj"]
        )
        peft_model = get_peft_model(base, lora)  # LoRA starts as a no-op (B = 0)
        with torch.no_grad():  # a "trained" projection: the base's, negated
            peft_model.base_model.model.custom_text_proj.modules_to_save["default"].weight.neg_()
            peft_model.base_model.model.custom_text_proj.modules_to_save["default"].bias.neg_()
        peft_model.save_pretrained(tmp_path / "adapter")  # adapter files only, no processor

        enc = ColPaliEncoder(str(tmp_path / "adapter"), salience="norm")
        plain = encoder("colqwen2", salience="norm")
        assert enc.revision.endswith("+" + plain.revision)  # adapter hash + base hash
        adapted, original = enc.encode_images(PAGES[:1])[0], plain.encode_images(PAGES[:1])[0]
        torch.testing.assert_close(adapted.vectors, -original.vectors, atol=1e-5, rtol=1e-4)

    def test_base_model_without_projection_is_refused(
        self, tiny_dir: Callable[[str], Path], tmp_path: Path
    ) -> None:
        from safetensors.torch import load_file, save_file

        copy = shutil.copytree(tiny_dir("colqwen2"), tmp_path / "base-vlm")
        weights = load_file(copy / "model.safetensors")
        save_file(
            {k: v for k, v in weights.items() if "custom_text_proj" not in k}, copy / "model.safetensors"
        )
        with pytest.raises(ModelLoadError, match="projection"):
            ColPaliEncoder(str(copy))

    def test_concurrent_calls_get_their_own_outputs(self, encoder: Callable[..., ColPaliEncoder]) -> None:
        enc = encoder("colqwen2")
        queries = ["revenue in 2023", "table of results", "how many employees", "figure"]
        expected = [enc.encode_queries([q])[0] for q in queries]
        with ThreadPoolExecutor(max_workers=4) as pool:
            got = list(pool.map(lambda q: enc.encode_queries([q])[0], queries * 3))
        for i, g in enumerate(got):
            torch.testing.assert_close(g, expected[i % len(queries)])

    def test_loads_from_hub_cache_with_commit_revision(
        self, tiny_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from huggingface_hub import constants

        commit = "0123456789abcdef0123456789abcdef01234567"
        repo = tmp_path / "hub" / "models--patchseek-test--tiny-colqwen2"
        shutil.copytree(tiny_dir("colqwen2"), repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        enc = ColPaliEncoder("patchseek-test/tiny-colqwen2", salience="norm")
        assert enc.revision == commit and enc.name == "ColQwen2:patchseek-test/tiny-colqwen2"
        assert enc.encode_images(PAGES[:1])[0].n_patches > 0


# -- errors ----------------------------------------------------------------------------------------------


class TestErrors:
    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ModelLoadError) as err:
            ColPaliEncoder(str(tmp_path / "no-such-model"))
        assert err.value.code == "model_load_error"

    def test_unsupported_architecture(self, tmp_path: Path) -> None:
        (tmp_path / "config.json").write_text(
            json.dumps({"model_type": "bert", "architectures": ["BertModel"]})
        )
        with pytest.raises(ModelLoadError, match="unsupported architecture"):
            ColPaliEncoder(str(tmp_path))

    def test_single_vector_bi_model_is_unsupported(self, tmp_path: Path) -> None:
        config = {"model_type": "qwen2_vl", "architectures": ["BiQwen2"]}
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(ModelLoadError):
            ColPaliEncoder(str(tmp_path))

    def test_directory_without_checkpoint(self, tmp_path: Path) -> None:
        with pytest.raises(ModelLoadError, match="config.json"):
            ColPaliEncoder(str(tmp_path))

    def test_truncated_weights(self, tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
        copy = shutil.copytree(tiny_dir("colqwen2"), tmp_path / "broken")
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        with pytest.raises(ModelLoadError):
            ColPaliEncoder(str(copy))

    def test_hub_id_not_cached_offline(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
            ColPaliEncoder("vidore/colqwen2-v1.0")

    def test_missing_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "colpali_engine.models", None)  # makes the import raise
        with pytest.raises(MissingDependencyError, match=r"patchseek\[colpali\]"):
            ColPaliEncoder("anything")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
    def test_cuda_requested_without_gpu(self) -> None:
        with pytest.raises(ModelLoadError, match="CUDA"):
            resolve_device("cuda")

    def test_bad_salience(self) -> None:
        with pytest.raises(ValueError):
            ColPaliEncoder("anything", salience="idf")  # type: ignore[arg-type]


def test_colpali_engine_imports_after_ensure_torchvision() -> None:
    """In a fresh interpreter (torchvision not yet imported): the fix makes colpali_engine importable."""
    code = (
        "from patchseek._compat import ensure_torchvision\n"
        "ensure_torchvision(); ensure_torchvision()\n"
        "import colpali_engine, torchvision.transforms.v2\n"
        "from colpali_engine.models import ColQwen2, ColPali, ColIdefics3\n"
        "print('ok', torchvision.__version__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


class TestSalienceChoice:
    """``salience="auto"`` (the service's): SDPA attention, eager only for the batches of a pruning
    collection; and the batch size derived from free memory."""

    def test_auto_pays_for_attention_only_when_salience_is_asked_for(
        self, encoder: Callable[..., ColPaliEncoder]
    ) -> None:
        auto = encoder("colqwen2", salience="auto")
        units = [SourceUnit(kind="page", index=i, image=p) for i, p in enumerate(PAGES[:2])]
        assert auto.model.config._attn_implementation == "sdpa"
        plain = auto.encode_units(units, salience=False)  # a collection that does not prune
        pruning = auto.encode_units(units, salience=True)
        assert auto.model.config._attn_implementation == "sdpa"  # switched back after the batch
        norm = encoder("colqwen2", salience="norm").encode_units(units)
        attention = encoder("colqwen2").encode_units(units)  # eager from the load
        for a, n, p, att in zip(plain, norm, pruning, attention, strict=True):
            torch.testing.assert_close(a.salience, n.salience, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(p.salience, att.salience, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(a.vectors, att.vectors, atol=1e-4, rtol=1e-3)  # same vectors

    def test_batch_size_zero_is_the_cpu_default_and_sized_from_memory_on_cuda(
        self, encoder: Callable[..., ColPaliEncoder]
    ) -> None:
        from patchseek.indexer.encoders.colpali import AUTO_BATCH_MAX, CPU_BATCH, auto_batch_size

        assert encoder("colqwen2", batch_size=0).batch_size == CPU_BATCH
        assert auto_batch_size(10e9, 1e9) == 6 and auto_batch_size(1e9, 2e9) == 1
        assert auto_batch_size(1e12, 1e6) == AUTO_BATCH_MAX
