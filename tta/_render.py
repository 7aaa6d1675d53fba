"""The text and figures that run reports (``tta.report``) and sweeps (``tta.sweep``) both write:
CSV text, Markdown tables, one-decimal numbers with their spread, and PNG figures.

Kept in one place so a run's summary.md and a sweep's sweep.md format tables and numbers alike,
and so both figures are saved the same way (atomically, same resolution).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tta._io import atomic_write

# Resolution of every PNG figure tta writes.
DPI = 110


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV with ``\\n`` line ends (the same bytes on every platform): the header, then the rows."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def md_row(cells: Iterable[str]) -> str:
    """One Markdown table line: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def md_rule(columns: int) -> str:
    """The line under a Markdown table's header: ``|---|---|``."""
    return "|" + "---|" * columns


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: header, rule, one line per row."""
    return [md_row(head), md_rule(len(head)), *(md_row(row) for row in rows)]


def md_escape(text: Any) -> str:
    """Text safe inside a Markdown table cell (``|`` escaped)."""
    return str(text).replace("|", "\\|")


def number(value: float, std: Optional[float] = None, signed: bool = False) -> str:
    """``12.3``, ``+1.2`` (signed) or ``12.3 ± 0.4`` (with a std): errors are shown to one
    decimal everywhere."""
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text if std is None else f"{text} ± {std:.1f}"


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1); 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@contextmanager
def png_figure(path: Path, figsize: tuple[float, float]) -> Iterator[Any]:
    """Yield the axes of a new figure; on leaving, lay it out and write it atomically to
    ``path`` as PNG. The figure is closed either way, so repeated runs do not pile them up."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
