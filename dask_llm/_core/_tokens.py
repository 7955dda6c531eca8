"""Offline token estimate.

tiktoken would download its encoding files on first use, which a worker behind
a firewall cannot do, and its counts only hold for OpenAI's own models anyway.
Four characters a token is the usual rule of thumb for English; the estimate
is reconciled with the ``usage`` of each response, so it only has to be close.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["estimate_prompt_tokens", "estimate_request_tokens"]

#: Tokens a chat format adds around every message (role, separators).
PER_MESSAGE_OVERHEAD = 4
#: Tokens that prime the assistant's reply.
REPLY_PRIMING = 3


def estimate_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Estimate the prompt tokens a list of chat messages will be billed for."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return -(-chars // 4) + PER_MESSAGE_OVERHEAD * len(messages) + REPLY_PRIMING


#: Completion tokens reserved for a request that sets no ``max_tokens``.
DEFAULT_COMPLETION_ESTIMATE = 256


def estimate_request_tokens(request: dict[str, Any]) -> int:
    """Tokens to reserve for a request: its prompt plus the longest answer it
    allows (or :data:`DEFAULT_COMPLETION_ESTIMATE`)."""
    cap = request.get("max_completion_tokens") or request.get("max_tokens")
    return estimate_prompt_tokens(request["messages"]) + int(cap or DEFAULT_COMPLETION_ESTIMATE)
