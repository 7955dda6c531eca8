"""``BatchAPI``: how rows are sent through a provider's Batch API instead of one call each."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from .._errors import ConfigError

__all__ = ["BatchAPI"]

_WINDOW = re.compile(r"[1-9][0-9]*h")


@dataclass(frozen=True)
class BatchAPI:
    """Send the rows as OpenAI (or Azure OpenAI) Batch API jobs: half the price,
    answers within the completion window instead of seconds.

    A frozen dataclass, like :class:`~dask_llm.Endpoint`: hashable and
    picklable, so it travels inside the task graph.

    Parameters
    ----------
    completion_window : str
        The window asked for; OpenAI and Azure accept only ``"24h"`` today.
    poll_interval : float
        Seconds between two looks at a running batch (and at the batches
        holding enqueued tokens while a new one waits for room).
    max_requests_per_file : int
        Most lines in one input file: OpenAI allows 50,000 (Azure 100,000).
    max_bytes_per_file : int
        Most bytes in one input file: 200 MB at OpenAI and Azure.
    retry : {"batch", "sync"}
        What becomes of lines that failed transiently (5xx or 429 lines, lines
        the batch did not run because it expired or was cancelled):
        ``"batch"`` sends them again in a follow-up batch; ``"sync"`` hands
        them back so the caller retries them with ordinary calls.
    max_follow_ups : int
        Follow-up batches at most with ``retry="batch"``; lines still failing
        after them keep their error.
    enqueued_token_limit : int, optional
        The provider's limit of prompt tokens enqueued per model (see your
        organization's limits page). A file is not created while this
        process's own unfinished batches of the model and it would exceed
        it. ``None``: learn it from the first batch refused with
        ``token_limit_exceeded``.
    transfer_timeout : float
        Seconds one upload or one download of a results file may take in all.

    Raises
    ------
    ConfigError
        A value is out of range.
    """

    completion_window: str = "24h"
    poll_interval: float = 30.0
    max_requests_per_file: int = 50_000
    max_bytes_per_file: int = 200 * 1024 * 1024
    retry: Literal["batch", "sync"] = "batch"
    max_follow_ups: int = 2
    enqueued_token_limit: int | None = None
    transfer_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not (isinstance(self.completion_window, str) and _WINDOW.fullmatch(self.completion_window)):
            raise ConfigError(f"BatchAPI.completion_window must look like '24h', got {self.completion_window!r}")
        for name in ("poll_interval", "transfer_timeout"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise ConfigError(f"BatchAPI.{name} must be a positive number of seconds, got {value!r}")
        for name in ("max_requests_per_file", "max_bytes_per_file"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"BatchAPI.{name} must be a positive integer, got {value!r}")
        if self.retry not in ("batch", "sync"):
            raise ConfigError(f"BatchAPI.retry must be 'batch' or 'sync', got {self.retry!r}")
        if not _is_int(self.max_follow_ups) or self.max_follow_ups < 0:
            raise ConfigError(f"BatchAPI.max_follow_ups must be an integer >= 0, got {self.max_follow_ups!r}")
        limit = self.enqueued_token_limit
        if limit is not None and (not _is_int(limit) or limit < 1):
            raise ConfigError(f"BatchAPI.enqueued_token_limit must be a positive integer or None, got {limit!r}")


def _is_int(value: object) -> bool:
    # bool is an int to Python, never to a user who wrote True.
    return isinstance(value, int) and not isinstance(value, bool)
