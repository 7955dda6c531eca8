"""The Spark engine: ``mapInArrow`` over a pyspark DataFrame, lazily.

Spark has no scheduler to host what must be one per job (the budget, the
spend ledger, progress), so the driver starts a coordinator of its own: a
``distributed`` scheduler with dask-llm's plugin, bound to
``spark.driver.host`` (see :mod:`dask_llm._coordination._server`). Every
Python worker reaches it over TCP through one client per process, so one
``Budget`` and one ``SpendCap`` hold across every executor, as on Dask.

Spark's Python workers hand over Arrow record batches; each is one batch
for :func:`~dask_llm._run.enrich_batch` (rows are keyed by content, not by
partition, so Spark's batching is free to change between runs), and comes
back cast to the declared schema (Spark matches columns by position and
exact Arrow type).

What the partition function learns from Spark is only its partition number
(to name checkpoint files): retries and speculative copies of a task are
told apart by nothing else, and are made harmless by the checkpoint's row
identity and the coordinator's partition lease.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa

from .._errors import ConfigError
from .._run import Job, enrich_batch

__all__ = ["driver_coordinator", "enrich_spark", "output_arrow_schema", "spark_dtypes"]


def spark_dtypes(sdf: Any) -> pd.Series:
    """The frame's columns as pandas dtypes, for the template checks."""
    from pyspark.sql import types as T

    kinds: dict[str, Any] = {}
    for f in sdf.schema.fields:
        t = f.dataType
        if isinstance(t, T.StringType):
            kinds[f.name] = pd.StringDtype()
        elif isinstance(t, T.BooleanType):
            kinds[f.name] = "bool"
        elif isinstance(t, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
            kinds[f.name] = "int64"
        elif isinstance(t, (T.FloatType, T.DoubleType, T.DecimalType)):
            kinds[f.name] = "float64"
        else:
            kinds[f.name] = "object"
    return pd.Series(kinds, dtype=object)


def _arrow_type(dtype: Any) -> pa.DataType:
    if isinstance(dtype, pd.ArrowDtype):
        return dtype.pyarrow_dtype
    if isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype)):
        return pa.string()  # categories travel as their text
    name = str(dtype)
    return {
        "Int64": pa.int64(),
        "int64": pa.int64(),
        "Float64": pa.float64(),
        "float64": pa.float64(),
        "boolean": pa.bool_(),
        "bool": pa.bool_(),
    }.get(name, pa.string())


def output_arrow_schema(input_schema: pa.Schema, job: Job) -> pa.Schema:
    """The Arrow schema of the enriched batches: the input's, then the output columns."""
    fields = list(input_schema)
    fields += [pa.field(name, _arrow_type(dtype)) for name, dtype in job.outputs.dtypes.items()]
    return pa.schema(fields)


def driver_coordinator(spark: Any, address: str | None = None) -> str:
    """The coordinator's address: ``address`` when given (one the user runs),
    else one started in this driver process on ``spark.driver.host``."""
    if address is not None:
        return address
    from .._coordination._server import serve

    host = spark.sparkContext.getConf().get("spark.driver.host", "127.0.0.1")
    return serve(host).address


def enrich_spark(sdf: Any, job: Job, *, coordinator: str | None = None) -> Any:
    """The lazy enrichment of a pyspark DataFrame (nothing runs until an action)."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    spark = sdf.sparkSession
    _check_python(spark)
    if _speculating(spark):
        warnings.warn(
            "spark.speculation is on: a speculative copy of a task waits for the first copy to finish "
            "(a partition lease on dask-llm's coordinator) and then restores its rows from the "
            "checkpoint; without checkpoint= both copies call the model for the same rows",
            UserWarning,
            stacklevel=3,
        )
    address = driver_coordinator(spark, coordinator)
    job = _with(job, coordinator=address, key=job.key if job.key is not None else ())
    arrow_schema = output_arrow_schema(to_arrow_schema(sdf.schema), job)
    spark_schema = from_arrow_schema(arrow_schema)

    def partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        number = context.partitionId() if context is not None else 0
        for i, batch in enumerate(batches):
            table = enrich_batch(pa.Table.from_batches([batch]), job, number=number, part=f"{number}.{i}")
            yield from table.select(arrow_schema.names).cast(arrow_schema).to_batches()

    with warnings.catch_warnings():
        # PySpark 4 warns that pandas >= 3 is not fully supported on every
        # mapInArrow call; Arrow batches keep Spark's pandas conversion out
        # of the data path, so the warning does not apply.
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        return sdf.mapInArrow(partition, spark_schema)


def _with(job: Job, **changes: Any) -> Job:
    import dataclasses

    return dataclasses.replace(job, **changes)


def _check_python(spark: Any) -> None:
    """Python workers must run an interpreter that has dask-llm (and pyarrow);
    Spark starts ``PYSPARK_PYTHON``, by default the system's ``python3``."""
    executable = getattr(spark.sparkContext, "pythonExec", None) or os.environ.get("PYSPARK_PYTHON")
    if executable in (None, "python3", "python") and sys.prefix != sys.base_prefix:
        raise ConfigError(
            "Spark's Python workers would start the system interpreter, which lacks dask-llm: set "
            f"os.environ['PYSPARK_PYTHON'] = {sys.executable!r} before creating the SparkSession "
            "(or point PYSPARK_PYTHON at the interpreter the executors should run)"
        )


def _speculating(spark: Any) -> bool:
    try:
        return str(spark.sparkContext.getConf().get("spark.speculation", "false")).lower() == "true"
    except Exception:
        return False
