"""The columns ``enrich`` adds, with one fixed schema.

The schema never depends on the data: an all-null error column must still be
written as a string column, or pyarrow infers a null type for that partition
and the dataset no longer reads back as one table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from .._errors import ConfigError

if TYPE_CHECKING:
    from ._structured import StructuredOutput

__all__ = ["OutputColumns"]

STRING = pd.StringDtype("pyarrow")


@dataclass(frozen=True)
class OutputColumns:
    """Names and dtypes of the columns added for output column ``column``.

    ============================  ========  =====================================
    name                          dtype     meaning
    ============================  ========  =====================================
    ``<column>``                  string    the model's answer; null when failed
    ``<column>_error``            string    why the row failed; null on success
    ``<column>_prompt_tokens``    Int64     prompt tokens billed (from ``usage``)
    ``<column>_completion_tokens`` Int64    completion tokens billed
    ``<column>_attempts``         int64     calls made for the row (0: not called)
    ``<column>_latency_s``        float64   seconds from first attempt to outcome
    ``<column>_rate_limited``     int64     attempts answered 429
    ============================  ========  =====================================

    With ``structured`` (``enrich(output=...)``), ``<column>`` holds the raw
    JSON answer and each field of the schema gets a typed column of its own,
    named after the field (see :mod:`._structured`).
    """

    column: str
    structured: StructuredOutput | None = None

    @property
    def value(self) -> str:
        return self.column

    @property
    def error(self) -> str:
        return f"{self.column}_error"

    @property
    def prompt_tokens(self) -> str:
        return f"{self.column}_prompt_tokens"

    @property
    def completion_tokens(self) -> str:
        return f"{self.column}_completion_tokens"

    @property
    def attempts(self) -> str:
        return f"{self.column}_attempts"

    @property
    def latency(self) -> str:
        return f"{self.column}_latency_s"

    @property
    def rate_limited(self) -> str:
        return f"{self.column}_rate_limited"

    @property
    def by_field(self) -> dict[str, str]:
        """Column name of each :class:`~dask_llm._run._runner.Outcome` field."""
        return {
            "text": self.value,
            "error": self.error,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "attempts": self.attempts,
            "latency": self.latency,
            "rate_limited": self.rate_limited,
        }

    @property
    def dtypes(self) -> dict[str, object]:
        dtypes: dict[str, object] = {
            self.value: STRING,
            self.error: STRING,
            self.prompt_tokens: "Int64",
            self.completion_tokens: "Int64",
            self.attempts: "int64",
            self.latency: "float64",
            self.rate_limited: "int64",
        }
        if self.structured is not None:
            clash = sorted(set(self.structured.dtypes) & set(dtypes))
            if clash:
                raise ConfigError(
                    f"output= field(s) {', '.join(map(repr, clash))} clash with the columns of "
                    f"column={self.column!r}; choose another column= name"
                )
            dtypes.update(self.structured.dtypes)
        return dtypes

    def check_free(self, existing: Iterable[object]) -> None:
        """Refuse to overwrite input columns."""
        clash = sorted(set(self.dtypes) & {str(c) for c in existing})
        if clash:
            raise ConfigError(
                f"output column(s) {', '.join(map(repr, clash))} already exist in the "
                f"frame; choose another column= name"
            )

    def empty(self, index: pd.Index) -> pd.DataFrame:
        """All-null output columns on ``index``, with the final dtypes."""
        return pd.DataFrame(
            {name: pd.Series(index=index, dtype=dtype) for name, dtype in self.dtypes.items()},
            index=index,
        )
