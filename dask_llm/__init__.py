"""dask-llm: enrich large dataframes with LLM output.

>>> import dask_llm
>>> out = dask_llm.enrich(ddf, prompt="Classify: {text}", column="label",
...                       model="gpt-4o-mini")          # doctest: +SKIP

Importing the package is light: the public names are loaded on first use,
and the ``.llm`` accessor is registered on pandas and dask DataFrames as
soon as those libraries are imported (before or after this package).

The layout, bottom to top (a package imports only those below it):
``_errors``, ``_config`` -> ``_core`` (prompt, schema, storage, dedup) ->
``_calls`` (one bounded attempt) -> ``_budget``, ``_cost``, ``_checkpoint``
-> ``_coordination`` (the one place per job) -> ``_run`` (a batch of rows:
prompts -> budgeted calls -> columns -> commit) -> ``_engines`` (pandas,
dask) -> ``_api`` (``enrich``) -> ``cli``. ``simulator`` stands alone.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING, Any

from . import _accessor

__version__ = "0.2.0"

__all__ = [
    "AuthenticationError",
    "BatchAPI",
    "Budget",
    "CheckpointError",
    "ConfigError",
    "DaskLLMError",
    "Endpoint",
    "EndpointError",
    "EndpointUnreachableError",
    "Estimate",
    "ModelNotFoundError",
    "OutputColumns",
    "Price",
    "ResponseCache",
    "RetryPolicy",
    "RowError",
    "RunReport",
    "RunSummary",
    "SpendCap",
    "TemplateError",
    "__version__",
    "enrich",
    "estimate",
    "report",
    "summarize",
]

#: Where each public name lives.
_WHERE = {
    "AuthenticationError": "._errors",
    "CheckpointError": "._errors",
    "ConfigError": "._errors",
    "DaskLLMError": "._errors",
    "EndpointError": "._errors",
    "EndpointUnreachableError": "._errors",
    "ModelNotFoundError": "._errors",
    "RowError": "._errors",
    "TemplateError": "._errors",
    "Endpoint": "._config",
    "RetryPolicy": "._config",
    "Budget": "._budget",
    "BatchAPI": "._batchapi",
    "OutputColumns": "._core._schema",
    "Price": "._cost._pricing",
    "ResponseCache": "._cost._cache",
    "RunSummary": "._cost._summary",
    "summarize": "._cost._summary",
    "SpendCap": "._cost._spend",
    "Estimate": "._estimate",
    "estimate": "._estimate",
    "enrich": "._api",
    "RunReport": "._report",
    "report": "._report",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'dask_llm' has no attribute {name!r}")
    value = getattr(_importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names, whether loaded yet or not; not the helpers above.
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__")})


_accessor.install()

if TYPE_CHECKING:
    from ._api import enrich
    from ._batchapi import BatchAPI
    from ._budget import Budget
    from ._config import Endpoint, RetryPolicy
    from ._core._schema import OutputColumns
    from ._cost._cache import ResponseCache
    from ._cost._pricing import Price
    from ._cost._spend import SpendCap
    from ._cost._summary import RunSummary, summarize
    from ._errors import (
        AuthenticationError,
        CheckpointError,
        ConfigError,
        DaskLLMError,
        EndpointError,
        EndpointUnreachableError,
        ModelNotFoundError,
        RowError,
        TemplateError,
    )
    from ._estimate import Estimate, estimate
    from ._report import RunReport, report
