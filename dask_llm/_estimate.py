"""``estimate()``: rows, tokens, cost and wall time, before spending anything.

It renders every row's prompt (which reads the data, once) and counts
tokens offline, the same chars/4 way the runner reserves budget. No model is
called. What it cannot know it gives as a range:

- prompt tokens: chars/4 is a rule of thumb whose error depends on the text
  and the tokenizer: a word-level count is 0.57x (German) to 1.41x (code) of
  it in ``bench/results/accounting.md``, so the cost range spans 0.5x to
  1.5x of it;
- completion tokens: from ``completion_tokens=`` (an expected count, or a
  ``(low, high)`` pair per call), by default 1 to ``max_tokens`` (or 256);
- calls: identical requests within a partition are sent once (the
  de-duplication that is guaranteed), so the estimate counts distinct
  requests per partition; sharing across partitions can only lower it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import dask.dataframe as dd
import pandas as pd

from ._budget import Budget
from ._core._dedup import request_key
from ._core._prompt import Prompt, RenderError
from ._core._tokens import DEFAULT_COMPLETION_ESTIMATE, estimate_prompt_tokens
from ._cost._pricing import PriceTable, price_for
from ._errors import ConfigError

__all__ = ["Estimate", "estimate"]

#: How far chars/4 may be off a real tokenizer, either way (see the module doc).
PROMPT_LOW, PROMPT_HIGH = 0.5, 1.5

_STATS = ("rows", "calls", "prompt_tokens", "call_prompt_tokens")


@dataclass(frozen=True)
class Estimate:
    """What a run would take, computed without calling the model.

    Attributes
    ----------
    rows : int
        Rows in the input.
    calls : int
        Calls to make: distinct requests per partition (one attempt each;
        retries come on top).
    prompt_tokens : int
        Prompt tokens of every row (offline chars/4 estimate).
    call_prompt_tokens : int
        Prompt tokens of the calls made (after de-duplication).
    completion_tokens : tuple of int
        Low and high completion tokens of the calls.
    cost : tuple of float, or None
        Low and high USD; ``None`` when the model has no known price.
    wall_time : float
        Seconds the calls take at least, given the budget, ``threads`` and
        ``latency`` (retries and 429s excluded).
    bound_by : str
        What sets ``wall_time``: ``"concurrency"``, ``"rpm"`` or ``"tpm"``.
    """

    rows: int
    calls: int
    prompt_tokens: int
    call_prompt_tokens: int
    completion_tokens: tuple[int, int]
    cost: tuple[float, float] | None
    wall_time: float
    bound_by: str
    model: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        cost = (
            "unknown (no price for the model)" if self.cost is None else f"${self.cost[0]:,.4f} - ${self.cost[1]:,.4f}"
        )
        return (
            f"rows: {self.rows:,}  calls: {self.calls:,} (after de-duplication)\n"
            f"prompt tokens: ~{self.call_prompt_tokens:,}  completion tokens: "
            f"{self.completion_tokens[0]:,} - {self.completion_tokens[1]:,}\n"
            f"cost ({self.model}): {cost}\n"
            f"wall time: >= {self.wall_time:,.0f} s (bound by {self.bound_by})"
        )


def _partition_stats(frame: pd.DataFrame, prompt: Prompt, request_base: Mapping[str, Any]) -> pd.DataFrame:
    seen: set[str] = set()
    prompt_tokens = call_prompt_tokens = 0
    for messages in prompt.render(frame):
        if isinstance(messages, RenderError):
            continue  # not called: the row's error is its prompt
        tokens = estimate_prompt_tokens(messages)
        prompt_tokens += tokens
        key = request_key({**request_base, "messages": messages})
        if key not in seen:
            seen.add(key)
            call_prompt_tokens += tokens
    row = {"rows": len(frame), "calls": len(seen), "prompt_tokens": prompt_tokens,
           "call_prompt_tokens": call_prompt_tokens}  # fmt: skip
    return pd.DataFrame({k: [v] for k, v in row.items()}, dtype="int64")


def estimate(
    df: Any,
    prompt: str,
    model: str,
    *,
    system: str | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    completion_tokens: int | tuple[int, int] | None = None,
    prices: PriceTable | None = None,
    budget: Budget | None = None,
    threads: int = 16,
    latency: float = 1.0,
    batch: bool = False,
) -> Estimate:
    """Estimate a run of ``enrich(df, prompt, ..., model=model)`` without calling the model.

    Parameters
    ----------
    df : dask.dataframe.DataFrame or pandas.DataFrame
        The input; it is read (once) to render the prompts.
    prompt, system, model, max_tokens, params :
        As for :func:`~dask_llm.enrich` (``params`` matters only for
        de-duplication: it is part of each request).
    completion_tokens : int or (int, int), optional
        Completion tokens per call: expected, or low and high. Default:
        1 to ``max_tokens`` (or 256).
    prices : mapping, optional
        Model -> :class:`~dask_llm.Price`, before the built-in table.
    budget : Budget, optional
        The budget the run will have: its ``rpm``, ``tpm`` and
        ``max_concurrency`` bound the wall time.
    threads : int
        Threads per partition, as for ``enrich``.
    latency : float
        Seconds one call takes (measure a few; the simulator's default is 1).
    batch : bool
        The run will use the Batch API (``enrich(batch=...)``): priced at its
        price, half the synchronous one; the wall time is then the batch's
        turnaround (up to its completion window), not estimated here.

    Returns
    -------
    Estimate

    Raises
    ------
    TemplateError
        The prompt names a column the frame lacks.
    """
    if not isinstance(df, (pd.DataFrame, dd.DataFrame)):
        raise ConfigError(f"estimate() takes a pandas or dask DataFrame, not {type(df).__name__}")
    if not (isinstance(latency, (int, float)) and latency > 0 and math.isfinite(latency)):
        raise ConfigError(f"latency= must be a positive number of seconds, got {latency!r}")
    template = Prompt(prompt, system)
    template.check_columns(df.columns, df.dtypes)
    base: dict[str, Any] = {"model": model, **dict(params or {})}
    if max_tokens is not None:
        base["max_tokens"] = max_tokens
    if isinstance(df, pd.DataFrame):
        stats = _partition_stats(df, template, base)
        npartitions = 1
    else:
        meta = pd.DataFrame({k: pd.Series(dtype="int64") for k in _STATS})
        stats = df[list(template.columns)].map_partitions(_partition_stats, template, base, meta=meta).compute()
        npartitions = df.npartitions
    totals = {k: int(stats[k].sum()) for k in _STATS}
    calls = totals["calls"]

    cap = max_tokens or DEFAULT_COMPLETION_ESTIMATE
    if completion_tokens is None:
        per_call = (1, cap)
    elif isinstance(completion_tokens, int):
        per_call = (completion_tokens, completion_tokens)
    else:
        per_call = (int(completion_tokens[0]), int(completion_tokens[1]))
    completion = (per_call[0] * calls, per_call[1] * calls)

    price = price_for(model, prices)
    if price is not None and batch:
        price = price.for_batch()
    cost = None
    if price is not None:
        cost = (
            price.cost(totals["call_prompt_tokens"] * PROMPT_LOW, completion[0]),
            price.cost(totals["call_prompt_tokens"] * PROMPT_HIGH, completion[1]),
        )

    # The slowest of three floors: rounds of concurrent calls, the request
    # rate, and the token rate (counted as providers do: prompt + max_tokens).
    concurrency = threads * npartitions
    if budget is not None and budget.max_concurrency is not None:
        concurrency = min(concurrency, budget.max_concurrency)
    floors = {"concurrency": math.ceil(calls / max(concurrency, 1)) * latency if calls else 0.0}
    if budget is not None and budget.rpm:
        floors["rpm"] = calls / budget.rpm * 60.0
    if budget is not None and budget.tpm:
        floors["tpm"] = (totals["call_prompt_tokens"] + cap * calls) / budget.tpm * 60.0
    bound_by = max(floors, key=floors.__getitem__)
    return Estimate(
        rows=totals["rows"],
        calls=calls,
        prompt_tokens=totals["prompt_tokens"],
        call_prompt_tokens=totals["call_prompt_tokens"],
        completion_tokens=completion,
        cost=cost,
        wall_time=floors[bound_by],
        bound_by=bound_by,
        model=model,
    )
