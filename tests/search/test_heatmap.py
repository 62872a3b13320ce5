"""Heat maps light only the patches that match the query, relative to the page's best match."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from patchseek.api.services.search import unit_heatmap


def test_only_patches_near_the_best_match_light_up() -> None:
    q = torch.tensor([[1.0, 0.0, 0.0]])  # (n_q, dim)
    vectors = torch.tensor([[1.0, 0.0, 0.0], [0.55, 0.8352, 0.0], [0.0, 0.0, 1.0]])  # best, weak, none
    positions = torch.tensor([[0, 0], [0, 1], [0, 2]])
    image = Image.new("RGB", (300, 100), "white")
    out = np.asarray(unit_heatmap(image, vectors, positions, (1, 3), q).convert("RGB"), dtype=np.int32)
    red = lambda x: out[50, x, 1] < 200  # noqa: E731 - a lit cell loses green
    assert red(50)  # the matching word
    assert not red(150)  # cosine 0.55 < 0.6 of the best: under the relative threshold, stays dark
    assert not red(250)
