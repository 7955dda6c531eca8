"""What each chart of the report shows: its key, title, caption and colours,
shared by the inline SVG (:mod:`._svg`) and the PNG (:mod:`._png`) renderers,
so that both draw the same figures under the same names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import _format as fmt
from ._stats import RunReport

__all__ = ["CHARTS", "COLORS", "ChartSpec"]

#: One palette for both renderers (colour-blind safe, from seaborn's "muted").
COLORS = {
    "ok": "#4878d0",
    "error": "#d65f5f",
    "shared": "#8c8c8c",
    "rate_limited": "#ee854a",
    "prompt": "#4878d0",
    "completion": "#ee854a",
    "latency": "#6acc64",
    "marker": "#333333",
}


@dataclass(frozen=True)
class ChartSpec:
    key: str
    title: str
    caption: Callable[[RunReport], str]


def _throughput_caption(r: RunReport) -> str:
    return (
        f"Rows finished per {fmt.seconds(r.bucket_seconds)} since the first row finished "
        f"({fmt.clock(r.first_finish)}), answered and failed; below, the 429 answers of those rows. "
        "The ledger counts 429s per row, so each row's 429s are shown at the time the row finished, "
        "which is after they happened (by at most the row's latency)."
    )


def _latency_caption(r: RunReport) -> str:
    over = f" {r.latency.overflow:,} slower rows are in the last bar, beyond the axis." if r.latency.overflow else ""
    return (
        "Time from a row's first call to its answer, retries and 429 waits included, for the "
        f"{sum(r.latency.counts) + r.latency.overflow:,} rows that made a call. Dashed lines: "
        f"p50 {fmt.seconds(r.latency_p50)}, p95 {fmt.seconds(r.latency_p95)}, p99 {fmt.seconds(r.latency_p99)}." + over
    )


def _attempts_caption(r: RunReport) -> str:
    return (
        "Calls per row, retries included (429s are retried too, and count as calls). 0: the answer was "
        "shared with an identical request or came from the response cache"
        + (", or the row was not called because the spend cap was reached" if r.rows_not_called else "")
        + "."
    )


def _tokens_caption(r: RunReport) -> str:
    cost = (
        f"at {r.model}'s price (${r.price.input:g} in, ${r.price.output:g} out per million tokens)"
        if r.price is not None
        else f"unknown: no price for model {r.model!r}"
    )
    return f"Tokens billed by the outcome of the row; cost {cost}. Shared answers are not billed again."


CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec("throughput", "Rows finished and 429s over time", _throughput_caption),
    ChartSpec("latency", "Latency per row", _latency_caption),
    ChartSpec("attempts", "Attempts per row", _attempts_caption),
    ChartSpec("tokens", "Tokens by outcome", _tokens_caption),
)
