"""Making a job visible on the cluster it runs on, when enrich() builds it."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._cost._pricing import price_for
from .._run import Job, ProgressChannel
from ._board import JOBS_TOPIC

__all__ = ["announce"]


def announce(job: Job, partitions: int | None = None, total: int | None = None) -> Job:
    """On a ``distributed`` cluster: give ``job`` a progress channel (its
    partitions then report rows, at most twice a second per process), start
    the coordinator plugin so the dashboard page exists before the first
    task, and tell the scheduler what the job is. Elsewhere ``job`` as it is.
    """
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):  # no distributed, or no client: the local schedulers
        return job
    if client.asynchronous:
        return job
    if job.progress is None:
        job = dataclasses.replace(job, progress=ProgressChannel.new())
    assert job.progress is not None
    price = job.price or price_for(job.model)
    info: dict[str, Any] = {
        "topic": job.progress.topic,
        "name": job.outputs.column,
        "model": job.model,
        "price": [price.input, price.output] if price is not None else None,
        "partitions": partitions,
        "budget": job.budget.name if job.budget is not None else None,
        "spend_cap": job.spend_cap.name if job.spend_cap is not None else None,
        "batch": job.batch is not None,
    }
    if total is not None:
        info["total"] = total
    try:
        from .._coordination._plugin import PLUGIN_NAME, CoordinatorPlugin

        client.register_plugin(CoordinatorPlugin(), name=PLUGIN_NAME)  # idempotent: the first one stays
        client.log_event(JOBS_TOPIC, info)
    except Exception:  # the page is a view: never a reason for enrich() to fail
        pass
    return job
