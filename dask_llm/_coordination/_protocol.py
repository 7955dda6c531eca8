"""The coordinator protocol: how a process reaches the one place per job.

What must be one per job, whatever the engine (a request budget, a spend
ledger, progress counts), lives in a :class:`~._state.CoordinatorState`
hosted in one place: the Dask scheduler (:mod:`._plugin`), this process
(:mod:`._local`), or any server a non-Dask engine starts. Processes that run
partitions reach it through a :class:`Coordinator`, which is only a
transport: three methods, and the messages below.

Requests (``call(op, **fields)``, answered):

=====================  ===========================================================
``budget_lease``       renew this holder's share of a budget: ``name``,
                       ``limits``, ``demand``, ``learned``, ``saturated``,
                       ``observed``, ``in_use``, ``applied`` -> a grant (dict)
``budget_release``     the holder went idle: ``name`` -> the last grant ``seq`` issued
``budget_penalize``    a 429 answered the holder: ``name``, ``seconds``, ``observed``,
                       ``sent`` (rates per minute)
``budget_stats``       ``name`` -> limits, holders, message counts
``spend_reserve``      reserve one attempt's estimate: cap fields, ``cost``,
                       ``tokens`` -> ``"go"`` / ``"wait"`` / ``"exhausted"``
``spend_settle``       replace a reservation by what was billed
``spend_stats``        ``name`` -> the ledger
``partition_lease``    ``key`` (a partition's content key): ``True`` when this
                       holder may run it, ``False`` while another holder does
``partition_release``  ``key``: done with it
``dataset_keep``       ``epoch``, ``name`` (an earlier run's dataset file), ``part``,
                       ``size``, ``positions`` (int32 bytes, or all): the partition
                       stands on those rows of the file -> which it keeps (bytes)
``dataset_close``      ``epoch``, ``name``, ``part``, ``size``, ``into``: the partition
                       takes the file away, keeping its kept rows in ``into`` ->
                       their positions (int32 bytes), ``None`` if another closes it
``dataset_done``       ``epoch``, ``part``, ``total``: the partition committed ->
                       ``True`` for the one that completes the run (it finishes it)
=====================  ===========================================================

Pushes (coordinator to holder, ``subscribe(PUSH_GRANT, handler)``): a
revised grant (``name``, ``grant``) when another holder joined, left or hit
a 429. Events (``publish(topic, message)``, not answered): progress batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .._budget._alloc import PUSH_GRANT

__all__ = ["OPS", "PUSH_GRANT", "STOP_TOPIC", "Coordinator"]

#: The requests a coordinator answers.
OPS = (
    "budget_lease",
    "budget_release",
    "budget_penalize",
    "budget_stats",
    "spend_reserve",
    "spend_settle",
    "spend_stats",
    "partition_lease",
    "partition_release",
    "dataset_keep",
    "dataset_close",
    "dataset_done",
)
#: The event topic on which a driver asks every process to stop a run.
STOP_TOPIC = "dask-llm-stop"


class Coordinator(Protocol):
    """A process's handle on its job's coordinator."""

    #: This process's identity for the coordinator (a worker address, ...).
    holder: str

    def call(self, op: str, **fields: Any) -> Any:
        """Send request ``op`` (one of :data:`OPS`) and return the answer."""
        ...

    def subscribe(self, push: str, handler: Callable[..., None]) -> None:
        """Have ``handler(**fields)`` called for every push ``push`` to this holder."""
        ...

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Send an event (progress counts); never raises."""
        ...
