"""Just enough HTTP/1.1 for OpenAI clients: Content-Length bodies and keep-alive."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

__all__ = ["HttpError", "Request", "Response", "error_body", "json_response", "read_request"]

# Chat requests are small; this only stops a broken client from filling the memory.
MAX_BODY_BYTES = 32 * 1024 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
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
    """An HTTP response to write: status, extra headers and a JSON (or deliberately broken) body."""

    status: int
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        """Serialize the response, head and body, ready for ``transport.write``."""
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            "content-type: application/json",
            f"content-length: {len(self.body)}",
            "connection: keep-alive" if keep_alive else "connection: close",
        ]
        lines.extend(f"{name}: {value}" for name, value in self.headers.items())
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + self.body


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


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request from `reader`.

    Parameters
    ----------
    reader : asyncio.StreamReader
        The connection's reader.

    Returns
    -------
    Request or None
        The request, or ``None`` if the client closed the connection between requests.

    Raises
    ------
    HttpError
        If the request is malformed, too large, or uses chunked encoding.
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

    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "Invalid Content-Length") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise HttpError(413, f"Body of {length} bytes is too large")
    body = await reader.readexactly(length) if length else b""

    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.1":
        keep_alive = connection != "close"
    else:
        keep_alive = connection == "keep-alive"
    path, _, query = target.partition("?")
    return Request(method, path, query, headers, body, keep_alive)
