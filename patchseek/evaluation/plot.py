"""The evaluation picture: quality against bytes per page and against latency, Pareto fronts marked."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from patchseek.errors import MissingDependencyError


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower or equal cost and higher or equal quality,
    strictly better in one. ``points`` are ``(cost, quality)``; the front is sorted by cost."""
    front = []
    for i, (c, q) in enumerate(points):
        dominated = any(
            (c2 <= c and q2 >= q) and (c2 < c or q2 > q) for j, (c2, q2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def plot_png(rows: Sequence[dict[str, Any]], *, measure: str = "ndcg@10", title: str = "") -> bytes:
    """PNG bytes: ``measure`` against disk bytes per page (left) and p50 latency (right), one labelled
    point per row (``config``), each panel's Pareto front drawn as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "the evaluation plot needs matplotlib: pip install 'patchseek[eval]'"
        ) from exc
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=100)
    quality = [float(r[measure]) for r in rows]
    for ax, key, label in (
        (axes[0], "bytes_per_page", "bytes per page on disk"),
        (axes[1], "p50_ms", "p50 latency (ms)"),
    ):
        cost = [float(r[key]) for r in rows]
        front = pareto_front(list(zip(cost, quality, strict=True)))
        on_front = set(front)
        ax.scatter(
            [c for i, c in enumerate(cost) if i not in on_front],
            [q for i, q in enumerate(quality) if i not in on_front],
            color="#8a8a8a",
            label="dominated",
        )
        ax.plot(
            [cost[i] for i in front], [quality[i] for i in front], "o-", color="#c0392b", label="Pareto front"
        )
        for i, r in enumerate(rows):
            ax.annotate(
                str(r["config"]), (cost[i], quality[i]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.set_xlabel(label)
        ax.set_ylabel(measure)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
