"""The asyncio HTTP server: one coroutine per connection, latency is ``asyncio.sleep``.

A streamed body is written chunk by chunk, each awaited with ``drain`` so that
the transport buffers at most its high-water mark of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ._behaviour import Behaviour
from ._config import SimulatorConfig
from ._http import HttpError, error_body, json_response, read_request

__all__ = ["SimulatorServer"]

logger = logging.getLogger("dask_llm.simulator")

# Many clients open their connections at once when a job starts; the default 100 would drop some.
_BACKLOG = 1024


class SimulatorServer:
    """Serve a :class:`Behaviour` over HTTP/1.1 on the running event loop.

    Parameters
    ----------
    config : SimulatorConfig
        What to simulate.
    host : str
        Interface to bind.
    port : int
        Port to bind; 0 picks a free one, see :attr:`port` once started.
    """

    def __init__(self, config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.behaviour: Behaviour | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises
        ------
        OSError
            If the address cannot be bound.
        """
        self.behaviour = Behaviour(self.config, clock=asyncio.get_running_loop().time)
        self._server = await asyncio.start_server(self._serve_connection, self.host, self.port, backlog=_BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cancel requests in progress (hangs included) and close every connection.

        Parameters
        ----------
        timeout : float
            Most seconds to wait for the connections to wind down.
        """
        if self._server is None:
            return
        self._server.close()
        for task in self._connections:
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=timeout)
        # In Python 3.12+ wait_closed waits for connections too; they are all cancelled by now.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout)
        self._server = None

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        assert self.behaviour is not None
        handle = self.behaviour.handle
        body_limit = self.behaviour.body_limit

        def client_gone() -> bool:
            # A client that timed out closes its socket: we see EOF, or a reset that closes the transport.
            return reader.at_eof() or writer.is_closing()

        try:
            while True:
                request = await read_request(reader, body_limit)
                if request is None:
                    break
                response = await handle(request, client_gone)
                if response is None:
                    break
                if response.stream is None:
                    writer.write(response.encode(request.keep_alive))
                    await writer.drain()
                else:
                    try:
                        # The head goes out at once, then the body as the stream yields it.
                        writer.write(response.head(request.keep_alive))
                        await writer.drain()
                        async for chunk in response.stream:
                            writer.write(chunk)
                            await writer.drain()
                    finally:
                        # Close an abandoned body now, not when the loop may be gone.
                        await response.stream.aclose()
                        if response.on_close is not None:
                            response.on_close()
                if not request.keep_alive:
                    break
        except HttpError as exc:
            response = json_response(exc.status, error_body(exc.message, "invalid_request_error", None))
            writer.write(response.encode(keep_alive=False))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The server is stopping: end quietly, the connection is closed below.
            pass
        except Exception:
            logger.exception("simulator failed to serve a request")
            response = json_response(500, error_body("Simulator bug, see its log.", "server_error", None))
            writer.write(response.encode(keep_alive=False))
        finally:
            self._connections.discard(task)
            writer.close()
