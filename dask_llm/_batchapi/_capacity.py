"""The enqueued-token ledger: room for one more batch of a model, per process.

Providers cap the prompt tokens enqueued per model (batches validating or in
progress). A batch that would pass the cap is not queued: it *fails*, code
``token_limit_exceeded``, and must be created again later. So before
creating a batch, the process waits until its own unfinished batches of the
model leave room for it; the ledger is what it counts them in.

- The ledger counts **estimated** tokens (chars/4). The limit is in the
  provider's tokens; a batch that completes with ``usage`` gives the ratio
  of the two, and every comparison is made in provider tokens.
- The limit is the one configured, else the one **learned** from the first
  ``token_limit_exceeded`` (its message says ``Limit: 90,000 enqueued
  tokens``; failing that, what was queued when it was refused).
- A batch counts from its reservation until it is seen ended: through
  ``finalizing``, to be safe.
- Only this process's batches are known. Other processes' batches show up as
  refusals, which :func:`~dask_llm._batchapi.wait` handles by sending again.
- With nothing of its own queued a batch is always let through: only the
  provider knows whether it fits, and waiting on nothing would wait forever.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .._config import Endpoint
from ._calls import Stop, pause

__all__ = [
    "calibrate",
    "file_cap",
    "learn",
    "limit_for",
    "parse_limit",
    "pending",
    "release",
    "rename",
    "reserve",
    "track",
]

# Ratio of provider to estimated tokens kept within these bounds: one odd batch must not stall the rest.
_RATIO_BOUNDS = (0.25, 4.0)
_LIMIT = re.compile(r"Limit:\s*([\d,_.]+)\s*(?:enqueued\s+)?tokens", re.IGNORECASE)
_RESERVING = "reserving-"


@dataclass
class _Pool:
    """One (endpoint, model): batch id (or reservation) -> (estimated tokens, tokens queued before it)."""

    pending: dict[str, tuple[int, int]] = field(default_factory=dict)
    learned: int | None = None
    ratio: float = 1.0

    def queued(self) -> int:
        return sum(tokens for tokens, _ in self.pending.values())


_pools: dict[tuple[str | None, ...], _Pool] = {}
_lock = threading.Lock()


def _pool(endpoint: Endpoint, model: str) -> _Pool:
    # The limit belongs to the account and model, not to one Endpoint object (timeouts may differ).
    key = (endpoint.azure_endpoint or endpoint.base_url, endpoint.organization, endpoint.project, model)
    pool = _pools.get(key)
    if pool is None:
        pool = _pools[key] = _Pool()
    return pool


def parse_limit(message: str) -> int | None:
    """The limit a ``token_limit_exceeded`` message states (``"Limit: 90,000 enqueued tokens"``), if any."""
    found = _LIMIT.search(message or "")
    if not found:
        return None
    digits = re.sub(r"[,_.]", "", found.group(1))
    return int(digits) if digits.isdigit() and int(digits) > 0 else None


def limit_for(endpoint: Endpoint, model: str, configured: int | None) -> int | None:
    """The enqueued-token limit in force for ``model``: configured, else learned, else ``None``."""
    if configured is not None:
        return configured
    with _lock:
        return _pool(endpoint, model).learned


def file_cap(endpoint: Endpoint, model: str, configured: int | None) -> int | None:
    """Most *estimated* tokens one file of ``model`` may hold so that it fits the limit alone."""
    limit = limit_for(endpoint, model, configured)
    if limit is None:
        return None
    with _lock:
        ratio = _pool(endpoint, model).ratio
    return max(1, int(limit / ratio))


def reserve(
    endpoint: Endpoint,
    model: str,
    tokens: int,
    configured: int | None,
    *,
    refresh: Callable[[list[str]], None],
    interval: float,
    should_stop: Stop,
) -> str | None:
    """Wait until a batch of ``tokens`` (estimated) fits, then hold room for it.

    Parameters
    ----------
    refresh : callable
        Given the ids of the pending batches, looks at them and releases
        those that ended; called every ``interval`` seconds while waiting.
    should_stop : callable
        Ends the wait.

    Returns
    -------
    str or None
        A reservation key, to :func:`rename` to the batch id once created or
        :func:`release` if creating fails; ``None`` if the run is stopping.
    """
    while True:
        with _lock:
            pool = _pool(endpoint, model)
            limit = configured if configured is not None else pool.learned
            queued = pool.queued()
            if limit is None or not pool.pending or (queued + tokens) * pool.ratio <= limit:
                key = f"{_RESERVING}{uuid.uuid4().hex}"
                pool.pending[key] = (tokens, queued)
                return key
            # Reservations of other threads are about to be created: nothing to look at yet.
            ids = [k for k in pool.pending if not k.startswith(_RESERVING)]
        refresh(ids)
        if pause(interval, should_stop):
            return None


def rename(endpoint: Endpoint, model: str, key: str, batch_id: str) -> None:
    """The reservation ``key`` is now batch ``batch_id``."""
    with _lock:
        pool = _pool(endpoint, model)
        entry = pool.pending.pop(key, None)
        if entry is not None:
            pool.pending[batch_id] = entry


def track(endpoint: Endpoint, model: str, batch_id: str, tokens: int) -> None:
    """Count an unfinished batch this process did not create here (found again, or polled from a checkpoint)."""
    with _lock:
        pool = _pool(endpoint, model)
        if batch_id not in pool.pending:
            pool.pending[batch_id] = (tokens, 0)


def release(endpoint: Endpoint, model: str, key: str) -> tuple[int, int] | None:
    """Forget a batch (it ended) or a reservation; its (tokens, tokens queued before it), if it was held."""
    with _lock:
        return _pool(endpoint, model).pending.pop(key, None)


def pending(endpoint: Endpoint, model: str) -> dict[str, int]:
    """Estimated tokens of each batch (or reservation) held for ``model``."""
    with _lock:
        return {key: tokens for key, (tokens, _) in _pool(endpoint, model).pending.items()}


def learn(endpoint: Endpoint, model: str, tokens: int, queued_before: int, message: str) -> int:
    """Learn the limit from a ``token_limit_exceeded`` refusal; return it (in provider tokens).

    The message's own figure is taken when it has one. Otherwise the batch
    did not fit behind what was queued, so the limit is taken to be at most
    that much (and at least the batch itself, or nothing would ever pass).
    """
    stated = parse_limit(message)
    with _lock:
        pool = _pool(endpoint, model)
        if stated is not None:
            pool.learned = stated
        else:
            guess = int(max(tokens, queued_before) * pool.ratio)
            pool.learned = guess if pool.learned is None else min(pool.learned, guess)
        return pool.learned


def calibrate(endpoint: Endpoint, model: str, estimated: int, billed: int) -> None:
    """Record how many provider tokens ``estimated`` tokens turned out to be."""
    if estimated <= 0 or billed <= 0:
        return
    low, high = _RATIO_BOUNDS
    with _lock:
        _pool(endpoint, model).ratio = min(high, max(low, billed / estimated))


def learned(endpoint: Endpoint, model: str) -> tuple[int | None, float]:
    """The learned limit and the provider/estimate ratio for ``model`` (for tests and messages)."""
    with _lock:
        pool = _pool(endpoint, model)
        return pool.learned, pool.ratio
