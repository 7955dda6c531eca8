"""The numbers of a run report, computed from the checkpoint's ledger.

Every row is counted once, by identity, from its best ledger record (see
:mod:`dask_llm._checkpoint._ledger`), so the numbers are the same whatever
partitioning, scheduler or sequence of resumed runs produced them. A row is
in exactly one of three outcomes:

- ``ok``: answered, with at least one call;
- ``error``: its stored outcome is an error (including rows left uncalled by
  the spend cap, ``rows_not_called``);
- ``shared``: answered without a call (``attempts == 0``): the answer of an
  identical request (de-duplication) or of the response cache.

Time series use each row's ``finished_at``; a row's 429s are attributed to
the time it finished (the ledger keeps a count per row, not when each 429
came), which puts them late by at most the row's latency.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._cost._pricing import Price, PriceTable, price_for
from .._cost._spend import BUDGET_EXHAUSTED
from . import _format as fmt
from ._data import CheckpointData

__all__ = [
    "OUTCOMES",
    "Bucket",
    "ErrorCount",
    "Histogram",
    "OutcomeTotals",
    "RunReport",
    "SlowRow",
    "compute",
    "nice_step",
    "time_step",
]

OUTCOMES = ("ok", "error", "shared")
#: Most buckets on the throughput chart.
MAX_BUCKETS = 60
#: Bars of the latency histogram.
LATENCY_BINS = 30
#: Time steps (seconds) for buckets and time-axis ticks.
_TIME_STEPS = (
    0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


@dataclass(frozen=True)
class Bucket:
    """Rows that finished in ``[start, start + width)`` seconds after the first finish."""

    start: float
    rows: int
    errors: int
    rate_limited: int


@dataclass(frozen=True)
class Histogram:
    """Counts of values in ``[edges[i], edges[i + 1])``; ``overflow`` counts those above ``edges[-1]``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    overflow: int = 0


@dataclass(frozen=True)
class OutcomeTotals:
    outcome: str
    rows: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


@dataclass(frozen=True)
class SlowRow:
    index: Any
    text: str | None
    latency: float
    attempts: int
    rate_limited: int
    error: str | None


@dataclass(frozen=True)
class ErrorCount:
    """Rows whose error reads like ``message`` (numbers aside): ``variants``
    distinct messages, of which ``message`` is the most common."""

    message: str
    rows: int
    variants: int


@dataclass(frozen=True)
class RunReport:
    """What a checkpointed run did, when, how fast and at what cost.

    Counts are rows of the ledger (each row identity once, committed or
    journaled). ``cost`` is ``None`` when the model has no known price.
    ``html`` and ``png`` are the files written by :func:`dask_llm._report.report`.
    """

    url: str
    model: str
    prompt: str
    column: str
    created: str | None
    rows: int
    rows_ok: int
    rows_failed: int
    rows_shared: int
    rows_not_called: int
    calls: int
    retries: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int
    price: Price | None
    cost: float | None
    first_finish: float | None
    last_finish: float | None
    wall_span: float | None
    rows_per_minute: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    bucket_seconds: float
    throughput: tuple[Bucket, ...]
    latency: Histogram
    attempts: Mapping[int, int]
    by_outcome: tuple[OutcomeTotals, ...]
    slowest: tuple[SlowRow, ...]
    slowest_from_dataset: bool
    text_column: str | None
    errors: tuple[ErrorCount, ...]
    dataset_files: int
    dataset_rows: int
    journal_chunks: int
    html: str | None = None
    png: tuple[str, ...] = field(default_factory=tuple)

    @property
    def in_progress(self) -> bool:
        """Rows are only in journals: partitions are running, or the run was interrupted."""
        return self.journal_chunks > 0

    def outcome(self, name: str) -> OutcomeTotals:
        return next(o for o in self.by_outcome if o.outcome == name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        out = asdict(self)
        out["attempts"] = {str(k): v for k, v in self.attempts.items()}
        out["price"] = None if self.price is None else [self.price.input, self.price.output]
        out["slowest"] = [{**s, "index": _jsonable(s["index"])} for s in out["slowest"]]
        return out

    def __str__(self) -> str:
        lines = [
            f"checkpoint: {self.url}",
            f"model: {self.model}  column: {self.column}",
            f"rows: {self.rows:,}  ok: {self.rows_ok:,}  failed: {self.rows_failed:,}  "
            f"shared (no call): {self.rows_shared:,}",
            f"calls: {self.calls:,}  retries: {self.retries:,}  429s: {self.rate_limited:,}",
            f"tokens: {self.prompt_tokens:,} in, {self.completion_tokens:,} out  cost: "
            + (fmt.money(self.cost) if self.cost is not None else f"unknown (no price for {self.model!r})"),
            f"wall span: {fmt.seconds(self.wall_span)}  achieved: "
            + (f"{self.rows_per_minute:,.1f} rows/min" if self.rows_per_minute is not None else "-"),
            f"latency p50/p95/p99: {fmt.seconds(self.latency_p50)} / {fmt.seconds(self.latency_p95)} / "
            f"{fmt.seconds(self.latency_p99)}",
        ]
        if self.in_progress:
            lines.append(f"in progress or interrupted: {self.journal_chunks:,} journal files not committed yet")
        if self.html:
            lines.append(f"html: {self.html}")
        if self.png:
            lines.append(f"png: {', '.join(self.png)}")
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------ computing


def time_step(span: float, most: int) -> float:
    """The smallest of the usual time steps that cuts ``span`` seconds into at most ``most`` parts."""
    fits = [s for s in _TIME_STEPS if span / s <= most]
    return fits[0] if fits else _TIME_STEPS[-1] * math.ceil(span / _TIME_STEPS[-1] / most)


def nice_step(raw: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at least ``raw``: a step for bins and ticks."""
    if raw <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))


def _outcomes(records: pd.DataFrame) -> np.ndarray:
    failed = records["error"].notna().to_numpy()
    attempts = records["attempts"].fillna(0).to_numpy(dtype="int64")
    return np.where(failed, "error", np.where(attempts > 0, "ok", "shared"))


def _throughput(finished: np.ndarray, failed: np.ndarray, limited: np.ndarray) -> tuple[float, tuple[Bucket, ...]]:
    ok = np.isfinite(finished)
    finished, failed, limited = finished[ok], failed[ok], limited[ok]
    if not len(finished):
        return 1.0, ()
    span = float(finished.max() - finished.min())
    step = time_step(span, MAX_BUCKETS) if span > 0 else 1.0
    slot = np.minimum(((finished - finished.min()) // step).astype("int64"), int(span // step))
    n = int(slot.max()) + 1
    rows = np.bincount(slot, minlength=n)
    errors = np.bincount(slot, weights=failed.astype("float64"), minlength=n)
    r429 = np.bincount(slot, weights=limited.astype("float64"), minlength=n)
    return step, tuple(Bucket(i * step, int(rows[i]), int(errors[i]), int(r429[i])) for i in range(n))


def _histogram(latency: np.ndarray, p99: float | None) -> Histogram:
    if not len(latency) or p99 is None:
        return Histogram((0.0, 1.0), (0,))
    # Up to twice the p99, so that a few rows that waited out 429s for a
    # minute do not squeeze every other row into the first bar.
    reach = min(float(latency.max()), 2 * p99) or 1.0
    width = nice_step(reach / LATENCY_BINS)
    n = max(1, math.ceil(reach / width - 1e-9))
    top = n * width
    edges = np.arange(n + 1) * width
    counts, _ = np.histogram(np.minimum(latency, top), bins=edges)
    overflow = int((latency > top).sum())
    counts[-1] -= overflow
    return Histogram(tuple(float(e) for e in edges), tuple(int(c) for c in counts), overflow)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _errors(messages: pd.Series, most: int = 10) -> tuple[ErrorCount, ...]:
    """The most common errors; messages that differ only in numbers (token
    counts, request ids, waits) count as one."""
    groups: dict[str, Counter[str]] = {}
    for text, n in messages.dropna().astype(str).value_counts().items():  # each distinct message once
        groups.setdefault(_NUMBER.sub("#", str(text)), Counter())[str(text)] += int(n)
    ranked = sorted(groups.values(), key=lambda c: (-sum(c.values()), c.most_common(1)[0][0]))
    return tuple(
        ErrorCount(message=c.most_common(1)[0][0], rows=sum(c.values()), variants=len(c)) for c in ranked[:most]
    )


def _slow_rows(frame: pd.DataFrame) -> tuple[SlowRow, ...]:
    out = []
    for row in frame.itertuples(index=False):
        error = row.error if isinstance(row.error, str) else None
        text = None if row.text is None or (isinstance(row.text, float) and math.isnan(row.text)) else str(row.text)
        attempts, limited = int(row.attempts or 0), int(row.rate_limited or 0)
        out.append(SlowRow(row.index, text, float(row.latency), attempts, limited, error))
    return tuple(out)


def compute(data: CheckpointData, prices: PriceTable | None = None) -> RunReport:
    """The :class:`RunReport` of a checkpoint read by :func:`~._data.read_checkpoint`."""
    records = data.records
    outcome = _outcomes(records)
    attempts = records["attempts"].fillna(0).to_numpy(dtype="int64")
    prompt = records["prompt_tokens"].fillna(0).to_numpy(dtype="int64")
    completion = records["completion_tokens"].fillna(0).to_numpy(dtype="int64")
    limited = records["rate_limited"].fillna(0).to_numpy(dtype="int64")
    latency = records["latency"].astype("float64").to_numpy(na_value=np.nan)
    finished = records["finished_at"].astype("float64").to_numpy(na_value=np.nan)
    failed = outcome == "error"
    price = price_for(data.model, prices) if data.model else None

    def cost(p: int, c: int) -> float | None:
        return None if price is None else price.cost(p, c)

    by_outcome = tuple(
        OutcomeTotals(
            outcome=name,
            rows=int((outcome == name).sum()),
            calls=int(attempts[outcome == name].sum()),
            prompt_tokens=int(prompt[outcome == name].sum()),
            completion_tokens=int(completion[outcome == name].sum()),
            cost=cost(int(prompt[outcome == name].sum()), int(completion[outcome == name].sum())),
        )
        for name in OUTCOMES
    )
    called = latency[(attempts > 0) & np.isfinite(latency)]
    p50, p95, p99 = (float(np.percentile(called, q)) if len(called) else None for q in (50, 95, 99))
    times = finished[np.isfinite(finished)]
    first = float(times.min()) if len(times) else None
    last = float(times.max()) if len(times) else None
    span = None if first is None or last is None else last - first
    step, buckets = _throughput(finished, failed, limited)
    values, counts = np.unique(attempts, return_counts=True)
    calls = int(attempts.sum())
    errors = records["error"]
    not_called = errors.fillna("").astype(str).str.startswith(BUDGET_EXHAUSTED) & errors.notna()
    return RunReport(
        url=data.url,
        model=data.model,
        prompt=str(data.manifest.get("prompt", "")),
        column=data.column,
        created=data.manifest.get("created"),
        rows=len(records),
        rows_ok=int((outcome == "ok").sum()),
        rows_failed=int(failed.sum()),
        rows_shared=int((outcome == "shared").sum()),
        rows_not_called=int(not_called.sum()),
        calls=calls,
        retries=calls - int((attempts > 0).sum()),
        rate_limited=int(limited.sum()),
        prompt_tokens=int(prompt.sum()),
        completion_tokens=int(completion.sum()),
        price=price,
        cost=cost(int(prompt.sum()), int(completion.sum())),
        first_finish=first,
        last_finish=last,
        wall_span=span,
        rows_per_minute=len(times) / span * 60 if span else None,
        latency_p50=p50,
        latency_p95=p95,
        latency_p99=p99,
        bucket_seconds=step,
        throughput=buckets,
        latency=_histogram(called, p99),
        attempts={int(v): int(c) for v, c in zip(values, counts, strict=False)},
        by_outcome=by_outcome,
        slowest=_slow_rows(data.slowest),
        slowest_from_dataset=data.dataset_files > 0,
        text_column=data.text_column,
        errors=_errors(errors),
        dataset_files=data.dataset_files,
        dataset_rows=data.dataset_rows,
        journal_chunks=data.journal_chunks,
    )
