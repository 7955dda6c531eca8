"""What the Batch API package uses from the rest of dask-llm, imported in one place.

The package around it is being reorganized (``_client`` and ``_attempt``
into ``_calls/``, ``_tokens`` into ``_core/``); importing them here keeps
the adjustment to one module. Drop the fallback once the new layout is in.
"""

from __future__ import annotations

try:
    from .._calls._attempt import bounded
    from .._calls._client import Kind, classify, get_client
    from .._core._tokens import estimate_prompt_tokens
except ImportError:  # the layout before the reorganization
    from .._attempt import bounded  # type: ignore[no-redef]
    from .._client import Kind, classify, get_client  # type: ignore[no-redef]
    from .._tokens import estimate_prompt_tokens  # type: ignore[no-redef]

__all__ = ["Kind", "bounded", "classify", "estimate_prompt_tokens", "get_client"]
