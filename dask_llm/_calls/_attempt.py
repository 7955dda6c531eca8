"""One attempt, bounded in time and size, and stoppable from outside.

The ``openai`` client's ``timeout`` bounds each socket operation, not the
request: a server that sends its headers and then one byte a second keeps a
thread forever, and nothing can stop a thread blocked in ``recv``. So every
client dask-llm builds runs its connections through a :class:`GuardedBackend`
(an ``httpcore2`` network backend wrapping the default one), and every
attempt runs inside :func:`bounded`, which tells the backend, for the calling
thread:

- the attempt's **deadline**: connect, send and every read are given at
  most the time left, so ``timeout`` bounds the whole attempt, body included;
- a **size cap** on what the attempt receives (an answer of hundreds of MB
  is a broken endpoint, not an answer);
- a **stop event**: a blocked read wakes every :data:`SLICE` seconds to look
  at it, so Ctrl+C or an endpoint error stops calls in flight promptly.

A read that waits in slices consumes nothing while it waits, so slicing
changes no byte on the wire. When the guard cuts an attempt short it
records why (:attr:`Attempt.reason`); the ``openai`` client reports it as a
timeout or connection error, and :func:`~dask_llm._calls._client.classify` reads
the reason to tell the row's error apart.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore2

__all__ = ["SLICE", "Attempt", "GuardedBackend", "bounded", "current", "guard_client"]

#: Longest a read blocks before it looks at the stop event again.
SLICE = 0.25

_local = threading.local()


@dataclass
class Attempt:
    """What bounds the attempt the calling thread is making."""

    deadline: float
    max_bytes: int
    stop: threading.Event | None = None
    received: int = 0
    #: Why the guard cut the attempt short: "deadline", "too large" or "stopped".
    reason: str | None = None
    _started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            self.reason = "stopped"
            raise httpcore2.ReadError("dask-llm: the run is stopping")
        if self.left() <= 0:
            self.reason = "deadline"
            raise httpcore2.ReadTimeout("dask-llm: the attempt's time is up")


def current() -> Attempt | None:
    """The attempt the calling thread is making, if any."""
    return getattr(_local, "attempt", None)


@contextlib.contextmanager
def bounded(timeout: float, max_bytes: int, stop: threading.Event | None = None) -> Iterator[Attempt]:
    """Run the body as one attempt: at most ``timeout`` seconds in all and
    ``max_bytes`` received, stopped early when ``stop`` is set."""
    attempt = Attempt(deadline=time.monotonic() + timeout, max_bytes=max_bytes, stop=stop)
    previous = current()
    _local.attempt = attempt
    try:
        yield attempt
    finally:
        _local.attempt = previous


def _limit(timeout: float | None, attempt: Attempt) -> float:
    left = attempt.left()
    return left if timeout is None else min(timeout, left)


class GuardedStream(httpcore2.NetworkStream):
    """A network stream whose reads and writes obey the calling thread's attempt."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        attempt = current()
        if attempt is None:
            return self._inner.read(max_bytes, timeout)
        read_until = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            attempt.check()
            wait = min(read_until - time.monotonic(), attempt.left(), SLICE)
            if read_until - time.monotonic() <= 0:
                raise httpcore2.ReadTimeout("timed out")
            try:
                data = self._inner.read(max_bytes, max(wait, 0.001))
            except httpcore2.ReadTimeout:
                continue  # a slice elapsed, nothing was consumed: look again
            attempt.received += len(data)
            if attempt.received > attempt.max_bytes:
                attempt.reason = "too large"
                raise httpcore2.ReadError(f"dask-llm: the answer exceeds {attempt.max_bytes:,} bytes")
            return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        attempt = current()
        if attempt is not None:
            attempt.check()
            timeout = _limit(timeout, attempt)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        attempt = current()
        if attempt is not None:
            timeout = _limit(timeout, attempt)
        return GuardedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore2.NetworkBackend):
    """The default network backend, with every stream guarded."""

    def __init__(self, inner: httpcore2.NetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        attempt = current()
        if attempt is not None:
            attempt.check()
            timeout = _limit(timeout, attempt)
        return GuardedStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        return GuardedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guard_client(http_client: Any) -> bool:
    """Route every connection of an ``httpx2.Client`` (its proxies included)
    through a :class:`GuardedBackend`; whether it could.

    httpx2 takes no network backend as an argument, so the pools its
    transports built are given one; a transport of another shape is left as
    it is (the attempt is then bounded per read only, as by ``openai`` itself).
    """
    transports = [getattr(http_client, "_transport", None), *getattr(http_client, "_mounts", {}).values()]
    guarded = True
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if pool is None:
            continue
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            guarded = False
            continue
        if not isinstance(backend, GuardedBackend):
            pool._network_backend = GuardedBackend(backend)
    return guarded
