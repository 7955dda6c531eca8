"""What the caller keeps of a batch (:class:`BatchRef`) and what a look at it shows (:class:`BatchState`).

Both are frozen and picklable, free of ``openai`` types, so a checkpoint
can store them and a Dask task can return them. The metadata dask-llm
writes on each batch (:data:`ROWS` ... :data:`SUBMIT`) is enough to rebuild
a :class:`BatchRef` from the provider's list of batches: that is how a
re-run without a checkpoint finds its batches again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError
from ._errors import BatchLineError, BatchValidationError

__all__ = [
    "ENQUEUED",
    "FILE",
    "MAX_CALLER_KEYS",
    "MODEL",
    "OWN_KEYS",
    "ROWS",
    "SUBMIT",
    "TERMINAL",
    "TOKENS",
    "BatchRef",
    "BatchState",
    "check_metadata",
    "state_from",
]

#: Statuses a batch never leaves.
TERMINAL = ("completed", "failed", "expired", "cancelled")
#: Statuses in which a batch may still hold enqueued tokens (counted until it ends, to be safe).
ENQUEUED = ("validating", "in_progress", "finalizing", "cancelling")

# Metadata dask-llm adds to every batch. OpenAI allows 16 keys, 64-character
# keys and 512-character string values.
ROWS = "dask_llm_rows"
FILE = "dask_llm_file"  # "<i>/<n>": the file's place among those one submit() made
TOKENS = "dask_llm_tokens"  # estimated prompt tokens: re-attached batches count toward the limit
MODEL = "dask_llm_model"  # the batch object's own model is only known after validation
SUBMIT = "dask_llm_submit"  # a nonce per create: finds a batch whose create answer was lost
OWN_KEYS = (ROWS, FILE, TOKENS, MODEL, SUBMIT)
MAX_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS = 16, 64, 512
#: Keys left for the caller's metadata.
MAX_CALLER_KEYS = MAX_KEYS - len(OWN_KEYS)


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Check the caller's metadata leaves room for dask-llm's own keys, and copy it.

    Raises
    ------
    ConfigError
        Not a mapping of strings, too many keys, one too long, or one of dask-llm's own.
    """
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"batch metadata must be a mapping of strings, got {type(metadata).__name__}")
    if len(metadata) > MAX_CALLER_KEYS:
        raise ConfigError(f"batch metadata takes at most {MAX_CALLER_KEYS} keys of the caller's, got {len(metadata)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"batch metadata keys and values must be strings, got {key!r}: {value!r}")
        if len(key) > MAX_KEY_CHARS or len(value) > MAX_VALUE_CHARS:
            raise ConfigError(
                f"batch metadata key {key[:80]!r} or its value is too long "
                f"(at most {MAX_KEY_CHARS} and {MAX_VALUE_CHARS} characters)"
            )
        if key in OWN_KEYS:
            raise ConfigError(f"batch metadata key {key!r} is dask-llm's own")
    return dict(metadata)


@dataclass(frozen=True)
class BatchRef:
    """A batch that was created: enough to poll it, fetch its results, or send its input again.

    Attributes
    ----------
    batch_id : str
        The provider's id, ``batch_...``.
    input_file_id : str
        Its uploaded input file (a batch refused for the enqueued-token limit
        is created again from the same file).
    model : str
        The model (Azure: deployment) of its lines.
    rows : int
        Lines in the input file.
    tokens : int
        Estimated prompt tokens of the lines; 0 if unknown.
    metadata : dict
        The metadata it was created with, dask-llm's keys included.
    custom_ids : tuple of str, optional
        The lines' ids, when this process built the file; ``None`` for a
        batch found by :func:`~dask_llm._batchapi.find` (its results then read
        them from the input file).
    """

    batch_id: str
    input_file_id: str
    model: str
    rows: int
    tokens: int
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    custom_ids: tuple[str, ...] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BatchState:
    """A batch as one look at it found it.

    Attributes
    ----------
    ref : BatchRef
        The batch.
    status : str
        ``validating``, ``in_progress``, ``finalizing``, ``cancelling``, or
        one of :data:`TERMINAL`.
    total, completed, failed : int
        The request counts (``total`` is 0 while validating).
    output_file_id, error_file_id : str or None
        The results files, once the batch has ended.
    errors : tuple of BatchLineError
        Why a ``failed`` batch failed.
    created_at, in_progress_at, finalizing_at, ended_at : int or None
        Unix times from the provider; ``ended_at`` is when it completed,
        failed, expired or was cancelled.
    input_tokens : int or None
        Prompt tokens billed, when the provider reports the batch's usage.
    """

    ref: BatchRef
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: tuple[BatchLineError, ...] = ()
    created_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    ended_at: int | None = None
    input_tokens: int | None = None

    @property
    def terminal(self) -> bool:
        """Whether the batch has ended."""
        return self.status in TERMINAL

    @property
    def token_limited(self) -> bool:
        """Whether it was refused for the enqueued-token limit (and is worth sending again)."""
        return self.status == "failed" and any(error.code == "token_limit_exceeded" for error in self.errors)

    @property
    def invalid(self) -> bool:
        """Whether its input was refused: every line would fail alike, again."""
        return self.status == "failed" and not self.token_limited

    def raise_if_invalid(self) -> None:
        """Raise :class:`BatchValidationError` if the provider refused the input.

        Raises
        ------
        BatchValidationError
            Naming the first errors and their line numbers.
        """
        if self.invalid:
            raise BatchValidationError(self.ref.batch_id, self.errors)


def state_from(batch: Any, ref: BatchRef | None = None) -> BatchState:
    """A :class:`BatchState` from the ``openai`` client's ``Batch``.

    Parameters
    ----------
    batch : openai.types.Batch
        What the provider answered.
    ref : BatchRef, optional
        The caller's ref; rebuilt from the batch's metadata when not given.
    """
    metadata = dict(batch.metadata or {})
    if ref is None:
        ref = BatchRef(
            batch_id=batch.id,
            input_file_id=batch.input_file_id,
            model=batch.model or metadata.get(MODEL, ""),
            rows=_int(metadata.get(ROWS)) or _counts(batch)[0],
            tokens=_int(metadata.get(TOKENS)),
            metadata=metadata,
        )
    total, completed, failed = _counts(batch)
    errors = getattr(batch.errors, "data", None) or []
    usage = getattr(batch, "usage", None)
    ended = next((getattr(batch, f"{s}_at", None) for s in TERMINAL if getattr(batch, f"{s}_at", None)), None)
    return BatchState(
        ref=ref,
        status=batch.status,
        total=total,
        completed=completed,
        failed=failed,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        errors=tuple(
            BatchLineError(code=e.code, message=e.message or "(no message)", line=e.line, param=e.param) for e in errors
        ),
        created_at=batch.created_at,
        in_progress_at=batch.in_progress_at,
        finalizing_at=batch.finalizing_at,
        ended_at=ended,
        input_tokens=getattr(usage, "input_tokens", None),
    )


def _counts(batch: Any) -> tuple[int, int, int]:
    counts = batch.request_counts
    if counts is None:
        return 0, 0, 0
    return counts.total or 0, counts.completed or 0, counts.failed or 0


def _int(text: str | None) -> int:
    try:
        return max(0, int(text)) if text is not None else 0
    except ValueError:
        return 0
