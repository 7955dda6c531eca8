"""The exceptions dask-llm raises.

::

    DaskLLMError
     ├── ConfigError            bad arguments, caught by ``enrich()`` before any call
     │    └── TemplateError     a prompt names a column the frame does not have
     ├── EndpointError          the endpoint fails every row alike; retrying rows cannot help
     │    ├── AuthenticationError      credentials refused (401/403) or quota gone
     │    ├── ModelNotFoundError       the endpoint does not serve the model (404)
     │    └── EndpointUnreachableError consecutive rows could not connect at all
     ├── CheckpointError        the checkpoint cannot be written, or holds another run
     └── RowError               a row failed and ``on_error="raise"`` was asked for

A failed row is *data* by default: its message lands in the error column and
the job goes on. Only endpoint-wide failures and ``on_error="raise"`` stop a
job. Every exception keeps its attributes through pickling, so the message a
worker process raises is the one the user sees.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = [
    "AuthenticationError",
    "CheckpointError",
    "ConfigError",
    "DaskLLMError",
    "EndpointError",
    "EndpointUnreachableError",
    "ModelNotFoundError",
    "RowError",
    "TemplateError",
    "option",
    "vocabulary",
]


class DaskLLMError(Exception):
    """Base class of every error dask-llm raises on purpose."""


class ConfigError(DaskLLMError, ValueError):
    """An argument is wrong; raised before any model call is made."""


class TemplateError(ConfigError, KeyError):
    """A prompt template is malformed or names a missing column."""

    def __str__(self) -> str:
        # KeyError would print the message wrapped in quotes.
        return str(self.args[0]) if self.args else ""


class EndpointError(DaskLLMError):
    """The endpoint cannot serve this job; every row would fail alike."""


class AuthenticationError(EndpointError):
    """The endpoint refused the credentials, or the account has no quota."""


class ModelNotFoundError(EndpointError):
    """The endpoint answered 404: wrong model name, deployment or base URL."""


class EndpointUnreachableError(EndpointError):
    """Consecutive rows could not open a connection to the endpoint."""


class CheckpointError(DaskLLMError):
    """The checkpoint storage cannot be used.

    Raised by ``enrich()`` before any call when the checkpoint path cannot be
    written or holds a different run (another prompt, model or parameters),
    and at compute time when a commit or journal write fails. The storage
    error that caused it, if any, is chained as ``__cause__``.
    """


class RowError(DaskLLMError):
    """A row failed after its retries while ``on_error="raise"``.

    Attributes
    ----------
    row : object
        The index label of the row in its input frame.
    """

    row: object = None

    def __init__(self, message: str, row: object = None) -> None:
        super().__init__(message)
        self.row = row


# -- the vocabulary of messages -----------------------------------------------

_VOCABULARY: contextvars.ContextVar[str] = contextvars.ContextVar("dask_llm_vocabulary", default="python")


@contextlib.contextmanager
def vocabulary(kind: str) -> Iterator[None]:
    """Word the messages raised inside for ``kind`` (``"python"`` or ``"cli"``):
    ``dask-llm run`` says ``--overwrite`` where Python says ``overwrite=True``."""
    token = _VOCABULARY.set(kind)
    try:
        yield
    finally:
        _VOCABULARY.reset(token)


def option(name: str, value: object = True) -> str:
    """How the user sets option ``name`` to ``value`` in the interface they called."""
    if _VOCABULARY.get() == "cli":
        flag = "--" + name.replace("_", "-")
        return flag if value is True else f"{flag} {value}"
    return f"{name}={value!r}"
