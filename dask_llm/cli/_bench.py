"""``dask-llm bench``: how many calls in flight pay off against one endpoint.

Doubles the number of concurrent calls (1, 2, 4, ...) and, at each step,
makes a bounded batch of real chat completions with the ``openai`` client
(no retries, so every 429 is seen). It stops at the first step where

- the endpoint answers 429 (the account's rate limit is the ceiling), or
- throughput grew by less than ``--min-growth`` (default 15%) although
  concurrency doubled (the endpoint is saturated),

or when the call or time budget runs out. The answer is the last step that
still grew without a 429: beyond it, more workers or threads only queue.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._calls._client import Kind, classify, complete
from .._config import Endpoint
from .._errors import AuthenticationError, ConfigError, EndpointUnreachableError, ModelNotFoundError
from ._run import resolve_endpoint

__all__ = ["Step", "run", "sweep"]


@dataclass
class Step:
    """What one concurrency level measured."""

    concurrency: int
    calls: int = 0
    ok: int = 0
    rate_limited: int = 0
    errors: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Successful calls per second."""
        return self.ok / self.wall if self.wall > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


def measure(call: Callable[[], Kind | None], concurrency: int, calls: int, deadline: float) -> Step:
    """Make ``calls`` calls with ``concurrency`` threads (fewer if ``deadline``,
    a ``time.monotonic()`` value, passes first)."""
    step = Step(concurrency)
    lock = threading.Lock()
    remaining = iter(range(calls))

    def worker() -> None:
        while True:
            with lock:
                if next(remaining, None) is None or time.monotonic() > deadline:
                    return
            start = time.monotonic()
            kind = call()
            elapsed = time.monotonic() - start
            with lock:
                step.calls += 1
                if kind is None:
                    step.ok += 1
                    step.latencies.append(elapsed)
                elif kind is Kind.RATE_LIMITED:
                    step.rate_limited += 1
                else:
                    step.errors += 1

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="dask-llm-bench") as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    step.wall = time.monotonic() - start
    return step


@dataclass
class Sweep:
    steps: list[Step]
    best: Step | None
    reason: str
    #: Whether throughput stopped growing (or 429s came): ``best`` is then the plateau.
    plateau: bool = False
    #: The calls the sweep would have needed to measure the next level, when it ran out first.
    calls_for_next: int | None = None
    next_level: int | None = None


def sweep(
    call: Callable[[], Kind | None],
    max_concurrency: int = 256,
    max_calls: int = 2000,
    max_seconds: float = 120.0,
    calls_per_thread: int = 4,
    min_growth: float = 0.15,
    on_step: Callable[[Step], None] | None = None,
) -> Sweep:
    """Measure at 1, 2, 4, ... concurrent calls until throughput stops growing,
    429s appear, or the budget (``max_calls`` in all, ``max_seconds``) runs out."""
    deadline = time.monotonic() + max_seconds
    steps: list[Step] = []
    best: Step | None = None
    used = 0
    level = 1
    reason = f"reached --max-concurrency {max_concurrency}"
    while level <= max_concurrency:
        # At least a few rounds per thread, so the step is not one lucky round.
        n = max(10, calls_per_thread * level)
        if used + n > max_calls or time.monotonic() >= deadline:
            reason = "call or time budget used up (--max-calls, --max-seconds)"
            return Sweep(steps, best, reason, plateau=False, calls_for_next=used + n, next_level=level)
        step = measure(call, level, n, deadline)
        used += step.calls
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if not step.ok and not step.rate_limited:
            reason = f"no call succeeded at {level} in flight"
            break
        if step.rate_limited:
            reason = f"429 rate limits at {level} calls in flight"
            return Sweep(steps, best, reason, plateau=True)
        if best is not None and step.throughput < best.throughput * (1 + min_growth):
            reason = (
                f"throughput grew {step.throughput / best.throughput - 1:+.0%} from "
                f"{best.concurrency} to {level} calls in flight (less than {min_growth:.0%})"
            )
            return Sweep(steps, best, reason, plateau=True)
        if step.ok:
            best = step
        level *= 2
    return Sweep(steps, best, reason, plateau=False, next_level=level if level > max_concurrency else None)


def endpoint_call(endpoint: Endpoint, model: str, prompt: str, max_tokens: int | None) -> Callable[[], Kind | None]:
    """One chat completion per call; ``None`` on success, else the failure's kind.

    Raises the endpoint-wide errors at once: a wrong key or model would
    otherwise be measured as a fast endpoint.
    """
    request: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    where = endpoint.display_url

    def call() -> Kind | None:
        try:
            complete(endpoint, request)
        except Exception as exc:
            failure = classify(exc)
            if failure.kind is Kind.AUTH:
                raise AuthenticationError(f"{where} refused the request: {failure.message}") from None
            if failure.kind is Kind.NOT_FOUND:
                raise ModelNotFoundError(f"{where} has no model {model!r}: {failure.message}") from None
            return failure.kind
        return None

    return call


def format_table(steps: list[Step]) -> str:
    head = (
        f"{'in flight':>9} {'calls':>6} {'ok':>6} {'429':>5} {'errors':>6} "
        f"{'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'calls/s':>8}"
    )
    rows = [head]
    for s in steps:
        rows.append(
            f"{s.concurrency:>9} {s.calls:>6} {s.ok:>6} {s.rate_limited:>5} {s.errors:>6} "
            f"{s.percentile(50):>7.3f} {s.percentile(95):>7.3f} {s.percentile(99):>7.3f} {s.throughput:>8.1f}"
        )
    return "\n".join(rows)


def recommendation(result: Sweep) -> str:
    best = result.best
    if best is None:
        return "no step succeeded: check the endpoint (see the errors column)"
    n = best.concurrency
    split = f"--workers {max(1, n // 16)} --threads {min(n, 16)}" if n > 16 else f"--threads {n}"
    if not result.plateau:
        if result.calls_for_next is not None:
            more = f"; measure {result.next_level} with --max-calls {result.calls_for_next}"
        elif result.next_level is not None:
            more = f"; raise --max-concurrency to measure {result.next_level}"
        else:
            more = ""
        return (
            f"plateau not reached: throughput was still growing at {n} calls in flight "
            f"({best.throughput:,.1f} calls/s){more}. At least {n} calls in flight pay: "
            f"dask-llm run ... {split}"
        )
    return (
        f"use about {n} calls in flight ({best.throughput:,.1f} calls/s, p50 {best.percentile(50):.2f} s): "
        f"dask-llm run ... --max-concurrency {n} {split}"
    )


def plot(steps: list[Step], path: str) -> None:
    """Throughput and latency percentiles against concurrency, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    x = [s.concurrency for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [s.throughput for s in steps], marker="o")
    left.set(xscale="log", xlabel="calls in flight", ylabel="successful calls/s", title="throughput")
    for q in (50, 95, 99):
        right.plot(x, [s.percentile(q) for s in steps], marker="o", label=f"p{q}")
    right.set(xscale="log", xlabel="calls in flight", ylabel="seconds", title="latency")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    for name in ("max_concurrency", "max_calls", "max_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'dask-llm[plot]'") from None
    endpoint = resolve_endpoint(args)
    call = endpoint_call(endpoint, args.model, args.prompt, args.max_tokens)
    print(f"dask-llm bench: {args.model} at {endpoint.display_url}", flush=True)
    print(format_table([]), flush=True)

    def show(step: Step) -> None:
        print(format_table([step]).splitlines()[1], flush=True)

    result = sweep(call, args.max_concurrency, args.max_calls, args.max_seconds, min_growth=args.min_growth,
                   on_step=show)  # fmt: skip
    if result.steps and all(s.ok == 0 and s.errors == s.calls for s in result.steps):
        raise EndpointUnreachableError(f"every call to {endpoint.display_url} failed; is the server up?")
    print(f"stopped: {result.reason}")
    print(recommendation(result))
    if args.plot:
        plot(result.steps, args.plot)
        print(f"plot: {args.plot}")
    sys.stdout.flush()
    return 0
