"""What a job is, and what becomes of one row: the values that travel to the workers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._batchapi import BatchAPI
from .._budget import Budget
from .._checkpoint import Checkpoint
from .._config import Endpoint, RetryPolicy
from .._core._prompt import Prompt
from .._core._schema import OutputColumns
from .._cost._cache import ResponseCache
from .._cost._pricing import Price
from .._cost._spend import BUDGET_EXHAUSTED, SpendCap
from ._progress import ProgressChannel

__all__ = ["Job", "Outcome"]


@dataclass(frozen=True, eq=False)
class Job:
    """Everything a partition needs; travels inside the task graph."""

    prompt: Prompt
    outputs: OutputColumns
    model: str
    endpoint: Endpoint
    params: Mapping[str, Any] = field(default_factory=dict)
    threads: int = 16
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_error: Literal["store", "raise"] = "store"
    checkpoint: Checkpoint | None = None
    budget: Budget | None = None
    #: Where partitions report finished rows (``dask-llm run``'s progress).
    progress: ProgressChannel | None = None
    #: Run-wide spend cap, and the model's price it is counted in.
    spend_cap: SpendCap | None = None
    price: Price | None = None
    #: Identical requests sent once; ``run_id`` scopes sharing between partitions.
    dedup: bool = True
    run_id: str = ""
    cache: ResponseCache | None = None
    #: Columns that identify a row for the checkpoint (default: the index;
    #: ``()``: none, the request content alone, for frames without an index).
    key: tuple[str, ...] | None = None
    #: Address of the job's coordinator when the engine has no scheduler of
    #: its own (Spark); ``None``: the one of the thread running the batch.
    coordinator: str | None = None
    #: The OpenAI Batch API instead of synchronous calls (``enrich(batch=...)``).
    batch: BatchAPI | None = None
    #: Fingerprint of what decides the answers (prompt, model, parameters,
    #: columns): names the run's batches at the provider.
    run_spec: str = ""

    def __dask_tokenize__(self) -> tuple[str, str]:
        # Every enrich() call gets a fresh run_id: a token of its own, cheap,
        # and deterministic even when output= holds a class defined in __main__.
        return ("dask-llm-job", self.run_id)

    def request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, **self.params}


@dataclass(frozen=True)
class Outcome:
    """What became of one row."""

    text: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 0
    latency: float = math.nan
    could_not_connect: bool = False
    rate_limited: int = 0
    #: Wall-clock time (``time.time()``) when the outcome was known.
    finished_at: float = math.nan

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def not_called(self) -> bool:
        """Left uncalled by the spend cap: neither journaled nor committed,
        so that a later run with a higher cap calls it."""
        return self.error is not None and self.error.startswith(BUDGET_EXHAUSTED)
