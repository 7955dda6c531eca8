"""The OpenAI Batch API, engine-free: requests in, per-request outcomes out.

The pieces, each in its own module:

- :class:`BatchAPI` (``_config``): the options, a frozen dataclass.
- ``_files``: requests -> JSONL input files split to the provider's limits; upload.
- ``_capacity``: the per-process ledger of enqueued tokens per model, and
  the limit, configured or learned from ``token_limit_exceeded``.
- ``_jobs``: :func:`submit`, :func:`poll`, :func:`wait`, :func:`find`,
  :func:`cancel`, :func:`resubmit`.
- ``_results``: :func:`results`, a :class:`LineResult` per request.
- ``_run``: :func:`run`, the whole life of a set of requests, follow-ups included.

Failure modes::

    a line 5xx / 429 / malformed      LineResult RETRYABLE   -> follow-up batch or sync retry
    a line 400-like                   LineResult FINAL       -> the row's error
    expired / cancelled, not run      LineResult NOT_RUN     -> follow-up batch or sync retry
    batch refused: token limit        wait() sends it again once there is room
    batch refused: invalid input      BatchValidationError (an EndpointError): the job stops
    every line 404 (or 401/403)       ModelNotFoundError (AuthenticationError): the job stops
    401/403, 404 on the routes        AuthenticationError / EndpointError
    transient failure of a call       retried (a few seconds), then EndpointError

Examples
--------
>>> refs = submit(endpoint, items, metadata={"dask_llm_run": run_id[:16]}, options=BatchAPI())  # doctest: +SKIP
>>> states = wait(endpoint, refs, options=BatchAPI())                                              # doctest: +SKIP
>>> lines = {k: v for s in states for k, v in results(endpoint, s).items()}                        # doctest: +SKIP
"""

from ._config import BatchAPI
from ._errors import BatchLineError, BatchValidationError
from ._files import InputFile, batch_url, build_files
from ._jobs import cancel, find, poll, resubmit, submit, wait
from ._refs import TERMINAL, BatchRef, BatchState
from ._results import LineResult, LineStatus, results
from ._run import run

__all__ = [
    "TERMINAL",
    "BatchAPI",
    "BatchLineError",
    "BatchRef",
    "BatchState",
    "BatchValidationError",
    "InputFile",
    "LineResult",
    "LineStatus",
    "batch_url",
    "build_files",
    "cancel",
    "find",
    "poll",
    "resubmit",
    "results",
    "run",
    "submit",
    "wait",
]
