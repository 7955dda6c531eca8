"""The report as one self-contained HTML page.

Everything is inline (CSS, SVG charts); the page holds no script, no link,
no image and no URL, and its Content-Security-Policy forbids fetching
anything, so it reads the same offline, from an e-mail attachment or an
object store, and prints as it shows. Every headline figure is an element
with a ``data-key`` (its :class:`~._stats.RunReport` field), for tests and
for scraping.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

from . import _format as fmt
from ._stats import RunReport
from ._svg import Chart, charts

__all__ = ["render_html"]

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 1.5em auto; max-width: 800px; padding: 0 1em; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 1.6em 0 .5em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
code, pre { font: 12px/1.4 ui-monospace, monospace; background: #f4f4f4; }
pre { padding: .5em .7em; white-space: pre-wrap; overflow-wrap: anywhere; margin: .4em 0; }
.meta { color: #555; margin: .2em 0; }
.note { background: #fff6dd; border: 1px solid #e8cf7a; padding: .5em .8em; margin: 1em 0; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: .5em; }
.fig { border: 1px solid #ddd; border-radius: 4px; padding: .45em .7em; }
.fig .value { font-size: 1.3em; font-weight: 600; }
.fig .label { color: #555; }
.fig .detail { color: #777; font-size: .9em; }
figure { margin: 1.4em 0; }
figcaption { color: #555; font-size: .9em; max-width: 760px; }
svg.chart { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: .95em; }
th, td { text-align: left; padding: .25em .5em; border-bottom: 1px solid #eee; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 1px solid #bbb; }
.muted { color: #777; }
"""

#: No fetch of any kind: the page is complete as it is.
_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fig(key: str, label: str, value: str, detail: str = "") -> str:
    extra = f'<div class="detail">{_e(detail)}</div>' if detail else ""
    return (
        f'<div class="fig" data-key="{_e(key)}"><div class="value">{_e(value)}</div>'
        f'<div class="label">{_e(label)}</div>{extra}</div>'
    )


def _figures(r: RunReport) -> str:
    failed_detail = f"{r.rows_not_called:,} not called (spend cap)" if r.rows_not_called else ""
    cost_detail = (
        f"${r.price.input:g} in, ${r.price.output:g} out per 1M tokens"
        if r.price is not None
        else f"no price for model {r.model!r}"
    )
    span_detail = f"{fmt.clock(r.first_finish)} to {fmt.clock(r.last_finish)}" if r.first_finish else ""
    rate = f"{r.rows_per_minute:,.1f}" if r.rows_per_minute is not None else "-"
    figures = [
        _fig("rows", "rows", fmt.count(r.rows), f"dataset files hold {r.dataset_rows:,} in {r.dataset_files:,} files"),
        _fig("rows_ok", "answered", fmt.count(r.rows_ok)),
        _fig("rows_failed", "failed", fmt.count(r.rows_failed), failed_detail),
        _fig("rows_shared", "shared answers (0 calls)", fmt.count(r.rows_shared)),
        _fig("calls", "calls", fmt.count(r.calls)),
        _fig("retries", "retries", fmt.count(r.retries)),
        _fig("rate_limited", "429s", fmt.count(r.rate_limited)),
        _fig("prompt_tokens", "tokens in", fmt.count(r.prompt_tokens)),
        _fig("completion_tokens", "tokens out", fmt.count(r.completion_tokens)),
        _fig("cost", "cost", fmt.money(r.cost), cost_detail),
        _fig("wall_span", "wall span (first to last finish)", fmt.seconds(r.wall_span), span_detail),
        _fig("rows_per_minute", "rows/min achieved", rate),
        _fig("latency_p50", "latency p50", fmt.seconds(r.latency_p50)),
        _fig("latency_p95", "latency p95", fmt.seconds(r.latency_p95)),
        _fig("latency_p99", "latency p99", fmt.seconds(r.latency_p99)),
    ]
    return f'<section id="summary"><h2>Summary</h2><div class="figures">{"".join(figures)}</div></section>'


def _chart(chart: Chart) -> str:
    return f'<figure id="figure-{chart.key}">{chart.svg}<figcaption>{_e(chart.caption)}</figcaption></figure>'


def _table(head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    """``head``: (title, numeric) per column; cells are already escaped."""
    th = "".join(f'<th class="num">{_e(t)}</th>' if num else f"<th>{_e(t)}</th>" for t, num in head)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if num else f"<td>{c}</td>" for c, (_, num) in zip(row, head, strict=False)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _outcomes(r: RunReport) -> str:
    head = [("outcome", False), ("rows", True), ("calls", True), ("tokens in", True), ("tokens out", True),
            ("cost", True)]  # fmt: skip
    rows = [
        [_e(o.outcome), fmt.count(o.rows), fmt.count(o.calls), fmt.count(o.prompt_tokens),
         fmt.count(o.completion_tokens), _e(fmt.money(o.cost))]
        for o in r.by_outcome
    ]  # fmt: skip
    rows.append(["all", fmt.count(r.rows), fmt.count(r.calls), fmt.count(r.prompt_tokens),
                 fmt.count(r.completion_tokens), _e(fmt.money(r.cost))])  # fmt: skip
    return (
        '<section id="outcomes"><h2>Tokens and cost by outcome</h2>'
        + _table(head, rows, [""] * len(r.by_outcome) + ["total"])
        + '<p class="muted">ok: answered with at least one call; error: the stored outcome is an error; '
        "shared: answered without a call (de-duplication or the response cache).</p></section>"
    )


def _slowest(r: RunReport) -> str:
    if not r.slowest:
        return '<section id="slowest"><h2>Slowest rows</h2><p class="muted">No row has made a call yet.</p></section>'
    text_head = f"input: {r.text_column}" if r.text_column else "input"
    head = [("index", False), (text_head, False), ("latency", True), ("calls", True), ("429s", True), ("error", False)]
    rows = []
    for s in r.slowest:
        index = "" if s.index is None else _e(", ".join(map(str, s.index)) if isinstance(s.index, tuple) else s.index)
        text = f'<span title="{_e(fmt.truncate(s.text, 1000))}">{_e(fmt.truncate(s.text, 80))}</span>' if s.text else ""
        error = f'<span title="{_e(s.error)}">{_e(fmt.truncate(s.error, 60))}</span>' if s.error else ""
        rows.append([index, text, _e(fmt.seconds(s.latency)), fmt.count(s.attempts), fmt.count(s.rate_limited), error])
    note = (
        ""
        if r.slowest_from_dataset
        else '<p class="muted">No dataset file yet (no partition has committed): index and input show once one has.</p>'
    )
    return f'<section id="slowest"><h2>Slowest rows</h2>{note}{_table(head, rows)}</section>'


def _errors(r: RunReport) -> str:
    if not r.errors:
        return '<section id="errors"><h2>Errors</h2><p class="muted">No row failed.</p></section>'
    head = [("rows", True), ("error", False), ("variants", True)]
    rows = [
        [fmt.count(e.rows), f'<span title="{_e(e.message)}">{_e(fmt.truncate(e.message, 200))}</span>',
         fmt.count(e.variants) if e.variants > 1 else ""]
        for e in r.errors
    ]  # fmt: skip
    shown = sum(e.rows for e in r.errors)
    more = ""
    if shown < r.rows_failed:
        more = f'<p class="muted">{r.rows_failed - shown:,} more failed rows have other errors.</p>'
    return (
        '<section id="errors"><h2>Errors</h2><p class="muted">The most common errors; messages that differ only '
        f"in numbers count as one (variants: how many distinct messages).</p>{_table(head, rows)}{more}</section>"
    )


def render_html(report: RunReport) -> str:
    """The report as a self-contained HTML document."""
    r = report
    note = ""
    if r.in_progress:
        note = (
            f'<p class="note" id="in-progress">The run is still going, or was interrupted: {r.journal_chunks:,} '
            "journal files hold rows of partitions that have not committed. They are counted here; the "
            f"dataset files hold {r.dataset_rows:,} of the {r.rows:,} rows.</p>"
        )
    meta = (
        f'<p class="meta">checkpoint <code>{_e(r.url)}</code></p>'
        f'<p class="meta">model <code>{_e(r.model)}</code> &middot; column <code>{_e(r.column)}</code>'
        + (f" &middot; run created {_e(r.created)}" if r.created else "")
        + f" &middot; report generated {_e(fmt.clock(time.time()))}</p>"
        f'<pre class="prompt">{_e(r.prompt)}</pre>'
    )
    body = "".join(
        [
            f"<header><h1>dask-llm run report</h1>{meta}</header>",
            note,
            _figures(r),
            '<section id="charts"><h2>Charts</h2>',
            "".join(_chart(c) for c in charts(r)),
            "</section>",
            _outcomes(r),
            _slowest(r),
            _errors(r),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dask-llm run report: {_e(r.model)}, {r.rows:,} rows</title>"
        f"<style>{_CSS}</style></head>\n<body>{body}</body></html>\n"
    )
