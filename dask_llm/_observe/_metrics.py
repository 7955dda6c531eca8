"""Prometheus metrics of dask-llm's jobs, on the scheduler's own ``/metrics``.

distributed serves ``/metrics`` from prometheus_client's global registry,
so one collector registered there (once per process, over every live
coordinator plugin) adds dask-llm's families beside dask's. The values are
read from each plugin's :class:`~._board.JobBoard` at scrape time, so they
count each row and call once, as the board does. Without prometheus_client
(the ``[dashboard]`` extra) nothing is registered, and distributed's
``/metrics`` says Prometheus is not available, as it does without us.

=====================================  =========================================
``dask_llm_rows_total``                rows finished, ``status``: ``ok``, ``error``,
                                       ``restored`` (from the checkpoint, no call)
``dask_llm_requests_total``            calls, ``outcome``: ``ok`` (answered a row),
                                       ``rate_limited`` (429), ``error`` (retried
                                       or failed)
``dask_llm_rate_limited_total``        calls answered 429
``dask_llm_tokens_total``              tokens billed, ``kind``: ``prompt``, ``completion``
``dask_llm_cost_usd_total``            cost at list price (jobs with a known price)
``dask_llm_calls_in_flight``           gauge: calls waiting for an answer now
``dask_llm_budget_limit``              gauge: a budget's ``rpm``, ``tpm``, ``max_concurrency``
``dask_llm_budget_share``              gauge: each holder's (worker process's) share
=====================================  =========================================

Every job series carries ``job`` (the job's output column) and ``run`` (its
id, telling apart two runs of one column). Prometheus names its own scrape
label ``job`` too: with the default ``honor_labels: false`` it keeps the
scrape job's and renames ours ``exported_job``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

__all__ = ["register", "unregister"]

_plugins: weakref.WeakSet[Any] = weakref.WeakSet()
_registered = False
_lock = threading.Lock()

_JOB = ["job", "run"]


class _Collector:
    def describe(self) -> list[Any]:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily as Counter
        from prometheus_client.core import GaugeMetricFamily as Gauge

        rows = Counter("dask_llm_rows", "Rows finished, by status", labels=[*_JOB, "status"])
        requests = Counter("dask_llm_requests", "Calls to the model, by outcome", labels=[*_JOB, "outcome"])
        limited = Counter("dask_llm_rate_limited", "Calls answered 429", labels=_JOB)
        tokens = Counter("dask_llm_tokens", "Tokens billed", labels=[*_JOB, "kind"])
        cost = Counter("dask_llm_cost_usd", "Cost at list price, USD", labels=_JOB)
        in_flight = Gauge("dask_llm_calls_in_flight", "Calls waiting for an answer now", labels=_JOB)
        limit = Gauge("dask_llm_budget_limit", "A budget's limit in force", labels=["budget", "kind"])
        holder = ["budget", "holder", "kind"]
        share = Gauge("dask_llm_budget_share", "A worker process's share of a budget", labels=holder)
        from ._page import status

        for plugin in list(_plugins):
            # The page's figures: one reading of the board and the budgets serves both views.
            state = status(plugin)
            for j in state["jobs"]:
                labels = [str(j["name"]), str(j["run"])]
                rows.add_metric([*labels, "ok"], j["called"] - j["errors"])
                rows.add_metric([*labels, "error"], j["errors"])
                rows.add_metric([*labels, "restored"], j["restored"])
                requests.add_metric([*labels, "ok"], j["calls_ok"])
                requests.add_metric([*labels, "rate_limited"], j["rate_limited"])
                requests.add_metric([*labels, "error"], max(j["calls"] - j["calls_ok"] - j["rate_limited"], 0))
                limited.add_metric(labels, j["rate_limited"])
                tokens.add_metric([*labels, "prompt"], j["prompt_tokens"])
                tokens.add_metric([*labels, "completion"], j["completion_tokens"])
                if j["cost"] is not None:
                    cost.add_metric(labels, j["cost"])
                in_flight.add_metric(labels, j["in_flight"])
            for b in state["budgets"]:
                for kind in ("rpm", "tpm", "max_concurrency"):
                    if b[kind] is not None:
                        limit.add_metric([b["name"], kind], float(b[kind]))
                for holder, h in b["holders"].items():
                    for kind, value in h.items():
                        if value is not None:
                            share.add_metric([b["name"], holder, kind], float(value))
        yield from (rows, requests, limited, tokens, cost, in_flight, limit, share)


def register(plugin: Any) -> bool:
    """Show ``plugin``'s jobs on this process's ``/metrics``; False without prometheus_client."""
    global _registered
    try:
        import prometheus_client
    except ImportError:
        return False
    with _lock:
        _plugins.add(plugin)
        if not _registered:
            prometheus_client.REGISTRY.register(_Collector())
            _registered = True
    return True


def unregister(plugin: Any) -> None:
    _plugins.discard(plugin)
