"""``Budget``: one request budget for a whole cluster.

Provider limits are per account, not per worker, so the budget is held in
one place and shared out::

    client process      coordinator                         worker process
    --------------      -----------                         --------------
    Budget(...)  -----> Allocator (_alloc), hosted by  <--  ProcessBudget (_process):
    (travels in           the job's coordinator:            a keeper renews a share;
     the task graph,      RPM/TPM shares, cool-down,        the Reservoir (_reservoir)
     by value)            adaptive rate,                    paces requests locally;
                          concurrency slots                 GrantedSlots (_leases)
                                                            caps threads at work

This module holds the value object; :func:`~._process.limiter_for` picks
the process's limiter for a budget and a coordinator.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass, field

from .._config import Endpoint
from .._errors import ConfigError

__all__ = ["Budget", "adaptive_budget"]


@dataclass(frozen=True)
class Budget:
    """A request budget shared by every call of one or more enrichments,
    wherever they run: at most so many calls in flight, requests per minute
    and tokens per minute.

    >>> budget = Budget(max_concurrency=64, rpm=3000, tpm=400_000)
    >>> out = dask_llm.enrich(ddf, ..., budget=budget)      # doctest: +SKIP

    Parameters
    ----------
    max_concurrency : int, optional
        Most calls in flight across the cluster (strictly: runner threads
        holding a slot; a thread holds its slot for a whole run of rows).
        ``None``: no cap besides ``threads`` per partition.
    rpm : float, optional
        Requests per minute across the cluster, counting every attempt.
    tpm : float, optional
        Tokens per minute across the cluster, counted as the provider does:
        the prompt plus ``max_tokens`` when the request sets it. Reserved
        before each call from an offline estimate, reconciled with the
        response's ``usage``.
    name : str, optional
        The budget's identity on the cluster. Enrichments given budgets with
        the same name share one budget (their limits must then agree); by
        default every ``Budget`` object gets a fresh name, so passing the
        same object to two enrichments shares it and creating two keeps them
        apart.
    burst : float
        Seconds' worth of the rate that may be spent at once (after an idle
        spell); the cluster's requests otherwise arrive evenly paced. Keep it
        at or below the provider's own burst allowance.
    adaptive : bool, optional
        Find the request rate by itself: no rate limit until 429s come
        back for at least a tenth of a worker's recent requests (fewer are
        stray: they cost a pause, not speed), then a little under the rate
        the provider was answering; +10% every 2 s while no such 429 comes
        back and the budget is what holds the job back; down again on 429s.
        Default: adaptive exactly when neither ``rpm`` nor ``tpm`` is given.
        Limits announced by the provider's ``x-ratelimit-limit-*`` headers
        are adopted in either mode (the lower of them and ``rpm``/``tpm``).

    Notes
    -----
    A 429 anywhere pauses every worker of the budget for the provider's
    ``Retry-After``. A worker that dies takes its share with it: the
    scheduler reassigns its rate at once and its concurrency slots 5 s later
    (its calls may still be running at the provider). Without a
    ``distributed`` client the same budget is enforced in-process.

    Raises
    ------
    ConfigError
        A limit that is not positive, or an empty name.
    """

    max_concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    name: str = field(default_factory=lambda: f"dask-llm-budget-{uuid.uuid4().hex[:16]}")
    burst: float = 1.0
    adaptive: bool | None = None

    def __post_init__(self) -> None:
        mc = self.max_concurrency
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
            raise ConfigError(f"Budget.max_concurrency must be a positive integer or None, got {mc!r}")
        for what in ("rpm", "tpm"):
            value = getattr(self, what)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ConfigError(f"Budget.{what} must be a positive number or None, got {value!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Budget.name must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.burst, (int, float)) and math.isfinite(self.burst) and self.burst > 0):
            raise ConfigError(f"Budget.burst must be a positive number of seconds, got {self.burst!r}")
        if self.adaptive is None:
            object.__setattr__(self, "adaptive", self.rpm is None and self.tpm is None)

    def limits(self) -> dict[str, object]:
        """The settings every holder of this budget's name must agree on."""
        return {
            "max_concurrency": self.max_concurrency,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "burst": self.burst,
            "adaptive": self.adaptive,
        }


def adaptive_budget(endpoint: Endpoint, model: str) -> Budget:
    """The default budget of a job: adaptive, and named after the endpoint and
    the model, so that every enrichment of that model there (in this process
    or on this cluster) shares what was learned about its limits.
    """
    where = endpoint.azure_endpoint or endpoint.base_url or "https://api.openai.com/v1"
    digest = hashlib.sha256(f"{where}\x1e{endpoint.api_version}\x1e{model}".encode()).hexdigest()[:16]
    return Budget(name=f"dask-llm-adaptive-{digest}", adaptive=True)
