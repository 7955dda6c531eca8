"""Counters the simulator keeps about the traffic it served."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Traffic counters, updated on the event loop with a dict increment or a list append.

    Only API requests (chat completions, models, files, batches, unknown URLs)
    are counted; the simulator's own routes (``/sim/*``, ``/health``) are not,
    so that polling the stats does not change them. A batch line answered 200
    counts as a success (of its prompt) like a synchronous answer, so that
    ``success_by_prompt`` shows a row paid for twice across both paths.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter except `in_flight`, which requests still running will decrement."""
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.successes = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.max_in_flight = self.in_flight
        self.rate_limited = 0
        self.faults: Counter[str] = Counter()
        self.disconnected = 0
        self.success_by_prompt: Counter[str] = Counter()
        self.success_times: list[list[float]] = []
        self.batch: Counter[str] = Counter()

    def arrive(self) -> None:
        """Count an API request as soon as it is read."""
        self.requests += 1

    def begin(self) -> None:
        """Count a chat completion request that starts being served."""
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def end(self) -> None:
        """Count a chat completion request that is done, whatever its outcome."""
        self.in_flight -= 1

    def response(self, status: int) -> None:
        """Count a response written to the client."""
        self.by_status[str(status)] += 1
        if status == 429:
            self.rate_limited += 1

    def success(self, prompt: str, prompt_tokens: int, completion_tokens: int, at: float, charged: int) -> None:
        """Count a well-formed 200 answer to the prompt `prompt`, which arrived `at` seconds after the start."""
        self.successes += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.success_by_prompt[prompt] += 1
        self.success_times.append([at, charged])

    def batch_line(self, prompt: str | None, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Count a batch line answered: a success of `prompt` if given, otherwise a failed line."""
        self.batch["lines"] += 1
        if prompt is None:
            self.batch["line_failures"] += 1
            return
        self.successes += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.success_by_prompt[prompt] += 1

    def snapshot(self, batch_statuses: dict[str, int] | None = None) -> dict[str, Any]:
        """Return a JSON-able copy of the counters.

        Parameters
        ----------
        batch_statuses : dict of str to int, optional
            The current batches by status, reported as ``batch["by_status"]``.

        Returns
        -------
        dict
            ``requests`` (API requests received), ``by_status`` ({"200": n, ...}, responses written),
            ``successes``, ``prompt_tokens`` and ``completion_tokens`` (over
            successes, batch lines answered 200 included), ``in_flight``,
            ``max_in_flight``, ``rate_limited`` (429s, real or spurious),
            ``faults`` ({"fail"|"rate_limit"|"hang"|"malformed"|"drip"|"html"|
            "empty"|"empty_object"|"huge"|"invalid_json"|"always_429": n},
            injected faults drawn), ``disconnected`` (answers not written because
            the client had gone, e.g. after a timeout or during a drip-fed body),
            ``success_by_prompt`` ({last user message: successes}, batch lines
            included), ``success_times`` ([[seconds since start or reset at
            arrival, tokens charged], ...], synchronous answers only) and
            ``batch`` ({"files": uploads, "batches": batches created,
            "by_status": {status: batches}, "lines": batch lines answered,
            "line_failures": those answered with an error}).
        """
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "successes": self.successes,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
            "disconnected": self.disconnected,
            "success_by_prompt": dict(self.success_by_prompt),
            "success_times": [list(pair) for pair in self.success_times],
            "batch": {
                "files": self.batch["files"],
                "batches": self.batch["batches"],
                "by_status": dict(batch_statuses or {}),
                "lines": self.batch["lines"],
                "line_failures": self.batch["line_failures"],
            },
        }
