"""dask-llm: enrich large dataframes with LLM output.

>>> import dask_llm
>>> out = dask_llm.enrich(ddf, prompt="Classify: {text}", column="label",
...                       model="gpt-4o-mini")          # doctest: +SKIP

Importing the package also registers the ``.llm`` accessor on pandas and
dask DataFrames.
"""

from . import _accessor  # noqa: F401  (registers df.llm)
from ._api import enrich
from ._budget import Budget
from ._cache import ResponseCache
from ._config import Endpoint, RetryPolicy
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
from ._pricing import Price
from ._schema import OutputColumns
from ._spend import SpendCap
from ._summary import RunSummary, summarize

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
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
    "RunSummary",
    "SpendCap",
    "TemplateError",
    "__version__",
    "enrich",
    "estimate",
    "summarize",
]
