"""What the simulator answers: routing, auth, rate limits, faults, latency and stats.

Everything here runs on the server's event loop and knows nothing of sockets,
so the HTTP layer stays a thin loop around :meth:`Behaviour.handle`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

from ._answers import expected_answer, last_user_text, prompt_tokens, truncate
from ._config import SimulatorConfig
from ._http import Request, Response, error_body, json_response
from ._ratelimit import RateLimits, format_duration
from ._stats import Stats

__all__ = ["Behaviour"]

_CHAT_PATH = "/v1/chat/completions"
_AZURE_PREFIX = "/openai/deployments/"
_AZURE_SUFFIX = "/chat/completions"
_DEFAULT_MODEL = "sim-model"


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
        # Cumulative thresholds, so one uniform draw picks at most one fault.
        self._faults: list[tuple[str, float]] = []
        total = 0.0
        for name, rate in (
            ("fail", config.fail_rate),
            ("rate_limit", config.rate_limit_rate),
            ("hang", config.hang_rate),
            ("malformed", config.malformed_rate),
        ):
            if rate > 0:
                total += rate
                self._faults.append((name, total))
        # Lognormal parameters giving the configured mean and standard deviation.
        if config.latency_sd > 0:
            sigma2 = math.log1p((config.latency_sd / config.latency) ** 2)
            self._mu = math.log(config.latency) - sigma2 / 2
            self._sigma = math.sqrt(sigma2)

    def reset(self) -> None:
        """Zero the stats, refill the rate-limit buckets, restart the clock and re-seed the draws.

        Re-seeding makes a run after a reset draw the same faults and latencies
        as a run on a fresh server.
        """
        self.stats.reset()
        now = self._clock()
        self._limits.reset(now)
        self._rng = random.Random(self.config.seed)
        self._started = now

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
            return self._only("GET", request) or json_response(200, self.stats.snapshot())
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
        try:
            return await self._serve_chat(request, deployment, client_gone)
        finally:
            self.stats.end()

    async def _serve_chat(
        self, request: Request, deployment: str | None, client_gone: Callable[[], bool]
    ) -> Response | None:
        arrival = self._clock()
        config = self.config
        if response := self._auth(request):
            return response
        parsed = _parse_chat(request.body, deployment)
        if isinstance(parsed, Response):
            return parsed
        model, messages, max_tokens, response_format = parsed
        if config.models and model not in config.models:
            return _error(404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found")

        n_prompt = prompt_tokens(messages)
        if config.max_context_tokens is not None and n_prompt > config.max_context_tokens:
            message = (
                f"This model's maximum context length is {config.max_context_tokens} tokens. "
                f"However, your messages resulted in {n_prompt} tokens."
            )
            return _error(400, message, "invalid_request_error", "context_length_exceeded")

        answer = expected_answer(messages, config.mode, config.labels, response_format=response_format)
        if self._draw_invalid_json(response_format):
            # Half the answer: a JSON object that never closes.
            answer = answer[: len(answer) // 2]
        content, completion_tokens, truncated = truncate(answer, max_tokens)
        charged = n_prompt + (max_tokens if max_tokens is not None else completion_tokens)

        headers: dict[str, str] = {}
        if self._limits.enabled:
            wait = self._limits.admit(charged, arrival)
            headers = self._limits.headers()
            if wait > 0:
                headers["retry-after"] = str(math.ceil(wait))
                headers["retry-after-ms"] = str(math.ceil(wait * 1000))
                message = f"Rate limit reached for {model}. Please try again in {format_duration(wait)}."
                return _error(429, message, "requests", "rate_limit_exceeded", headers)

        fault = self._draw_fault()
        if fault == "rate_limit":
            headers["retry-after"] = "1"
            return _error(429, "Rate limit reached (simulated).", "requests", "rate_limit_exceeded", headers)
        delay = config.hang_seconds if fault == "hang" else self._latency()
        if delay > 0:
            await asyncio.sleep(delay)
        if client_gone():
            self.stats.disconnected += 1
            return None
        if fault == "fail":
            message = "The server had an error while processing your request. Sorry about that!"
            return _error(config.fail_status, message, "server_error", None, headers)

        payload = {
            "id": f"chatcmpl-sim{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": n_prompt + completion_tokens,
            },
        }
        response = json_response(200, payload, headers)
        if fault == "malformed":
            # A body cut in half: valid HTTP, invalid JSON, as from a proxy dropping the connection.
            return Response(200, response.body[: len(response.body) // 2], headers)
        self.stats.success(last_user_text(messages), n_prompt, completion_tokens, arrival - self._started, charged)
        return response

    def _draw_fault(self) -> str | None:
        if not self._faults:
            return None
        draw = self._rng.random()
        for name, threshold in self._faults:
            if draw < threshold:
                self.stats.faults[name] += 1
                return name
        return None

    def _draw_invalid_json(self, response_format: dict[str, Any] | None) -> bool:
        # A draw only when the knob is on and the request asks for JSON, so
        # that every other configuration draws exactly what it did before.
        rate = self.config.invalid_json_rate
        if rate <= 0 or response_format is None or response_format.get("type") not in ("json_schema", "json_object"):
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


def _parse_chat(
    body: bytes, deployment: str | None
) -> Response | tuple[str, list[dict[str, Any]], int | None, dict[str, Any] | None]:
    """Validate a chat completion body into (model, messages, max_tokens, response_format), or a 400."""
    try:
        data = json.loads(body)
    except ValueError:
        return _bad_request("We could not parse the JSON body of your request.")
    if not isinstance(data, dict):
        return _bad_request("The body of your request must be a JSON object.")

    model = deployment if deployment is not None else data.get("model")
    if not isinstance(model, str) or not model:
        return _bad_request("You must provide a model parameter.", "model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return _bad_request("'messages' must be a non-empty array of objects.", "messages")
    if data.get("stream"):
        return _bad_request("The simulator does not support streaming.", "stream")
    if data.get("n", 1) not in (1, None):
        return _bad_request("The simulator only supports n=1.", "n")

    max_tokens = data.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = data.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        return _bad_request("max_tokens must be an integer of at least 1.", "max_tokens")

    response_format = data.get("response_format")
    if not isinstance(response_format, dict):
        response_format = None
    return model, messages, max_tokens, response_format


def _bad_request(message: str, param: str | None = None) -> Response:
    return json_response(400, error_body(message, "invalid_request_error", None, param))
