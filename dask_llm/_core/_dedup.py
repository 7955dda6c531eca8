"""De-duplication: an identical request is sent once and its answer shared.

Two requests are identical when their model, messages and parameters are
(:func:`request_key`, a hash of the canonical JSON). Sharing happens at two
scopes, and only there:

- within a partition, always: :func:`plan` picks one *leader* row per
  distinct request; only leaders are called, and each follower gets its
  leader's outcome (success or error) with ``attempts`` and tokens 0, since
  it cost nothing;
- across the partitions that run in one process, while a run lasts:
  :class:`InFlight` lets a leader wait for an identical request already in
  flight in another partition of the same process, and remembers the last
  successes. Only successes cross partitions: an error there may have been
  a transient one.

Identical requests in partitions that run in *different* processes are each
sent once per process; the optional response cache
(:class:`~dask_llm._cost._cache.ResponseCache`) is what shares answers between
processes and runs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["DedupPlan", "InFlight", "call_once", "in_flight", "plan", "request_key", "reused"]

T = TypeVar("T")

#: Successful answers :class:`InFlight` remembers per process (least recently
#: used dropped first). Small answers: ~10 MB at 1 KB each.
REMEMBER = 10_000


def request_key(request: Mapping[str, Any], scope: str = "") -> str:
    """Content address of a request: SHA-256 of its canonical JSON (sorted
    keys, compact), prefixed by ``scope`` (e.g. the endpoint) when given."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{scope}\x1e{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class DedupPlan:
    """Which rows to call, and who shares whose answer.

    Attributes
    ----------
    leaders : tuple of int
        Rows to call, one per distinct request, in first-seen order.
    followers : mapping of int to tuple of int
        Leader row -> the other rows that send the same request.
    keys : mapping of int to str
        Leader row -> its :func:`request_key`.
    """

    leaders: tuple[int, ...]
    followers: Mapping[int, tuple[int, ...]]
    keys: Mapping[int, str]

    @property
    def saved(self) -> int:
        """Calls this plan does not make."""
        return sum(len(rows) for rows in self.followers.values())


def plan(requests: Sequence[Mapping[str, Any]], rows: Sequence[int], scope: str = "") -> DedupPlan:
    """Group ``rows`` (indices into ``requests``) by identical request."""
    leader_of: dict[str, int] = {}
    followers: dict[int, list[int]] = {}
    keys: dict[int, str] = {}
    for i in rows:
        key = request_key(requests[i], scope)
        lead = leader_of.setdefault(key, i)
        if lead == i:
            keys[i] = key
        else:
            followers.setdefault(lead, []).append(i)
    return DedupPlan(tuple(leader_of.values()), {k: tuple(v) for k, v in followers.items()}, keys)


class InFlight(Generic[T]):
    """Requests in flight and recent successes in this process, by key.

    A caller :meth:`claim` s a key before calling: the first one becomes the
    owner and must :meth:`finish` it (with ``None`` when it gave up); the
    others get a future to wait on, or at once the remembered result.
    """

    def __init__(self, remember: int = REMEMBER) -> None:
        self.remember = remember
        self._lock = threading.Lock()
        self._pending: dict[str, Future[T | None]] = {}
        self._done: collections.OrderedDict[str, T] = collections.OrderedDict()
        self.shared = 0  # answers handed out without a call, for tests and stats

    def claim(self, key: str) -> tuple[bool, Future[T | None]]:
        """``(True, future)`` when the caller owns ``key`` and must call;
        ``(False, future)`` when someone else's answer is (or will be) in
        ``future``."""
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                done: Future[T | None] = Future()
                done.set_result(self._done[key])
                return False, done
            pending = self._pending.get(key)
            if pending is not None:
                return False, pending
            mine: Future[T | None] = Future()
            self._pending[key] = mine
            return True, mine

    def finish(self, key: str, result: T | None, ok: bool) -> None:
        """Publish the owner's result; only an ``ok`` one is remembered
        (waiters get the others too, and decide themselves)."""
        with self._lock:
            future = self._pending.pop(key, None)
            if ok and result is not None and self.remember > 0:
                self._done[key] = result
                self._done.move_to_end(key)
                while len(self._done) > self.remember:
                    self._done.popitem(last=False)
        if future is not None:
            future.set_result(result)

    def clear(self) -> None:
        with self._lock:
            self._done.clear()


_process_in_flight: InFlight[Any] = InFlight()


def in_flight() -> InFlight[Any]:
    """This process's map, shared by every partition and enrichment here."""
    return _process_in_flight


def reused(outcome: T) -> T:
    """``outcome`` as handed to a row that did not make the call: the same
    answer or error, no attempts, nothing billed."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(outcome)}  # type: ignore[arg-type]
    zero = {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "latency": 0.0, "rate_limited": 0}
    return dataclasses.replace(outcome, **{k: v for k, v in zero.items() if k in names})  # type: ignore[type-var]


#: Seconds between two looks at the stop event while waiting for another
#: partition's identical call.
WAIT_POLL = 0.2


def call_once(
    key: str,
    call: Callable[[], T],
    *,
    ok: Callable[[T], bool],
    share: str | None,
    cache: Any = None,
    from_cache: Callable[[Any], T] | None = None,
    to_cache: Callable[[T], Any] | None = None,
    stop: threading.Event | None = None,
) -> T:
    """The outcome of the request ``key``: from the response cache, from an
    identical call of another partition of this process, or from ``call()``,
    in that order. A successful call's answer is published to waiting
    partitions and written to the cache.

    ``share`` scopes the sharing between partitions (the run's id, so that
    a later run in the same process calls again: only the response cache
    spans runs); ``None`` turns it off.
    """
    if cache is not None and from_cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return from_cache(hit)
    flight = in_flight()
    owner = False
    flight_key = f"{share}:{key}"
    if share is not None:
        owner, future = flight.claim(flight_key)
        if not owner:
            while not future.done():
                if stop is not None and stop.is_set():
                    break
                try:
                    future.result(timeout=WAIT_POLL)
                except Exception:  # TimeoutError: look at the stop event again
                    pass
            result = future.result() if future.done() else None
            if result is not None and ok(result):
                return reused(result)
            # The other call failed or gave up: make this one ourselves.
    result = None
    try:
        result = call()
    finally:
        if owner:
            flight.finish(flight_key, result, ok(result) if result is not None else False)
    if cache is not None and to_cache is not None and ok(result):
        cache.put(key, to_cache(result))
    return result
