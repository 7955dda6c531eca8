"""The report's charts as hand-written inline SVG.

No dependency and no script: each chart is a few hundred elements of plain
markup that any browser draws offline and prints crisply, whose text
(titles, tick labels, values) is ordinary DOM text, and whose bars carry a
``<title>`` tooltip with their exact value. No ``xmlns``: inline SVG in an
HTML document does not need one, and the page then holds no URL at all.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _format as fmt
from ._charts import CHARTS, COLORS
from ._stats import RunReport, nice_step, time_step

__all__ = ["Chart", "charts"]

WIDTH = 760
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 34, 44


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    caption: str
    svg: str


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ticks(top: float, most: int = 5, whole: bool = True) -> list[float]:
    """Ticks from 0 to at least ``top``, at most ``most`` steps (whole numbers for counts)."""
    step = nice_step(max(top, 1e-9) / most)
    if whole:
        step = max(1.0, math.ceil(step))
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


@dataclass(frozen=True)
class _Area:
    """A plot area: data coordinates to pixels."""

    left: float
    top: float
    width: float
    height: float
    x0: float
    x1: float
    ymax: float

    def x(self, value: float) -> float:
        return self.left + self.width * (value - self.x0) / ((self.x1 - self.x0) or 1.0)

    def y(self, value: float) -> float:
        return self.top + self.height * (1 - value / (self.ymax or 1.0))

    @property
    def bottom(self) -> float:
        return self.top + self.height


def _axes(area: _Area, yticks: Sequence[float], ylabel: str, label: Callable[[float], str] = fmt.compact) -> list[str]:
    out = []
    for v in yticks:
        y = area.y(v)
        out.append(
            f'<line x1="{area.left}" x2="{area.left + area.width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{area.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(label(v))}</text>'
        )
    out.append(
        f'<line x1="{area.left}" x2="{area.left}" y1="{area.top}" y2="{area.bottom}" stroke="#555"/>'
        f'<line x1="{area.left}" x2="{area.left + area.width}" y1="{area.bottom}" y2="{area.bottom}" stroke="#555"/>'
        f'<text class="axis-label" transform="translate(14 {area.top + area.height / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{_e(ylabel)}</text>'
    )
    return out


def _xtick(area: _Area, value: float, label: str) -> str:
    x = area.x(value)
    return (
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{area.bottom}" y2="{area.bottom + 4}" stroke="#555"/>'
        f'<text x="{x:.1f}" y="{area.bottom + 16}" text-anchor="middle">{_e(label)}</text>'
    )


def _bar(x: float, y: float, w: float, h: float, color: str, tip: str, cls: str = "bar") -> str:
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" height="{max(h, 0):.1f}" '
        f'fill="{color}"><title>{_e(tip)}</title></rect>'
    )


def _legend(items: Sequence[tuple[str, str]], right: float, y: float) -> list[str]:
    out, x = [], right
    for label, color in reversed(items):
        x -= 7 * len(label) + 26
        out.append(
            f'<rect x="{x:.1f}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14:.1f}" y="{y}">{_e(label)}</text>'
        )
    return out


def _document(key: str, title: str, height: float, parts: Sequence[str]) -> str:
    return (
        f'<svg class="chart" id="chart-{key}" width="{WIDTH}" height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'role="img" aria-label="{_e(title)}" font-family="system-ui, sans-serif" font-size="11" fill="#222">'
        f"<title>{_e(title)}</title>"
        f'<text class="chart-title" x="{_LEFT}" y="18" font-size="14" font-weight="600">{_e(title)}</text>'
        + "".join(parts)
        + "</svg>"
    )


def _empty(area: _Area, what: str) -> str:
    return (
        f'<text class="empty" x="{area.left + area.width / 2:.1f}" y="{area.top + area.height / 2:.1f}" '
        f'text-anchor="middle" fill="#888">{_e(what)}</text>'
    )


# ------------------------------------------------------------------ the charts


def _throughput(r: RunReport, title: str) -> str:
    n = len(r.throughput)
    step = r.bucket_seconds
    span = max(n, 1) * step
    width = WIDTH - _LEFT - _RIGHT
    top = _Area(_LEFT, _TOP, width, 150, 0.0, span, 1.0)
    rows_ticks = _ticks(max((b.rows for b in r.throughput), default=0) or 1, 4)
    top = _Area(top.left, top.top, top.width, top.height, 0.0, span, rows_ticks[-1])
    low_ticks = _ticks(max((b.rate_limited for b in r.throughput), default=0) or 1, 2)
    low = _Area(_LEFT, top.bottom + 22, width, 60, 0.0, span, low_ticks[-1])
    parts = _axes(top, rows_ticks, "rows") + _axes(low, low_ticks, "429s")
    parts += _legend([("answered", COLORS["ok"]), ("failed", COLORS["error"]), ("429s", COLORS["rate_limited"])],
                     WIDTH - _RIGHT, 18)  # fmt: skip
    if not n:
        parts.append(_empty(top, "no row has finished yet"))
    bar = width / max(n, 1)
    gap = 1.0 if bar > 4 else 0.0
    for b in r.throughput:
        x = top.x(b.start) + gap / 2
        when = f"{fmt.offset(b.start, step)} to {fmt.offset(b.start + step, step)}"
        answered = b.rows - b.errors
        parts.append(_bar(x, top.y(answered), bar - gap, top.bottom - top.y(answered), COLORS["ok"],
                          f"{when}: {b.rows:,} rows finished, {answered:,} answered", "bar answered"))  # fmt: skip
        if b.errors:
            parts.append(_bar(x, top.y(b.rows), bar - gap, top.y(answered) - top.y(b.rows), COLORS["error"],
                              f"{when}: {b.errors:,} rows failed", "bar failed"))  # fmt: skip
        if b.rate_limited:
            parts.append(_bar(x, low.y(b.rate_limited), bar - gap, low.bottom - low.y(b.rate_limited),
                              COLORS["rate_limited"], f"{when}: {b.rate_limited:,} 429s", "bar r429"))  # fmt: skip
    tick = time_step(span, 8)
    for i in range(int(span / tick + 1e-9) + 1):
        parts.append(_xtick(low, i * tick, fmt.offset(i * tick, tick)))
    parts.append(
        f'<text class="axis-label" x="{low.left + low.width / 2:.1f}" y="{low.bottom + 34}" text-anchor="middle">'
        f"time since the first row finished ({_e(fmt.clock(r.first_finish))})</text>"
    )
    return _document("throughput", title, low.bottom + _BOTTOM, parts)


def _latency(r: RunReport, title: str) -> str:
    h = r.latency
    edges, counts = h.edges, h.counts
    top_edge = edges[-1]
    bin_width = edges[1] - edges[0]
    x1 = top_edge + (2 * bin_width if h.overflow else 0.0)
    yticks = _ticks(max([*counts, h.overflow]) or 1, 5)
    area = _Area(_LEFT, _TOP + 10, WIDTH - _LEFT - _RIGHT, 170, 0.0, x1, yticks[-1])
    parts = _axes(area, yticks, "rows")
    if not sum(counts) and not h.overflow:
        parts.append(_empty(area, "no row has made a call yet"))
    bar = area.x(bin_width) - area.x(0)
    for lo, hi, c in zip(edges, edges[1:], counts, strict=False):
        if c:
            parts.append(_bar(area.x(lo) + 0.5, area.y(c), bar - 1, area.bottom - area.y(c), COLORS["latency"],
                              f"{fmt.seconds(lo)} to {fmt.seconds(hi)}: {c:,} rows"))  # fmt: skip
    if h.overflow:
        x = area.x(top_edge + bin_width)
        parts.append(_bar(x, area.y(h.overflow), bar - 1, area.bottom - area.y(h.overflow), COLORS["shared"],
                          f"over {fmt.seconds(top_edge)}: {h.overflow:,} rows", "bar overflow"))  # fmt: skip
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{area.bottom + 16}" text-anchor="middle">'
            f"&gt;{_e(fmt.compact(top_edge))}</text>"
        )
    for tick in _ticks(top_edge, 6, whole=False):
        if tick <= top_edge + 1e-9:
            parts.append(_xtick(area, tick, fmt.compact(tick)))
    for k, (name, value) in enumerate((("p50", r.latency_p50), ("p95", r.latency_p95), ("p99", r.latency_p99))):
        if value is None:
            continue
        x = area.x(min(value, x1))
        # Labels near the right edge go on the left of their line, inside the chart.
        label_x, anchor = (x - 3, "end") if x > area.left + 0.8 * area.width else (x + 3, "start")
        parts.append(
            f'<g class="marker" data-name="{name}"><line x1="{x:.1f}" x2="{x:.1f}" y1="{area.top}" y2="{area.bottom}" '
            f'stroke="{COLORS["marker"]}" stroke-dasharray="4 3"/>'
            f'<text x="{label_x:.1f}" y="{area.top + 10 + 12 * k}" text-anchor="{anchor}">'
            f"{name} {_e(fmt.seconds(value))}</text></g>"
        )
    parts.append(
        f'<text class="axis-label" x="{area.left + area.width / 2:.1f}" y="{area.bottom + 34}" '
        f'text-anchor="middle">seconds</text>'
    )
    return _document("latency", title, area.bottom + _BOTTOM, parts)


def _attempts(r: RunReport, title: str) -> str:
    values = list(range(0, max(r.attempts, default=1) + 1))
    counts = [r.attempts.get(v, 0) for v in values]
    yticks = _ticks(max(counts) or 1, 5)
    area = _Area(_LEFT, _TOP, WIDTH - _LEFT - _RIGHT, 150, -0.5, len(values) - 0.5, yticks[-1])
    parts = _axes(area, yticks, "rows")
    bar = min(area.width / len(values) * 0.7, 60)
    for v, c in zip(values, counts, strict=False):
        color = COLORS["shared"] if v == 0 else COLORS["ok"]
        x = area.x(v) - bar / 2
        parts.append(_bar(x, area.y(c), bar, area.bottom - area.y(c), color, f"{v} attempts: {c:,} rows"))
        if c:
            parts.append(
                f'<text class="value" x="{area.x(v):.1f}" y="{area.y(c) - 3:.1f}" text-anchor="middle">{c:,}</text>'
            )
        parts.append(_xtick(area, v, str(v)))
    parts.append(
        f'<text class="axis-label" x="{area.left + area.width / 2:.1f}" y="{area.bottom + 34}" '
        f'text-anchor="middle">calls per row</text>'
    )
    return _document("attempts", title, area.bottom + _BOTTOM, parts)


def _tokens(r: RunReport, title: str) -> str:
    groups = r.by_outcome
    top_value = max([max(o.prompt_tokens, o.completion_tokens) for o in groups] + [1])
    yticks = _ticks(top_value, 5)
    area = _Area(_LEFT, _TOP, WIDTH - _LEFT - _RIGHT, 150, -0.5, len(groups) - 0.5, yticks[-1])
    parts = _axes(area, yticks, "tokens")
    parts += _legend([("prompt", COLORS["prompt"]), ("completion", COLORS["completion"])], WIDTH - _RIGHT, 18)
    bar = min(area.width / len(groups) * 0.35, 80)
    for i, o in enumerate(groups):
        for k, (kind, value) in enumerate((("prompt", o.prompt_tokens), ("completion", o.completion_tokens))):
            x = area.x(i) - bar + k * bar
            parts.append(_bar(x + 1, area.y(value), bar - 2, area.bottom - area.y(value), COLORS[kind],
                              f"{o.outcome}: {value:,} {kind} tokens", f"bar {kind}"))  # fmt: skip
            parts.append(
                f'<text class="value" x="{x + bar / 2:.1f}" y="{area.y(value) - 3:.1f}" '
                f'text-anchor="middle">{_e(fmt.compact(value))}</text>'
            )
        cost = "" if o.cost is None else f", {fmt.money(o.cost)}"
        parts.append(_xtick(area, i, f"{o.outcome} ({o.rows:,} rows{cost})"))
    return _document("tokens", title, area.bottom + _BOTTOM, parts)


_DRAW = {"throughput": _throughput, "latency": _latency, "attempts": _attempts, "tokens": _tokens}


def charts(report: RunReport) -> list[Chart]:
    """Every chart of the report, in page order."""
    return [Chart(s.key, s.title, s.caption(report), _DRAW[s.key](report, s.title)) for s in CHARTS]
