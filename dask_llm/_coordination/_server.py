"""A coordinator of its own: a ``distributed.Scheduler`` hosting the
:class:`~._plugin.CoordinatorPlugin`, started in this process.

Engines without a Dask scheduler (Spark) start one next to the driver, on
its own event-loop thread, bound to an address every executor can reach.
It starts in a few hundredths of a second and dies with the driver, as a
run's coordinator should; its HTTP endpoint stays on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from ._plugin import PLUGIN_NAME, CoordinatorPlugin

__all__ = ["CoordinatorServer", "serve"]

#: Seconds to start or stop the scheduler.
TIMEOUT = 30.0


class CoordinatorServer:
    """A running coordinator in this process.

    Parameters
    ----------
    host : str
        Interface to bind, e.g. ``spark.driver.host``.
    port : int
        0 picks a free port.
    """

    def __init__(self, host: str, port: int = 0) -> None:
        from distributed import Scheduler

        # A scheduler in a user's process: its connection chatter (every
        # executor's client) is not the user's business.
        for name in ("distributed.scheduler", "distributed.core", "distributed.shuffle", "distributed.http"):
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dask-llm-coordinator", daemon=True)
        self._thread.start()

        async def start() -> Any:
            return await Scheduler(
                host=host,
                port=port,
                dashboard=False,
                dashboard_address="127.0.0.1:0",  # never a fixed or public port
                plugins=[CoordinatorPlugin()],
            )

        self.scheduler = asyncio.run_coroutine_threadsafe(start(), self._loop).result(TIMEOUT)
        self.address: str = self.scheduler.address

    @property
    def plugin(self) -> CoordinatorPlugin:
        plugin: CoordinatorPlugin = self.scheduler.plugins[PLUGIN_NAME]
        return plugin

    def log_event(self, topic: str, message: dict[str, Any]) -> None:
        """Publish an event from here (e.g. a request to stop a run)."""
        self._loop.call_soon_threadsafe(self.scheduler.log_event, topic, message)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.scheduler.close(), self._loop).result(TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)


_servers: dict[tuple[str, int], CoordinatorServer] = {}
_lock = threading.Lock()


def serve(host: str, port: int = 0) -> CoordinatorServer:
    """This process's coordinator on ``host`` (started once, kept)."""
    with _lock:
        server = _servers.get((host, port))
        if server is None:
            server = _servers[(host, port)] = CoordinatorServer(host, port)
        return server
