"""Chat completion requests and answers, shared by the synchronous route and batch lines.

Both paths validate a body the same way and build the same ``chat.completion``
object, so a batch line answers exactly what a synchronous call would.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from ._answers import expected_answer, prompt_tokens, truncate
from ._config import SimulatorConfig
from ._http import Response, error_body, json_response

__all__ = ["ApiError", "ChatRequest", "answer", "check_chat", "completion", "parse_chat", "parse_chat_json"]

_JSON_FORMATS = ("json_schema", "json_object")


@dataclasses.dataclass(frozen=True)
class ApiError:
    """An OpenAI-style error: status code and the fields of its body."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def body(self) -> dict[str, Any]:
        """The error body, ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.code, self.param)

    def response(self, headers: dict[str, str] | None = None) -> Response:
        """The error as an HTTP response."""
        return json_response(self.status, self.body(), headers)


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat completion request the simulator uses.

    Attributes
    ----------
    model : str
        The body's model, or the Azure deployment.
    messages : list of dict
        The chat messages.
    max_tokens : int, optional
        ``max_completion_tokens`` or ``max_tokens``.
    response_format : dict, optional
        The ``response_format``, if it is an object.
    """

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    response_format: dict[str, Any] | None

    @property
    def wants_json(self) -> bool:
        """Whether the request asks for a JSON answer."""
        return self.response_format is not None and self.response_format.get("type") in _JSON_FORMATS


def parse_chat(body: bytes, deployment: str | None) -> ChatRequest | ApiError:
    """Validate a chat completion body, or return the 400 a provider would answer.

    Parameters
    ----------
    body : bytes
        The request body.
    deployment : str, optional
        The Azure deployment, which names the model instead of the body.

    Returns
    -------
    ChatRequest or ApiError
        The request, or a 400 error.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return _bad_request("We could not parse the JSON body of your request.")
    return parse_chat_json(data, deployment)


def parse_chat_json(data: Any, deployment: str | None) -> ChatRequest | ApiError:
    """Validate an already decoded chat completion body; see :func:`parse_chat`."""
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
    return ChatRequest(model, messages, max_tokens, response_format)


def check_chat(config: SimulatorConfig, chat: ChatRequest) -> ApiError | None:
    """Return the 404 of an unknown model or the 400 of a too long prompt, or ``None``."""
    if config.models and chat.model not in config.models:
        return ApiError(404, f"The model `{chat.model}` does not exist", code="model_not_found")
    n_prompt = prompt_tokens(chat.messages)
    if config.max_context_tokens is not None and n_prompt > config.max_context_tokens:
        message = (
            f"This model's maximum context length is {config.max_context_tokens} tokens. "
            f"However, your messages resulted in {n_prompt} tokens."
        )
        return ApiError(400, message, code="context_length_exceeded")
    return None


def answer(config: SimulatorConfig, chat: ChatRequest, cut_json: bool) -> tuple[str, int, bool]:
    """Return the content, completion tokens and whether ``max_tokens`` cut it.

    Parameters
    ----------
    config : SimulatorConfig
        Gives the mode and labels.
    chat : ChatRequest
        The request.
    cut_json : bool
        Whether to cut the answer in half first (the ``invalid_json_rate`` fault).
    """
    text = expected_answer(chat.messages, config.mode, config.labels, response_format=chat.response_format)
    if cut_json:
        # Half the answer: a JSON object that never closes.
        text = text[: len(text) // 2]
    return truncate(text, chat.max_tokens)


def completion(
    completion_id: str, chat: ChatRequest, content: str, n_prompt: int, completion_tokens: int, truncated: bool
) -> dict[str, Any]:
    """Return a ``chat.completion`` object, as the openai client parses it."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
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


def _bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)
