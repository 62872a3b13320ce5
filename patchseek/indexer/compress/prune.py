"""Salience-based patch pruning: ``TopPPruner`` (HPC-ColPali) and ``AdaptivePruner`` (DocPruner).

Salience is what the encoder reports per patch: the attention the patch receives (ColPali encoders with
eager attention) or a cheaper proxy (norm, IDF). Both pruners keep patch order and never go below their
``min_keep`` floor; a unit with ``min_keep`` patches or fewer is returned whole.
"""

from __future__ import annotations

import math

import torch

from patchseek.errors import InvalidInputError
from patchseek.indexer.compress.base import PatchPruner, top_k_indices


class TopPPruner(PatchPruner):
    """Keep the ``ratio`` share of patches with the highest salience.

    A unit of ``n`` patches keeps ``max(min_keep, ceil(ratio · n))`` of them (all of them if that is
    more than ``n``); ties in salience go to the earlier patch.

    Parameters
    ----------
    ratio : float
        Share of patches kept, in (0, 1].
    min_keep : int
        Floor per unit.

    Examples
    --------
    >>> import torch
    >>> from patchseek.types import PatchBag
    >>> bag = PatchBag(torch.eye(4), torch.tensor([0.1, 0.9, 0.5, 0.2]), torch.zeros(4, 2, dtype=torch.long),
    ...                (2, 2))
    >>> TopPPruner(ratio=0.5, min_keep=1).prune(bag).indices.tolist()
    [1, 2]
    """

    def __init__(self, ratio: float = 0.5, min_keep: int = 8) -> None:
        super().__init__(min_keep)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise InvalidInputError(f"prune ratio must be in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)

    def _impl(self, salience: torch.Tensor) -> torch.Tensor:
        n = salience.numel()
        k = min(n, max(self.min_keep, math.ceil(self.ratio * n - 1e-9)))
        return top_k_indices(salience, k)  # (k,)


class AdaptivePruner(PatchPruner):
    """Keep the patches whose salience is at or above ``mean + k · std`` of the unit's salience.

    The threshold adapts to each unit: a page whose attention concentrates on a few patches keeps few,
    a dense page keeps many (DocPruner). ``k = 0`` (the default) keeps the patches at or above the mean,
    which on heavy-tailed attention is typically 25–45% of a page; a unit whose salience is constant
    (no information) keeps every patch. The floor ``min_keep`` tops the kept set up with the most
    salient remaining patches.

    Parameters
    ----------
    k : float
        Number of standard deviations above the mean (may be negative to keep more).
    min_keep : int
        Floor per unit.

    Examples
    --------
    >>> import torch
    >>> from patchseek.types import PatchBag
    >>> sal = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 2.0])
    >>> bag = PatchBag(torch.eye(6), sal, torch.zeros(6, 2, dtype=torch.long), (2, 3))
    >>> AdaptivePruner(k=0.0, min_keep=1).prune(bag).indices.tolist()
    [3, 5]
    """

    def __init__(self, k: float = 0.0, min_keep: int = 8) -> None:
        super().__init__(min_keep)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
            raise InvalidInputError(f"adaptive pruning k must be a finite number, got {k!r}")
        self.k = float(k)

    def _impl(self, salience: torch.Tensor) -> torch.Tensor:
        mean = salience.mean()
        std = salience.std(unbiased=False)
        # a tolerance so that a constant salience (std 0, rounding noise) keeps every patch
        threshold = mean + self.k * std - 1e-12 * (1.0 + mean.abs())
        return torch.nonzero(salience >= threshold).flatten()  # (k,)
