"""``df.llm.enrich(...)`` on pandas and dask frames."""

from __future__ import annotations

from typing import Any

import dask.dataframe as dd
import pandas as pd
from dask.dataframe.extensions import register_dataframe_accessor as register_dask

from ._api import enrich as _enrich

__all__ = ["LLMAccessor"]


class LLMAccessor:
    """The ``.llm`` namespace of a DataFrame.

    ``df.llm.enrich(prompt=..., column=..., model=...)`` is
    ``dask_llm.enrich(df, ...)``: lazy on a dask frame, eager on a pandas one.
    """

    def __init__(self, obj: pd.DataFrame | dd.DataFrame) -> None:
        self._obj = obj

    def enrich(self, prompt: str, column: str, model: str, **kwargs: Any) -> Any:
        return _enrich(self._obj, prompt, column, model, **kwargs)

    enrich.__doc__ = _enrich.__doc__


pd.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)
register_dask("llm")(LLMAccessor)
