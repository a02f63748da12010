"""PNG plots for BENCHMARKS.md: one small figure per suite, written under ``bench/results/``.

Every suite draws its own axes; this owns the rest (a headless backend, size, layout, the
file, and the Markdown line that shows it), so all plots look alike and none is left open.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parents[1]


def save_figure(name: str, draw: Callable[[Any], None], title: str = "") -> Path:
    """Draw one figure with ``draw(axes)`` and save it as ``bench/results/<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=90)
    try:
        draw(axes)
        if title:
            axes.set_title(title, fontsize=9)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
        figure.tight_layout()
        path = RESULTS / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def figure_line(path: Path, caption: str) -> str:
    """The Markdown that shows ``path`` in BENCHMARKS.md (which lives at the project root)."""
    return f"![{caption}]({path.relative_to(ROOT).as_posix()}) — {caption}."
