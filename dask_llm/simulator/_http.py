"""Just enough HTTP/1.1 for OpenAI clients: Content-Length or chunked request
bodies, keep-alive, and responses whose body is either in memory or streamed
from an async generator (drip-fed or huge bodies)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_UPLOAD_BYTES",
    "HttpError",
    "Request",
    "Response",
    "error_body",
    "json_response",
    "read_request",
]

# Chat requests are small; this only stops a broken client from filling the memory.
MAX_BODY_BYTES = 32 * 1024 * 1024
#: Cap of a file upload (a batch input file is up to 200 MB at OpenAI).
MAX_UPLOAD_BYTES = 256 * 1024 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclasses.dataclass(frozen=True)
class Request:
    """A parsed HTTP request.

    Attributes
    ----------
    method : str
        ``"GET"``, ``"POST"``...
    path : str
        The target without its query string.
    query : str
        The query string, without ``?``.
    headers : dict of str to str
        Header names in lower case.
    body : bytes
        The body, empty if none.
    keep_alive : bool
        Whether the client expects the connection to stay open.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclasses.dataclass(frozen=True)
class Response:
    """An HTTP response to write: status, extra headers and a JSON (or deliberately broken) body.

    Attributes
    ----------
    status : int
        The status code.
    body : bytes
        The body when it is held in memory; ignored when `stream` is set.
    headers : dict of str to str
        Headers besides content-type, content-length and connection.
    content_type : str
        The ``content-type`` header.
    stream : async generator of bytes, optional
        A body written chunk by chunk, each awaited until the socket takes it,
        so that a huge body never sits in memory and a slow one can sleep
        between chunks. It may raise ``ConnectionError`` to drop the connection.
    length : int
        The ``content-length`` of a streamed body; it must match what `stream` yields.
    on_close : callable, optional
        Called once a streamed body is written or abandoned, whatever happened.
    """

    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"
    stream: AsyncGenerator[bytes, None] | None = None
    length: int = 0
    on_close: Callable[[], None] | None = None

    def head(self, keep_alive: bool) -> bytes:
        """Serialize the status line and headers, blank line included."""
        length = self.length if self.stream is not None else len(self.body)
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"content-type: {self.content_type}",
            f"content-length: {length}",
            "connection: keep-alive" if keep_alive else "connection: close",
        ]
        lines.extend(f"{name}: {value}" for name, value in self.headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def encode(self, keep_alive: bool) -> bytes:
        """Serialize an in-memory response, head and body, ready for ``transport.write``."""
        if self.stream is not None:
            raise ValueError("a streamed response is written chunk by chunk, not encoded at once")
        return self.head(keep_alive) + self.body


class HttpError(Exception):
    """A request that cannot be parsed; the connection is answered `status` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """Return an OpenAI-style error body, which the openai client maps to its exceptions."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """Return a response whose body is `payload` as compact JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Response(status, body, headers or {})


async def read_request(
    reader: asyncio.StreamReader, body_limit: Callable[[str, str], int] | None = None
) -> Request | None:
    """Read one request from `reader`.

    Parameters
    ----------
    reader : asyncio.StreamReader
        The connection's reader.
    body_limit : callable, optional
        Most body bytes allowed for a ``(method, path)``; :data:`MAX_BODY_BYTES` if not given.

    Returns
    -------
    Request or None
        The request, or ``None`` if the client closed the connection between requests.

    Raises
    ------
    HttpError
        If the request is malformed, too large, or uses a transfer coding other than chunked.
    asyncio.IncompleteReadError, ConnectionError
        If the client goes away in the middle of a request.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    except asyncio.LimitOverrunError:
        raise HttpError(431, "Request headers too large") from None

    request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    try:
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HttpError(400, f"Malformed request line: {request_line[:100]!r}") from None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    path, _, query = target.partition("?")
    limit = body_limit(method, path) if body_limit is not None else MAX_BODY_BYTES
    coding = headers.get("transfer-encoding")
    if coding is not None:
        # httpx streams an upload of unknown length (a file object without size) chunked.
        if coding.lower() != "chunked":
            raise HttpError(501, f"Transfer-Encoding {coding!r} is not supported; send Content-Length")
        body = await _read_chunked(reader, limit)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "Invalid Content-Length") from None
        if not 0 <= length <= limit:
            raise HttpError(413, f"Body of {length} bytes is too large")
        body = await reader.readexactly(length) if length else b""

    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.1":
        keep_alive = connection != "close"
    else:
        keep_alive = connection == "keep-alive"
    return Request(method, path, query, headers, body, keep_alive)


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    """Read a chunked body of at most `limit` bytes; trailers are read and dropped."""
    parts: list[bytes] = []
    total = 0
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        except (ValueError, asyncio.LimitOverrunError):
            raise HttpError(400, "Malformed chunk size") from None
        if size == 0:
            # Trailer fields, if any, end with an empty line; a bounded number of them.
            for _ in range(100):
                if await reader.readuntil(b"\r\n") == b"\r\n":
                    return b"".join(parts)
            raise HttpError(431, "Too many trailer fields")
        total += size
        if size < 0 or total > limit:
            raise HttpError(413, f"Body of more than {limit} bytes is too large")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "Malformed chunk")
