"""Bodies of the faulty 200s: truncated, HTML, empty, ``{}``, drip-fed and huge.

Each fault is what a client meets behind a broken proxy or provider: the
status says success, the body does not deliver it (or does, far too slowly or
far too big). Streamed bodies call `on_done` after their last byte, so that
the server counts an answer only once it is all written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from ._http import Response

__all__ = ["LOGIN_PAGE", "drip_fed", "empty", "empty_object", "html_page", "huge", "truncated"]

#: What a proxy in front of the API answers an unauthenticated client: a sign-in page, status 200.
LOGIN_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in - Corporate Proxy</title></head>
<body>
<form method="post" action="/login">
<h1>Please sign in to continue</h1>
<input name="username"><input name="password" type="password">
<button type="submit">Sign in</button>
</form>
</body>
</html>
"""

# A huge body is sent in pieces of this size: the same bytes object every time, so nothing grows.
_CHUNK = 64 * 1024


def truncated(body: bytes, headers: dict[str, str]) -> Response:
    """A body cut in half: valid HTTP, invalid JSON, as from a proxy dropping the connection."""
    return Response(200, body[: len(body) // 2], headers)


def html_page(headers: dict[str, str]) -> Response:
    """A 200 ``text/html`` sign-in page instead of JSON."""
    return Response(200, LOGIN_PAGE, headers, content_type="text/html; charset=utf-8")


def empty(headers: dict[str, str]) -> Response:
    """A 200 ``application/json`` with no body at all."""
    return Response(200, b"", headers)


def empty_object(headers: dict[str, str]) -> Response:
    """A 200 whose body is ``{}``: valid JSON, no completion."""
    return Response(200, b"{}", headers)


def drip_fed(
    body: bytes,
    headers: dict[str, str],
    interval: float,
    client_gone: Callable[[], bool],
    on_done: Callable[[], None],
    on_gone: Callable[[], None],
) -> Response:
    """A 200 whose head goes at once and whose `body` then comes one byte every `interval` seconds.

    Parameters
    ----------
    body : bytes
        The well-formed body to trickle.
    headers : dict of str to str
        Extra headers.
    interval : float
        Seconds before each byte.
    client_gone : callable
        Checked before each byte; a client that has gone ends the connection.
    on_done : callable
        Called once the last byte is written.
    on_gone : callable
        Called if the client goes before the last byte.
    """

    async def trickle() -> AsyncGenerator[bytes, None]:
        for index in range(len(body)):
            await asyncio.sleep(interval)
            if client_gone():
                on_gone()
                raise ConnectionResetError("the client went away during a drip-fed body")
            yield body[index : index + 1]
        on_done()

    return Response(200, headers=headers, stream=trickle(), length=len(body))


def huge(body: bytes, size: int, headers: dict[str, str], on_done: Callable[[], None]) -> Response:
    """A 200 whose JSON `body` is padded with spaces before its closing brace to `size` bytes.

    The body stays valid JSON with the same content, so a client that reads it
    all gets the right answer; it is streamed in 64 KiB pieces of one shared
    buffer, so the simulator's memory does not grow with `size`. A `body`
    longer than `size` is sent as it is.

    Parameters
    ----------
    body : bytes
        A compact JSON object (it ends with ``}``).
    size : int
        The length to pad to.
    headers : dict of str to str
        Extra headers.
    on_done : callable
        Called once the last byte is written.
    """
    padding = max(0, size - len(body))

    async def pad() -> AsyncGenerator[bytes, None]:
        yield body[:-1]
        spaces = b" " * min(_CHUNK, padding)
        left = padding
        while left > 0:
            piece = spaces if left >= len(spaces) else spaces[:left]
            yield piece
            left -= len(piece)
        yield body[-1:]
        on_done()

    return Response(200, headers=headers, stream=pad(), length=len(body) + padding)
