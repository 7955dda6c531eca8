"""Engines: how a frame library runs a job's batches.

An engine adapter does three things, and nothing else: build the lazy
graph that maps :func:`~dask_llm._run.enrich_batch` over the frame's
partitions, give each partition its coordinator handle, and report
progress. Everything a job means (prompts, calls, budget, checkpoint) is
below, in ``_run`` and the packages it uses.

- ``_pandas``: a pandas frame, enriched at once, in this process;
- ``_dask``: a dask frame, lazily, with ``map_partitions``;
- ``_spark``: a pyspark frame, lazily, with ``mapInArrow``, and a coordinator
  started next to the driver.

May import: ``_run``, ``_coordination``, ``_core``, ``_errors``; their frame
library, only inside the adapter that needs it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["engine_for"]


def engine_for(df: Any) -> str | None:
    """The name of the engine for a frame (``None``: no engine takes it),
    decided without importing a frame library the caller has not imported."""
    import sys

    module = type(df).__module__
    if "pandas" in sys.modules and module.startswith("pandas"):
        import pandas as pd

        if isinstance(df, pd.DataFrame):
            return "pandas"
    if "dask.dataframe" in sys.modules:
        import dask.dataframe as dd

        if isinstance(df, dd.DataFrame):
            return "dask"
    if "pyspark" in sys.modules and module.startswith("pyspark"):
        from pyspark.sql import DataFrame

        if isinstance(df, DataFrame):
            return "spark"
    return None
