"""A content-addressed response cache on any fsspec filesystem.

``enrich(..., cache=ResponseCache("s3://bucket/llm-cache/"))`` looks every
request up before calling the model and stores every accepted answer
(validated, for structured output) after. The address is the request's
:func:`~dask_llm._core._dedup.request_key` (model, messages, parameters; not the
endpoint, so the same model behind a proxy or a different key shares the
cache), laid out as ``<url>/<key[:2]>/<key>.json``.

Being shared storage, it is what shares answers *across* worker processes
and across runs, which the in-process de-duplication cannot do. Writes are
whole-file and atomic (:class:`~dask_llm._checkpoint.Store`), so a
reader sees an entry whole or not at all; two processes that answer the same
request write the same key, and either write is as good as the other. A
cache that cannot be read or written is skipped (logged), never fatal: it
only saves money, and the model is still there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core._store import Store, open_store
from .._errors import ConfigError

__all__ = ["CachedAnswer", "ResponseCache"]

logger = logging.getLogger("dask_llm.cache")


@dataclass(frozen=True)
class CachedAnswer:
    """An answer as stored: its text and the tokens it was billed when made."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ResponseCache:
    """Where answers are cached; travels in the task graph (never a
    filesystem object: every process opens its own).

    Parameters
    ----------
    url : str
        A directory on any fsspec filesystem: ``"/data/llm-cache"``,
        ``"s3://bucket/llm-cache/"``, ``"memory://cache"``.
    storage_options : mapping, optional
        fsspec options for ``url``.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # credentials

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ConfigError(f"ResponseCache.url must be a non-empty path or URL, got {self.url!r}")
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))

    def _store(self) -> Store:
        return open_store(self.url, self.storage_options)

    @staticmethod
    def _path(key: str) -> str:
        return f"{key[:2]}/{key}.json"

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or ``None`` (absent or unreadable)."""
        try:
            raw = self._store().read(self._path(key))
            if raw is None:
                return None
            data = json.loads(raw)
            return CachedAnswer(str(data["text"]), data.get("prompt_tokens"), data.get("completion_tokens"))
        except Exception as exc:  # a broken cache must never fail a row
            logger.warning("dask-llm: response cache %s: cannot read %s: %s", self.url, key, exc)
            return None

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Store ``answer`` under ``key`` (atomic; failures are logged)."""
        body = {"text": answer.text, "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens}  # fmt: skip
        try:
            self._store().write(self._path(key), json.dumps(body, ensure_ascii=False).encode())
        except Exception as exc:
            logger.warning("dask-llm: response cache %s: cannot write %s: %s", self.url, key, exc)
