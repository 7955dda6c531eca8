"""What the simulator answers: routing, auth, rate limits, faults, latency and stats.

Everything here runs on the server's event loop and knows nothing of sockets,
so the HTTP layer stays a thin loop around :meth:`Behaviour.handle`. The
files and batches routes live in :mod:`._batch_api`; their lines are answered
here, by :meth:`Behaviour.answer_line`, like synchronous requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

from . import _faults
from ._answers import last_user_text, prompt_tokens
from ._batch_api import BatchApi
from ._chat import ApiError, ChatRequest, answer, check_chat, completion, parse_chat, parse_chat_json
from ._config import SimulatorConfig
from ._http import Request, Response, error_body, json_response
from ._ratelimit import RateLimits
from ._retry_hints import success_headers, too_many_requests
from ._stats import Stats

__all__ = ["Behaviour"]

_CHAT_PATH = "/v1/chat/completions"
_AZURE_PREFIX = "/openai/deployments/"
_AZURE_SUFFIX = "/chat/completions"
_DEFAULT_MODEL = "sim-model"
# The retry hint of a 429 that is not the buckets' (spurious, or always_429).
_SIMULATED_WAIT = 1.0


class Behaviour:
    """The simulated provider, one per server.

    Parameters
    ----------
    config : SimulatorConfig
        What to simulate.
    clock : callable, optional
        Monotonic clock in seconds; the event loop's ``time`` in the server.
    """

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.stats = Stats()
        self._clock = clock
        self._limits = RateLimits(config.rpm, config.tpm, config.burst_seconds, clock())
        self._rng = random.Random(config.seed)
        self._started = clock()
        self._ids = itertools.count(1)
        self.batch_api = BatchApi(config, clock, self.stats, self.answer_line)
        # Cumulative thresholds, so one uniform draw picks at most one fault. A fault
        # whose rate is 0 has no threshold: the draws are those of a config without it.
        self._faults: list[tuple[str, float]] = []
        total = 0.0
        for name, rate in config.drawn_faults:
            if rate > 0:
                total += rate
                self._faults.append((name, total))
        # Lognormal parameters giving the configured mean and standard deviation.
        if config.latency_sd > 0:
            sigma2 = math.log1p((config.latency_sd / config.latency) ** 2)
            self._mu = math.log(config.latency) - sigma2 / 2
            self._sigma = math.sqrt(sigma2)

    def reset(self) -> None:
        """Zero the stats, refill the rate-limit buckets, restart the clock, re-seed the draws
        and forget every file and batch.

        Re-seeding makes a run after a reset draw the same faults and latencies
        as a run on a fresh server; batch and file ids start again from 1.
        """
        self.stats.reset()
        now = self._clock()
        self._limits.reset(now)
        self._rng = random.Random(self.config.seed)
        self._started = now
        self.batch_api.reset()

    def snapshot(self) -> dict[str, Any]:
        """Return the stats, with every batch brought up to now first (see :meth:`Stats.snapshot`)."""
        self.batch_api.advance()
        return self.stats.snapshot(self.batch_api.status_counts())

    def body_limit(self, method: str, path: str) -> int:
        """Most body bytes a request may send: file uploads may be large."""
        return self.batch_api.body_limit(method, path)

    async def handle(self, request: Request, client_gone: Callable[[], bool]) -> Response | None:
        """Answer one request.

        Parameters
        ----------
        request : Request
            The parsed request.
        client_gone : callable
            Tells whether the client has closed the connection, checked after the
            latency so that an answer nobody reads is not counted as a success.

        Returns
        -------
        Response or None
            The response to write, or ``None`` if the client has gone.
        """
        path = request.path
        if path == "/health":
            return self._only("GET", request) or json_response(200, {"status": "ok"})
        if path == "/sim/stats":
            return self._only("GET", request) or json_response(200, self.snapshot())
        if path == "/sim/reset":
            if response := self._only("POST", request):
                return response
            self.reset()
            return json_response(200, {"status": "reset"})

        self.stats.arrive()
        if path == _CHAT_PATH:
            response = self._only("POST", request) or await self._chat(request, None, client_gone)
        elif path.startswith(_AZURE_PREFIX) and path.endswith(_AZURE_SUFFIX):
            deployment = path[len(_AZURE_PREFIX) : -len(_AZURE_SUFFIX)]
            response = self._only("POST", request) or await self._chat(request, deployment, client_gone)
        elif path == "/v1/models":
            response = self._only("GET", request) or self._auth(request) or self._models()
        elif self.batch_api.matches(path):
            response = self._auth(request) or self.batch_api.handle(request)
        else:
            response = _error(
                404,
                f"Unknown request URL: {request.method} {path}. Please check the URL for typos.",
                "invalid_request_error",
                "unknown_url",
            )
        if response is not None:
            self.stats.response(response.status)
        return response

    def _only(self, method: str, request: Request) -> Response | None:
        if request.method == method:
            return None
        return _error(
            405, f"Method {request.method} not allowed on {request.path}", "invalid_request_error", "method_not_allowed"
        )

    def _auth(self, request: Request) -> Response | None:
        key = self.config.api_key
        if key is None:
            return None
        # OpenAI sends a bearer token and Azure an api-key header; either may carry the key.
        if request.headers.get("authorization") == f"Bearer {key}" or request.headers.get("api-key") == key:
            return None
        return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")

    def _models(self) -> Response:
        models = self.config.models or (_DEFAULT_MODEL,)
        data = [{"id": model, "object": "model", "created": 0, "owned_by": "dask-llm-simulator"} for model in models]
        return json_response(200, {"object": "list", "data": data})

    async def _chat(self, request: Request, deployment: str | None, client_gone: Callable[[], bool]) -> Response | None:
        self.stats.begin()
        response = None
        try:
            response = await self._serve_chat(request, deployment, client_gone)
            if response is not None and response.stream is not None:
                # A drip-fed or huge body is still being served while it is written.
                response = dataclasses.replace(response, on_close=self.stats.end)
            return response
        finally:
            if response is None or response.on_close is None:
                self.stats.end()

    async def _serve_chat(
        self, request: Request, deployment: str | None, client_gone: Callable[[], bool]
    ) -> Response | None:
        arrival = self._clock()
        config = self.config
        if response := self._auth(request):
            return response
        chat = parse_chat(request.body, deployment)
        if isinstance(chat, ApiError):
            return chat.response()
        if error := check_chat(config, chat):
            return error.response()

        n_prompt = prompt_tokens(chat.messages)
        content, completion_tokens, truncated = answer(config, chat, self._draw_invalid_json(chat))
        charged = n_prompt + (chat.max_tokens if chat.max_tokens is not None else completion_tokens)

        style = config.rate_limit_style
        if config.always_429:
            self.stats.faults["always_429"] += 1
            resets = (_SIMULATED_WAIT, _SIMULATED_WAIT)
            return too_many_requests(style, chat.model, _SIMULATED_WAIT, resets, self._limits.headers(), True)
        bucket_headers: dict[str, str] = {}
        if self._limits.enabled:
            wait = self._limits.admit(charged, arrival)
            bucket_headers = self._limits.headers()
            if wait > 0:
                return too_many_requests(style, chat.model, wait, self._limits.last_waits, bucket_headers, False)
        headers = success_headers(style, bucket_headers)

        fault = self._draw_fault()
        if fault == "rate_limit":
            resets = (_SIMULATED_WAIT, _SIMULATED_WAIT)
            return too_many_requests(style, chat.model, _SIMULATED_WAIT, resets, bucket_headers, True)
        delay = config.hang_seconds if fault == "hang" else self._latency()
        if delay > 0:
            await _sleep_unless_gone(delay, client_gone)
        if client_gone():
            self.stats.disconnected += 1
            return None
        if fault == "fail":
            message = "The server had an error while processing your request. Sorry about that!"
            return _error(config.fail_status, message, "server_error", None, headers)

        payload = completion(f"chatcmpl-sim{next(self._ids)}", chat, content, n_prompt, completion_tokens, truncated)
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        prompt = last_user_text(chat.messages)

        def succeed() -> None:
            self.stats.success(prompt, n_prompt, completion_tokens, arrival - self._started, charged)

        if fault == "malformed":
            return _faults.truncated(body, headers)
        if fault == "html":
            return _faults.html_page(headers)
        if fault == "empty":
            return _faults.empty(headers)
        if fault == "empty_object":
            return _faults.empty_object(headers)
        if fault == "drip":
            return _faults.drip_fed(body, headers, config.drip_interval, client_gone, succeed, self._client_left)
        if fault == "huge":
            return _faults.huge(body, config.huge_bytes, headers, succeed)
        succeed()
        return Response(200, body, headers)

    def answer_line(self, body: dict[str, Any], rng: random.Random) -> tuple[int, dict[str, Any]]:
        """Answer one batch line's chat request as the synchronous route would, without limits or latency.

        Parameters
        ----------
        body : dict
            The line's ``body``.
        rng : random.Random
            The batch's own generator, for ``batch_line_fail_rate`` and
            ``invalid_json_rate`` (each drawn only when on, like the chat draws).

        Returns
        -------
        tuple of (int, dict)
            The status code and the response body: a ``chat.completion`` or an error.
        """
        config = self.config
        chat = parse_chat_json(body, None)
        error = chat if isinstance(chat, ApiError) else check_chat(config, chat)
        if error is not None:
            self.stats.batch_line(None)
            return error.status, error.body()
        assert isinstance(chat, ChatRequest)
        if config.batch_line_fail_rate > 0 and rng.random() < config.batch_line_fail_rate:
            self.stats.batch_line(None)
            message = "The server had an error while processing your request. Sorry about that!"
            return 500, error_body(message, "server_error", None)
        cut = config.invalid_json_rate > 0 and chat.wants_json and rng.random() < config.invalid_json_rate
        content, completion_tokens, truncated = answer(config, chat, cut)
        n_prompt = prompt_tokens(chat.messages)
        self.stats.batch_line(last_user_text(chat.messages), n_prompt, completion_tokens)
        return 200, completion(f"chatcmpl-sim{next(self._ids)}", chat, content, n_prompt, completion_tokens, truncated)

    def _client_left(self) -> None:
        self.stats.disconnected += 1

    def _draw_fault(self) -> str | None:
        if not self._faults:
            return None
        draw = self._rng.random()
        for name, threshold in self._faults:
            if draw < threshold:
                self.stats.faults[name] += 1
                return name
        return None

    def _draw_invalid_json(self, chat: ChatRequest) -> bool:
        # A draw only when the knob is on and the request asks for JSON, so
        # that every other configuration draws exactly what it did before.
        rate = self.config.invalid_json_rate
        if rate <= 0 or not chat.wants_json:
            return False
        if self._rng.random() < rate:
            self.stats.faults["invalid_json"] += 1
            return True
        return False

    def _latency(self) -> float:
        if self.config.latency_sd > 0:
            return self._rng.lognormvariate(self._mu, self._sigma)
        return self.config.latency


def _error(
    status: int, message: str, error_type: str, code: str | None, headers: dict[str, str] | None = None
) -> Response:
    return json_response(status, error_body(message, error_type, code), headers)


#: While a response waits (latency, a hang), how often the server looks whether its client left.
_GONE_POLL = 0.05


async def _sleep_unless_gone(delay: float, client_gone: Callable[[], bool]) -> None:
    """Sleep ``delay`` seconds, or less if the client closes the connection
    meanwhile: a client that gave up is no longer in flight, and counting it
    would hide whether it really stopped."""
    if delay <= 4 * _GONE_POLL:
        await asyncio.sleep(delay)
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + delay
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(left, _GONE_POLL))
        if client_gone():
            return
