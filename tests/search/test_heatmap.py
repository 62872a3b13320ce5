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


def test_cells_are_drawn_at_the_patch_grid() -> None:
    """A 2 x 3 grid over a 301 x 200 image: the lit cell is tinted edge to edge within its own pixels
    (x 101-200, y 0-99), and not one pixel of its neighbours changes."""
    q = torch.tensor([[1.0, 0.0]])  # (n_q, dim)
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (n, dim): the match at (0, 1), nothing at (1, 2)
    positions = torch.tensor([[0, 1], [1, 2]])
    image = Image.new("RGB", (301, 200), (255, 255, 255))
    out = np.asarray(unit_heatmap(image, vectors, positions, (2, 3), q).convert("RGB"), dtype=np.int32)
    changed = (out != 255).any(axis=2)  # (height, width)
    ys, xs = np.nonzero(changed)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (101, 200, 0, 99)
    assert changed[0:100, 101:201].all()
    inside = out[1:99, 102:200].reshape(-1, 3)  # within the outline: one uniform tint
    assert (inside == inside[0]).all() and inside[0, 1] < 200


def test_a_page_without_a_match_is_returned_unchanged() -> None:
    q = torch.tensor([[1.0, 0.0]])
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    vectors, positions = torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 0]])
    out = unit_heatmap(image, vectors, positions, (4, 4), q)
    assert np.array_equal(np.asarray(out), np.asarray(image))
