"""The scheduler's view of the jobs running on it: what the page and ``/metrics`` show.

Fed by the events the cluster already carries: each process's progress
batches (``dask-llm-progress-*`` topics, published by
:mod:`dask_llm._run._progress`) and one announcement per job from the
client that built it (:data:`JOBS_TOPIC`: name, model, price, budget, spend
cap). A job's counts are a :class:`~dask_llm._run._progress.Tally`, so they
count each row once whatever retries, resumes or restarted tasks happen,
exactly as ``dask-llm run``'s progress line does.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._run._progress import PROGRESS_PREFIX, Snapshot, Tally

__all__ = ["HISTORY_SECONDS", "JOBS_TOPIC", "MAX_JOBS", "JobBoard", "JobView"]

#: Topic of the announcements: one per job, from the client that built it.
JOBS_TOPIC = "dask-llm-jobs"
#: Jobs kept at most (the oldest ended ones go first): bounded memory and scrapes.
MAX_JOBS = 50
#: Seconds of history kept for the rows/s chart.
HISTORY_SECONDS = 600.0
#: Seconds between two history samples.
SAMPLE_EVERY = 2.0


@dataclass
class JobView:
    """One job as the scheduler sees it."""

    topic: str
    info: dict[str, Any] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    #: (time, rows done, 429s), one sample every SAMPLE_EVERY seconds at most.
    history: collections.deque[tuple[float, int, int]] = field(default_factory=collections.deque)
    #: Calls in flight, by process (the latest count each one sent).
    in_flight: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.topic.removeprefix(PROGRESS_PREFIX)[:8])

    def add(self, batch: Mapping[str, Any], now: float) -> None:
        self.tally.add(batch)
        for holder, n in (batch.get("in_flight") or {}).items():
            self.in_flight[str(holder)] = int(n)
        self.updated = now
        self._sample(now)

    def _sample(self, now: float) -> None:
        history = self.history
        if history and now - history[-1][0] < SAMPLE_EVERY:
            return
        snap = self.tally.snapshot()
        history.append((now, snap.done, snap.rate_limited))
        while history and history[0][0] < now - HISTORY_SECONDS:
            history.popleft()

    def total(self, snap: Snapshot) -> tuple[int | None, bool]:
        """The job's rows in all, and whether that is an estimate: as the
        command line announced it, else the sizes the partitions reported,
        scaled to every partition while some have not started."""
        announced = self.info.get("total")
        if announced is not None:
            return int(announced), False
        partitions = self.info.get("partitions")
        if not snap.parts_seen or not partitions:
            return None, False
        if snap.parts_seen >= int(partitions):
            return snap.rows_seen, False
        return round(snap.rows_seen / snap.parts_seen * int(partitions)), True

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self.info.get("price")
        if not price:
            return None
        return (prompt_tokens * float(price[0]) + completion_tokens * float(price[1])) / 1e6

    def summary(self, now: float) -> dict[str, Any]:
        """The job's figures, JSON-ready."""
        snap = self.tally.snapshot()
        rates = [
            {"t": round(t1 - now, 1), "rows_per_s": (r1 - r0) / (t1 - t0), "rate_limited": q1 - q0}
            for (t0, r0, q0), (t1, r1, q1) in zip(self.history, list(self.history)[1:], strict=False)
            if t1 > t0
        ]
        total, estimated = self.total(snap)
        return {
            "topic": self.topic,
            "run": self.topic.removeprefix(PROGRESS_PREFIX)[:8],
            "name": self.name,
            "model": self.info.get("model"),
            "budget": self.info.get("budget"),
            "spend_cap": self.info.get("spend_cap"),
            "total": total,
            "total_estimated": estimated,
            "partitions": self.info.get("partitions"),
            "rows": snap.done,
            "called": snap.rows,
            "restored": snap.restored,
            "errors": snap.errors,
            "calls": snap.calls,
            "rate_limited": snap.rate_limited,
            "prompt_tokens": snap.prompt_tokens,
            "completion_tokens": snap.completion_tokens,
            "cost": self.cost(snap.prompt_tokens, snap.completion_tokens),
            "in_flight": sum(self.in_flight.values()),
            "calls_ok": snap.calls_ok,
            "batches": {
                "created": snap.batches,
                "ended": snap.batches_done,
                "requests": snap.batch_requests,
                "answered": snap.batch_completed,
            },
            # The latest pace; until there are two samples, the pace since the start.
            "rows_per_s": rates[-1]["rows_per_s"] if rates else snap.rows / max(now - self.started, 1.0),
            "history": rates,
            "done": not estimated and total is not None and snap.done >= total,
            "started": self.started,
            "updated": self.updated,
        }


class JobBoard:
    """Every job seen on one scheduler, newest last (see the module docstring)."""

    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self.jobs: dict[str, JobView] = {}
        self.max_jobs = max_jobs

    def event(self, topic: str, msg: Any, now: float | None = None) -> None:
        """Take one event of the cluster; those of other topics are ignored."""
        now = time.time() if now is None else now
        if topic == JOBS_TOPIC and isinstance(msg, Mapping) and isinstance(msg.get("topic"), str):
            self._job(msg["topic"], now).info.update(msg)
        elif topic.startswith(PROGRESS_PREFIX) and isinstance(msg, Mapping):
            self._job(topic, now).add(msg, now)

    def _job(self, topic: str, now: float) -> JobView:
        job = self.jobs.get(topic)
        if job is None:
            job = self.jobs[topic] = JobView(topic, started=now, updated=now)
            if len(self.jobs) > self.max_jobs:
                # The job updated least recently goes (a finished one, normally).
                oldest = min(self.jobs.values(), key=lambda j: j.updated)
                del self.jobs[oldest.topic]
        return job

    def summaries(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        return [job.summary(now) for job in sorted(self.jobs.values(), key=lambda j: j.started, reverse=True)]
