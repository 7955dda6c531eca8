"""A coordinator reached over the network: any process that is not a Dask
worker (a Spark executor's Python worker) talks to a coordinator's
scheduler through one ``distributed.Client`` per process.

The client is created on first use and kept for the life of the process
(Spark reuses its Python workers across tasks and jobs), so the connection
costs ~50 ms once per process. Requests are RPCs to the coordinator's
handlers; pushes arrive on the client's stream (the plugin pushes to the
client that leased); events go out with ``client.log_event``; the driver's
request to stop a run arrives as an event on :data:`STOP_TOPIC`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError
from ._protocol import OPS, STOP_TOPIC

__all__ = ["ClientCoordinator", "connect"]

#: Seconds to connect to the coordinator before giving up.
CONNECT_TIMEOUT = 20.0


class ClientCoordinator:
    """A :class:`~._protocol.Coordinator` at ``address``, through a ``distributed.Client``."""

    def __init__(self, address: str) -> None:
        from distributed import Client

        self.address = address
        try:
            _probe(address)
            self.client = Client(address, set_as_default=False, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the dask-llm coordinator at {address}: {type(exc).__name__}: {exc}. "
                f"Every executor must reach the driver on that address and port (see the README's "
                f"'Spark' section); no call is made without it"
            ) from None
        self.holder = str(self.client.id)
        self.client.subscribe_topic(STOP_TOPIC, _on_stop)

    @property
    def alive(self) -> bool:
        return self.client.status == "running"

    def call(self, op: str, **fields: Any) -> Any:
        if op not in OPS:
            raise ValueError(f"unknown dask-llm request {op!r}")
        method = getattr(self.client.scheduler, f"dask_llm_{op}")
        return self.client.sync(method, holder=self.holder, **fields)

    def subscribe(self, push: str, handler: Callable[..., None]) -> None:
        # A client stream's handlers live in a private dict; pushes with no
        # handler would only be logged, so the handler goes in first.
        self.client._stream_handlers.setdefault(push, lambda **msg: handler(**msg))

    def publish(self, topic: str, message: dict[str, Any]) -> None:
        try:
            self.client.log_event(topic, message)
        except Exception:  # progress must never fail a paid row
            pass


def _probe(address: str) -> None:
    """Fail at once on a refused connection: ``distributed`` retries one
    until its timeout, which says nothing more 20 s later."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "") or parts.hostname is None or parts.port is None:
        return  # tls://, inproc://...: let distributed connect
    with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT):
        pass


#: Called with a run's topic when the driver asks to stop it (the runner
#: registers its ``cancel`` here: coordination knows nothing of runs).
stop_handlers: list[Callable[[str], None]] = []


def _on_stop(event: Any) -> None:
    _, message = event
    topic = message.get("topic") if isinstance(message, dict) else None
    if topic:
        for handler in stop_handlers:
            handler(topic)


_clients: dict[str, ClientCoordinator] = {}
_lock = threading.Lock()


def connect(address: str) -> ClientCoordinator:
    """This process's coordinator at ``address`` (connected once, kept)."""
    with _lock:
        coordinator = _clients.get(address)
        if coordinator is None or not coordinator.alive:
            coordinator = _clients[address] = ClientCoordinator(address)
        return coordinator
