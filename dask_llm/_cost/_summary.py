"""The run summary: what a run did and what it cost, from its output.

Everything is derived from the output columns, which is what makes it work
the same on every scheduler: counters kept in worker processes would die
with them, and would count a recomputed task twice, while the computed frame
is exactly what the run produced::

    result = dask_llm.enrich(ddf, ..., column="label").compute()   # or read back the checkpoint
    print(dask_llm.summarize(result, "label", wall_time=elapsed))

Per row, ``<column>_attempts`` counts calls (0: the answer was shared with an
identical request, came from the response cache, or the row was not called
because the spend cap was reached), ``<column>_rate_limited`` the 429s among
them (when the frame has that column), and the token columns what was billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from .._errors import ConfigError
from ._pricing import PriceTable, price_for
from ._spend import BUDGET_EXHAUSTED

__all__ = ["RunSummary", "summarize"]


@dataclass(frozen=True)
class RunSummary:
    """What a run did and what it cost.

    Attributes
    ----------
    rows, rows_ok, rows_failed : int
        Rows in the output; with an answer; with an error (including
        ``rows_not_called``).
    rows_not_called : int
        Rows left uncalled because the spend cap was reached.
    calls : int
        Chat-completion attempts, retries included.
    retries : int
        Attempts beyond the first of each row.
    rate_limited : int or None
        Attempts answered 429 (``None``: the frame does not say).
    calls_saved : int
        Rows answered without a call: by de-duplication or the response cache.
    prompt_tokens, completion_tokens : int
        Tokens billed.
    cost : float or None
        USD at the model's price; ``None`` when the price is unknown.
    wall_time : float or None
        Seconds the run took, when given.
    rpm, tpm : float or None
        Achieved calls and tokens per minute (needs ``wall_time``).
    """

    rows: int
    rows_ok: int
    rows_failed: int
    rows_not_called: int
    calls: int
    retries: int
    rate_limited: int | None
    calls_saved: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    model: str | None = None
    wall_time: float | None = None
    rpm: float | None = None
    tpm: float | None = None

    @classmethod
    def from_frame(
        cls,
        frame: Any,
        column: str,
        *,
        model: str | None = None,
        prices: PriceTable | None = None,
        wall_time: float | None = None,
        batch: bool = False,
    ) -> RunSummary:
        """Summarize the output of ``enrich(..., column=column)``; see :func:`summarize`."""
        names = {
            "error": f"{column}_error",
            "attempts": f"{column}_attempts",
            "prompt": f"{column}_prompt_tokens",
            "completion": f"{column}_completion_tokens",
            "rate_limited": f"{column}_rate_limited",
        }
        missing = [n for key, n in names.items() if key != "rate_limited" and n not in frame.columns]
        if missing:
            raise ConfigError(
                f"summarize(): the frame lacks {', '.join(map(repr, missing))}; pass the output of "
                f"enrich(..., column={column!r})"
            )
        wanted = [n for n in names.values() if n in frame.columns]
        part = frame[wanted]
        if not isinstance(part, pd.DataFrame):  # a dask frame: only these columns are computed
            part = part.compute()
        error = part[names["error"]]
        attempts = part[names["attempts"]].astype("int64")
        failed = error.notna()
        not_called = error.fillna("").str.startswith(BUDGET_EXHAUSTED) & failed
        called = attempts > 0
        prompt = int(part[names["prompt"]].fillna(0).sum())
        completion = int(part[names["completion"]].fillna(0).sum())
        rate_limited = int(part[names["rate_limited"]].sum()) if names["rate_limited"] in part.columns else None
        price = price_for(model, prices) if model is not None else None
        if price is not None and batch:
            price = price.for_batch()
        calls = int(attempts.sum())
        per_minute = 60.0 / wall_time if wall_time else None
        return cls(
            rows=len(part),
            rows_ok=int((~failed).sum()),
            rows_failed=int(failed.sum()),
            rows_not_called=int(not_called.sum()),
            calls=calls,
            retries=calls - int(called.sum()),
            rate_limited=rate_limited,
            calls_saved=int((~called & ~failed).sum()),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=None if price is None else price.cost(prompt, completion),
            model=model,
            wall_time=wall_time,
            rpm=None if per_minute is None else calls * per_minute,
            tpm=None if per_minute is None else (prompt + completion) * per_minute,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for the CLI's ``--json`` and benchmark files)."""
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"rows: {self.rows:,}  ok: {self.rows_ok:,}  failed: {self.rows_failed:,}"
            + (f" (not called, spend cap: {self.rows_not_called:,})" if self.rows_not_called else ""),
            f"calls: {self.calls:,}  retries: {self.retries:,}"
            + (f"  429s: {self.rate_limited:,}" if self.rate_limited is not None else "")
            + f"  saved by de-duplication/cache: {self.calls_saved:,}",
            f"tokens: {self.prompt_tokens:,} in, {self.completion_tokens:,} out"
            + (f"  cost: ${self.cost:,.4f}" if self.cost is not None else "  cost: unknown (no price)"),
        ]
        if self.wall_time is not None:
            lines.append(
                f"wall time: {self.wall_time:,.1f} s  achieved: {self.rpm or 0:,.0f} calls/min, "
                f"{self.tpm or 0:,.0f} tokens/min"
            )
        return "\n".join(lines)


def summarize(
    frame: Any,
    column: str,
    *,
    model: str | None = None,
    prices: Mapping[str, Any] | None = None,
    wall_time: float | None = None,
    batch: bool = False,
) -> RunSummary:
    """The :class:`RunSummary` of an enrichment's output.

    Parameters
    ----------
    frame : pandas.DataFrame or dask.dataframe.DataFrame
        The output of ``enrich(..., column=column)``: computed, or read back
        (e.g. ``dd.read_parquet(checkpoint)``). Only the metadata columns
        are read. Do not pass the lazy result of ``enrich()`` itself: that
        would run (and pay for) the enrichment again.
    column : str
        The ``column=`` given to ``enrich()``.
    model : str, optional
        Model, to price the tokens (see ``prices``); without it ``cost`` is ``None``.
    prices : mapping, optional
        Model -> :class:`~dask_llm.Price` (or ``(input, output)`` USD per
        million tokens), consulted before the built-in table.
    wall_time : float, optional
        Seconds the run took, for the achieved calls and tokens per minute.
    batch : bool
        The rows were answered through the Batch API: priced at its price
        (half the synchronous one).

    Returns
    -------
    RunSummary
    """
    return RunSummary.from_frame(frame, column, model=model, prices=prices, wall_time=wall_time, batch=batch)
