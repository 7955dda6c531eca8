"""The one error a batch that fails as a whole raises.

A batch fails as a whole when the provider finds its input invalid while
validating it. Every line of it is refused alike, and a follow-up batch
would be refused the same way, so it is an :class:`~dask_llm.EndpointError`
(the job stops with one message), not a million error cells. A batch refused
for the enqueued-token limit is not an error: it is sent again once there is room.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import EndpointError

__all__ = ["BatchLineError", "BatchValidationError"]

#: Validation errors quoted in the message; the rest are counted.
QUOTED = 3


@dataclass(frozen=True)
class BatchLineError:
    """One entry of a failed batch's ``errors.data``.

    Attributes
    ----------
    code : str or None
        E.g. ``"invalid_json_line"``, ``"token_limit_exceeded"``.
    message : str
        The provider's words.
    line : int or None
        1-based line of the input file, when the error is about one line.
    param : str or None
        The parameter at fault, e.g. ``"body.model"``.
    """

    code: str | None
    message: str
    line: int | None = None
    param: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        code = f" ({self.code})" if self.code else ""
        return f"{where}{self.message}{code}"


class BatchValidationError(EndpointError):
    """The provider refused a batch's input file while validating it.

    Attributes
    ----------
    batch_id : str
        The batch that failed.
    errors : tuple of BatchLineError
        What the provider reported, in its order.
    """

    def __init__(self, batch_id: str, errors: tuple[BatchLineError, ...] = ()) -> None:
        self.batch_id = batch_id
        self.errors = tuple(errors)
        super().__init__(_message(batch_id, self.errors))

    def __reduce__(self) -> tuple[type, tuple[str, tuple[BatchLineError, ...]]]:
        # Keep the attributes across pickling: workers raise it, the client shows it.
        return (type(self), (self.batch_id, self.errors))


def _message(batch_id: str, errors: tuple[BatchLineError, ...]) -> str:
    if not errors:
        return f"batch {batch_id} failed validation and the provider gave no reason"
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    quoted = "; ".join(str(error) for error in errors[:QUOTED])
    more = f"; and {len(errors) - QUOTED} more" if len(errors) > QUOTED else ""
    return f"batch {batch_id} failed validation ({count}): {quoted}{more}"
