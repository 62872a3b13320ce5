"""The lexical encoder: deterministic hashed n-gram vectors on the patch grid."""

from __future__ import annotations

import torch
from PIL import Image

from patchseek.indexer.encoders import LexicalEncoder
from patchseek.types import SourceUnit, Word


def _unit(*words: tuple[str, tuple[float, float, float, float]]) -> SourceUnit:
    return SourceUnit(
        kind="page", index=0, image=Image.new("RGB", (8, 8)), words=[Word(t, b) for t, b in words]
    )


class TestVectors:
    def test_unit_norm_and_deterministic(self) -> None:
        a, b = LexicalEncoder(ocr=False), LexicalEncoder(ocr=False)
        va, vb = a.word_vector("Glacier"), b.word_vector("glacier")
        assert torch.equal(va, vb)  # case-insensitive, same across instances (no salted hash)
        assert abs(float(va.norm()) - 1) < 1e-6

    def test_similar_words_are_closer_than_unrelated(self) -> None:
        enc = LexicalEncoder(ocr=False)
        v = enc.word_vector
        assert float(v("glacier") @ v("glaciers")) > 0.4
        # Unrelated words only meet through hash collisions in 128 dims: small on average.
        unrelated = ["invoice", "mountain", "protein", "harbour", "ledger", "quantum", "sprint", "violet"]
        noise = sum(abs(float(v("glacier") @ v(w))) for w in unrelated) / len(unrelated)
        assert noise < 0.25

    def test_query_tokens(self) -> None:
        enc = LexicalEncoder(ocr=False)
        q = enc.encode_queries(["Solar-panel installation!", "   "])
        assert q[0].shape == (3, 128) and q[1].shape == (0, 128)


class TestBags:
    def test_words_placed_on_grid(self) -> None:
        enc = LexicalEncoder(ocr=False, grid=(10, 20))
        bag = enc.encode_units(
            [_unit(("top-left", (0.0, 0.0, 0.1, 0.05)), ("bottom", (0.9, 0.9, 1.0, 1.0)))]
        )[0]
        assert bag.n_patches == 3  # "top", "left", "bottom"
        assert bag.positions.tolist() == [[0, 1], [0, 1], [9, 19]]
        assert bag.grid == (10, 20)
        assert torch.allclose(bag.vectors.norm(dim=1), torch.ones(3))

    def test_salience_prefers_rare_words(self) -> None:
        enc = LexicalEncoder(ocr=False)
        box = (0.1, 0.1, 0.2, 0.2)
        bag = enc.encode_units([_unit(("the", box), ("the", box), ("the", box), ("photosynthesis", box))])[0]
        assert int(bag.salience.argmax()) == 3

    def test_empty_text_layer_gives_empty_bag(self) -> None:
        bag = LexicalEncoder(ocr=True).encode_units([_unit()])[0]
        assert bag.n_patches == 0 and bag.vectors.shape == (0, 128)

    def test_maxsim_ranks_the_page_with_the_words_first(self) -> None:
        enc = LexicalEncoder(ocr=False)
        box = (0.1, 0.1, 0.2, 0.2)
        pages = [
            _unit(("quarterly", box), ("revenue", box), ("report", box)),
            _unit(("glacier", box), ("retreat", box), ("alps", box)),
        ]
        bags = enc.encode_units(pages)
        q = enc.encode_queries(["glacier retreat"])[0]
        scores = [float((q @ b.vectors.T).max(dim=1).values.sum()) for b in bags]
        assert scores[1] > 1.99 and scores[1] > scores[0] + 1
