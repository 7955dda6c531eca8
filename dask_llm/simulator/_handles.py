"""Handles that run the simulator in this process (a daemon thread) or in a child process."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from ._cli import LISTENING_PREFIX, config_to_argv
from ._config import SimulatorConfig
from ._server import SimulatorServer

__all__ = ["Simulator", "SimulatorProcess"]

# Every wait is bounded: starting, stopping and control calls give up after this many seconds.
_TIMEOUT = 10.0

T = TypeVar("T")


class _Handle:
    """URLs and the context-manager protocol shared by both handles."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL for ``openai.OpenAI(base_url=...)``, e.g. ``"http://127.0.0.1:PORT/v1"``."""
        return f"{self.azure_endpoint}/v1"

    @property
    def azure_endpoint(self) -> str:
        """Endpoint for ``openai.AzureOpenAI(azure_endpoint=...)``, e.g. ``"http://127.0.0.1:PORT"``."""
        if not self.port:
            raise RuntimeError("the simulator is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Simulator(_Handle):
    """An OpenAI-compatible simulator served from an event loop in a daemon thread.

    Parameters
    ----------
    config : SimulatorConfig, optional
        What to simulate; the defaults answer labels instantly, without limits or faults.
    host : str
        Interface to bind.
    port : int
        Port to bind; 0 (the default) picks a free one.

    Examples
    --------
    >>> with Simulator(SimulatorConfig(rpm=600)) as sim:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=sim.url, api_key="k")
    ...     sim.stats()["successes"]
    """

    def __init__(self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = 0
        self._requested_port = port
        self._server: SimulatorServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def subprocess(
        cls, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> SimulatorProcess:
        """Return a handle on a simulator run as ``python -m dask_llm.simulator`` in a child process.

        The handle has the same interface; use it as a context manager or call
        :meth:`~SimulatorProcess.start` and :meth:`~SimulatorProcess.stop`.
        """
        return SimulatorProcess(config, host=host, port=port)

    def start(self) -> Self:
        """Start the event loop thread and bind the server.

        Returns
        -------
        Simulator
            This handle, started.

        Raises
        ------
        RuntimeError
            If already started.
        OSError
            If the address cannot be bound.
        TimeoutError
            If the server is not listening within 10 seconds.
        """
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="dask-llm-simulator", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        self._server = SimulatorServer(self.config, self.host, self._requested_port)
        try:
            asyncio.run_coroutine_threadsafe(self._server.start(), loop).result(_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise
        self.port = self._server.port
        return self

    def stop(self) -> None:
        """Cancel requests in progress, close the server and end the thread; a no-op if not started."""
        if self._loop is None or self._server is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(_TIMEOUT)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()
        self._loop, self._thread, self._server = None, None, None
        self.port = 0

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the traffic counters, as served by ``GET /sim/stats``."""
        return self._on_loop(lambda behaviour: behaviour.snapshot())

    def reset(self) -> None:
        """Zero the stats, refill the rate-limit buckets and forget files and batches, like ``POST /sim/reset``."""
        self._on_loop(lambda behaviour: behaviour.reset())

    def _on_loop(self, function: Callable[[Any], T]) -> T:
        # The counters belong to the loop thread; read and change them there.
        if self._loop is None or self._server is None or self._server.behaviour is None:
            raise RuntimeError("the simulator is not started")
        behaviour = self._server.behaviour

        async def call() -> T:
            return function(behaviour)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(_TIMEOUT)


class SimulatorProcess(_Handle):
    """An OpenAI-compatible simulator in a child process, controlled over HTTP.

    Parameters
    ----------
    config : SimulatorConfig, optional
        What to simulate.
    host : str
        Interface to bind.
    port : int
        Port to bind; 0 (the default) picks a free one.

    Notes
    -----
    The child exits when its stdin closes, so it dies with its parent even if
    :meth:`stop` is never called.
    """

    def __init__(self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = 0
        self._requested_port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Process id of the child, e.g. to pin it to a CPU."""
        if self._process is None:
            raise RuntimeError("the simulator is not started")
        return self._process.pid

    @property
    def command(self) -> list[str]:
        """The command line that starts the child."""
        return [
            sys.executable, "-m", "dask_llm.simulator",
            "--host", self.host,
            "--port", str(self._requested_port),
            "--exit-with-stdin",
            *config_to_argv(self.config),
        ]  # fmt: skip

    def start(self) -> Self:
        """Start the child and wait until it listens.

        Returns
        -------
        SimulatorProcess
            This handle, started.

        Raises
        ------
        RuntimeError
            If already started, or if the child exits before listening.
        TimeoutError
            If the child does not listen within 10 seconds.
        """
        if self._process is not None:
            raise RuntimeError("the simulator is already started")
        # The child must import this very package, even when it is not installed.
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            line = self._read_line(time.monotonic() + _TIMEOUT)
            if not line.startswith(LISTENING_PREFIX):
                raise RuntimeError(f"unexpected first line from the simulator: {line!r}")
            port = urllib.parse.urlsplit(line[len(LISTENING_PREFIX) :]).port
            assert port is not None
            self.port = port
        except BaseException:
            self.stop()
            raise
        return self

    def _read_line(self, deadline: float) -> str:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the simulator did not listen within {_TIMEOUT:g} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = self._process.wait(_TIMEOUT)
                raise RuntimeError(f"the simulator exited with status {code} before listening (see its stderr)")
            data += chunk
        return data.decode().splitlines()[0]

    def stop(self) -> None:
        """Terminate the child, kill it if it does not exit within 10 seconds; a no-op if not started."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(_TIMEOUT)
        finally:
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
            self._process = None
            self.port = 0

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the traffic counters from ``GET /sim/stats``."""
        stats: dict[str, Any] = self._request("GET", "/sim/stats")
        return stats

    def reset(self) -> None:
        """Zero the stats, refill the rate-limit buckets and forget files and batches with ``POST /sim/reset``."""
        self._request("POST", "/sim/reset")

    def _request(self, method: str, path: str) -> Any:
        if not self.port:
            raise RuntimeError("the simulator is not started")
        # http.client rather than urllib: no proxy from the environment may intercept loopback calls.
        connection = http.client.HTTPConnection(self.host, self.port, timeout=_TIMEOUT)
        try:
            connection.request(method, path, body=b"" if method == "POST" else None)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path} answered {response.status}: {body[:200]!r}")
            return json.loads(body)
        finally:
            connection.close()
