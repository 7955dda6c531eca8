"""The report's charts as PNG files, drawn with matplotlib (the ``plot`` extra).

Same charts, titles and colours as the inline SVG (:mod:`._charts`). Uses
matplotlib's object API (``Figure``, never ``pyplot``): no global state, no
display, safe in a thread, and the caller's backend is left alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import ConfigError
from . import _format as fmt
from ._charts import CHARTS, COLORS
from ._stats import RunReport

__all__ = ["png_charts", "require_matplotlib"]

_SIZE = (8.0, 3.4)
_DPI = 100


def require_matplotlib() -> None:
    """Fail early, before any work, when PNGs are asked for and cannot be drawn.

    Raises
    ------
    ConfigError
        matplotlib is not installed.
    """
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ConfigError("PNG charts need matplotlib: pip install 'dask-llm[plot]'") from None


def _figure() -> Any:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")


def _throughput(fig: Any, r: RunReport, title: str) -> None:
    top, low = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    starts = np.array([b.start for b in r.throughput])
    rows = np.array([b.rows for b in r.throughput])
    errors = np.array([b.errors for b in r.throughput])
    limited = np.array([b.rate_limited for b in r.throughput])
    width = r.bucket_seconds * 0.9
    top.bar(starts, rows - errors, width=width, align="edge", color=COLORS["ok"], label="answered")
    top.bar(starts, errors, bottom=rows - errors, width=width, align="edge", color=COLORS["error"], label="failed")
    low.bar(starts, limited, width=width, align="edge", color=COLORS["rate_limited"], label="429s")
    top.set(title=title, ylabel="rows")
    top.legend(loc="upper right", fontsize="small")
    low.set(ylabel="429s", xlabel=f"seconds since the first row finished ({fmt.clock(r.first_finish)})")
    if not len(starts):
        top.text(0.5, 0.5, "no row has finished yet", transform=top.transAxes, ha="center", color="#888")


def _latency(fig: Any, r: RunReport, title: str) -> None:
    ax = fig.subplots()
    h = r.latency
    edges = np.array(h.edges)
    ax.bar(edges[:-1], h.counts, width=np.diff(edges), align="edge", color=COLORS["latency"])
    if h.overflow:
        step = edges[1] - edges[0]
        ax.bar([edges[-1] + step], [h.overflow], width=step, align="edge", color=COLORS["shared"],
               label=f"over {fmt.seconds(edges[-1])}")  # fmt: skip
        ax.legend(loc="upper right", fontsize="small")
    for k, (name, value) in enumerate((("p50", r.latency_p50), ("p95", r.latency_p95), ("p99", r.latency_p99))):
        if value is not None:
            ax.axvline(value, color=COLORS["marker"], linestyle="--", linewidth=1)
            ax.annotate(f"{name} {fmt.seconds(value)}", (value, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12 - 12 * k), textcoords="offset points", fontsize="small")  # fmt: skip
    ax.set(title=title, xlabel="seconds", ylabel="rows")


def _attempts(fig: Any, r: RunReport, title: str) -> None:
    ax = fig.subplots()
    values = list(range(0, max(r.attempts, default=1) + 1))
    counts = [r.attempts.get(v, 0) for v in values]
    bars = ax.bar(values, counts, color=[COLORS["shared"] if v == 0 else COLORS["ok"] for v in values])
    ax.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], fontsize="small")
    ax.set_xticks(values)
    ax.set(title=title, xlabel="calls per row", ylabel="rows")


def _tokens(fig: Any, r: RunReport, title: str) -> None:
    ax = fig.subplots()
    x = np.arange(len(r.by_outcome))
    for k, kind in enumerate(("prompt", "completion")):
        values = [getattr(o, f"{kind}_tokens") for o in r.by_outcome]
        bars = ax.bar(x - 0.2 + 0.4 * k, values, width=0.4, color=COLORS[kind], label=kind)
        ax.bar_label(bars, labels=[fmt.compact(v) for v in values], fontsize="small")
    ax.set_xticks(x, [f"{o.outcome} ({o.rows:,} rows" + ("" if o.cost is None else f", {fmt.money(o.cost)}") + ")"
                      for o in r.by_outcome])  # fmt: skip
    ax.legend(loc="upper right", fontsize="small")
    ax.set(title=title, ylabel="tokens")


_DRAW: dict[str, Callable[[Any, RunReport, str], None]] = {
    "throughput": _throughput,
    "latency": _latency,
    "attempts": _attempts,
    "tokens": _tokens,
}


def png_charts(report: RunReport) -> dict[str, bytes]:
    """Each chart as PNG bytes, by file name (``throughput.png``, ...).

    Raises
    ------
    ConfigError
        matplotlib is not installed.
    """
    out = {}
    for spec in CHARTS:
        fig = _figure()
        _DRAW[spec.key](fig, report, spec.title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        out[f"{spec.key}.png"] = buffer.getvalue()
    return out
