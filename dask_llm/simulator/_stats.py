"""Counters the simulator keeps about the traffic it served."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Traffic counters, updated on the event loop with a dict increment or a list append.

    Only API requests (chat completions, models, unknown URLs) are counted; the
    simulator's own routes (``/sim/*``, ``/health``) are not, so that polling
    the stats does not change them.
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

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-able copy of the counters.

        Returns
        -------
        dict
            ``requests`` (API requests received), ``by_status`` ({"200": n, ...}, responses written),
            ``successes``, ``prompt_tokens`` and ``completion_tokens`` (over
            successes), ``in_flight``, ``max_in_flight``, ``rate_limited`` (429s,
            real or spurious), ``faults`` ({"fail"|"rate_limit"|"hang"|"malformed": n},
            injected faults drawn), ``disconnected`` (answers not written because
            the client had gone, e.g. after a timeout), ``success_by_prompt``
            ({last user message: successes}) and ``success_times``
            ([[seconds since start or reset at arrival, tokens charged], ...]).
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
        }
