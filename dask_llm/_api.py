"""``enrich``: the public entry point, and the ``.llm`` accessors."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, overload

import dask.dataframe as dd
import pandas as pd

from ._budget import Budget
from ._checkpoint import open_checkpoint
from ._config import Endpoint, RetryPolicy
from ._errors import ConfigError
from ._manifest import RunSpec
from ._prompt import Prompt
from ._runner import Job, enrich_partition
from ._schema import OutputColumns

__all__ = ["enrich"]

Frame = TypeVar("Frame", pd.DataFrame, dd.DataFrame)

#: Request fields that enrich() sets itself.
_RESERVED_PARAMS = frozenset({"model", "messages", "stream", "n"})


@overload
def enrich(df: pd.DataFrame, prompt: str, column: str, model: str, **kwargs: Any) -> pd.DataFrame: ...
@overload
def enrich(df: dd.DataFrame, prompt: str, column: str, model: str, **kwargs: Any) -> dd.DataFrame: ...


def enrich(
    df: Frame,
    prompt: str,
    column: str,
    model: str,
    *,
    endpoint: Endpoint | None = None,
    system: str | None = None,
    threads: int = 16,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    on_error: Literal["store", "raise"] = "store",
    budget: Budget | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
) -> Frame:
    """Add a column of LLM answers, one chat completion per row.

    Parameters
    ----------
    df : dask.dataframe.DataFrame or pandas.DataFrame
        The input. A dask frame gives a lazy dask frame (nothing is called
        until it is computed); a pandas frame is enriched at once.
    prompt : str
        User-message template; ``{name}`` is replaced by the row's value of
        column ``name`` (a missing value by an empty string). ``{{`` and ``}}``
        are literal braces.
    column : str
        Name of the new column; the metadata columns are named after it
        (see Returns).
    model : str
        Model name (for Azure, the deployment name unless
        ``Endpoint.azure_deployment`` is set).
    endpoint : Endpoint, optional
        Where to send requests; default :class:`Endpoint` filled from the
        ``OPENAI_*`` / ``AZURE_OPENAI_*`` environment variables of this process.
    system : str, optional
        System message, a template like ``prompt``.
    threads : int
        Concurrent calls per partition.
    temperature, max_tokens : optional
        Passed to the model when set.
    params : mapping, optional
        Further chat-completion parameters, passed through as they are
        (``top_p``, ``seed``, ``response_format``, ...).
    retry : RetryPolicy, optional
        Retries of transient failures; default ``RetryPolicy()``.
    on_error : {"store", "raise"}
        ``"store"``: a row that fails after its retries gets its error in the
        error column and the job goes on. ``"raise"``: the first such row
        fails the job with :class:`RowError`.
    budget : Budget, optional
        Limits shared by every call of the job across the whole cluster:
        calls in flight, requests and tokens per minute, and a cool-down
        that a 429 imposes on every worker. Pass the same :class:`Budget`
        (or one with the same name) to several enrichments to make them share
        it. Without a ``distributed`` client it is enforced in-process.
        Default: no limit besides ``threads`` per partition.
    checkpoint : str or path-like, optional
        A directory on any fsspec filesystem (local path, ``"s3://bucket/run/"``,
        ``"memory://..."``) that makes the job resumable: each finished
        partition is committed there atomically as a Parquet file, and finished
        rows of unfinished partitions are journaled as they come. Running the
        same enrichment again with the same checkpoint calls the model only for
        rows it does not hold. The directory reads back as one dataset with
        ``dd.read_parquet(checkpoint)`` (input columns, index and output
        columns). Every worker must be able to reach it: on a cluster of
        several machines, use shared storage.
    storage_options : mapping, optional
        fsspec options for ``checkpoint`` (credentials, ``client_kwargs``, ...);
        they travel to the workers with the job.
    retry_errors : bool
        With ``checkpoint``: call again the rows whose stored outcome is an
        error, instead of keeping the error.
    overwrite : bool
        With ``checkpoint``: discard the run stored there (its partitions and
        journal; other files are left alone) and start a new one. Needed when
        the prompt, system message, model, parameters or column changed.

    Returns
    -------
    The same kind of frame with every input column and row, in order, plus:

    - ``<column>`` (string): the answer, null when the row failed;
    - ``<column>_error`` (string): why the row failed, null on success;
    - ``<column>_prompt_tokens``, ``<column>_completion_tokens`` (Int64):
      tokens billed, from the response's ``usage``;
    - ``<column>_attempts`` (int64): calls made for the row;
    - ``<column>_latency_s`` (float64): seconds from the first attempt to
      the outcome, back-off included.

    Raises
    ------
    TemplateError
        The prompt names a column the frame lacks; raised here, before any call.
    ConfigError
        Any other bad argument, e.g. no API key for OpenAI's API.
    EndpointError
        At compute time, when the endpoint fails every row alike (credentials
        refused, unknown model, nothing answering).
    CheckpointError
        Here, before any call: ``checkpoint`` cannot be written, or holds
        another run (and ``overwrite`` is not set). At compute time: a commit
        or journal write failed. Rows saved before it stand.

    Notes
    -----
    A crash (killed driver or worker, Ctrl+C, an endpoint error) loses at most
    the calls in flight plus the finished rows not yet journaled: a chunk is
    written every ``dask-llm.checkpoint.journal-rows`` rows (default 16) or
    ``dask-llm.checkpoint.journal-interval`` (default ``"5s"``), dask config
    settings read by ``enrich()``. With ``journal-rows`` 1, only calls in
    flight are lost.
    """
    job = _make_job(
        df, prompt, column, model, endpoint=endpoint, system=system, threads=threads,
        temperature=temperature, max_tokens=max_tokens, params=params, retry=retry,
        on_error=on_error,
    )
    if budget is not None and not isinstance(budget, Budget):
        raise ConfigError(f"budget= must be a dask_llm.Budget, got {type(budget).__name__}")
    job = dataclasses.replace(job, budget=budget)
    job = _with_checkpoint(job, df, checkpoint, storage_options, retry_errors, overwrite)
    if isinstance(df, pd.DataFrame):
        return enrich_partition(df, job)
    meta = pd.concat([df._meta, job.outputs.empty(df._meta.index)], axis=1)
    # meta is given, so dask never calls enrich_partition on fake data, which
    # would be a paid call at graph-construction time.
    return df.map_partitions(enrich_partition, job, meta=meta, token=f"llm-{column}")


def _make_job(
    df: Any,
    prompt: str,
    column: str,
    model: str,
    *,
    endpoint: Endpoint | None,
    system: str | None,
    threads: int,
    temperature: float | None,
    max_tokens: int | None,
    params: Mapping[str, Any] | None,
    retry: RetryPolicy | None,
    on_error: str,
) -> Job:
    if not isinstance(df, (pd.DataFrame, dd.DataFrame)):
        raise ConfigError(f"enrich() takes a pandas or dask DataFrame, not {type(df).__name__}")
    if not isinstance(column, str) or not column:
        raise ConfigError("column= must be a non-empty string")
    if not isinstance(model, str) or not model:
        raise ConfigError("model= must be a non-empty string")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads= must be a positive integer, got {threads!r}")
    if on_error not in ("store", "raise"):
        raise ConfigError(f"on_error= must be 'store' or 'raise', got {on_error!r}")
    template = Prompt(prompt, system)
    template.check_columns(df.columns)
    outputs = OutputColumns(column)
    outputs.check_free(df.columns)
    merged = dict(params or {})
    bad = sorted(_RESERVED_PARAMS & merged.keys())
    if bad:
        raise ConfigError(f"params= may not set {', '.join(bad)}: enrich() sets them itself")
    if temperature is not None:
        merged["temperature"] = temperature
    if max_tokens is not None:
        merged["max_tokens"] = max_tokens
    return Job(
        prompt=template,
        outputs=outputs,
        model=model,
        endpoint=(endpoint or Endpoint()).resolve(),
        params=merged,
        threads=threads,
        retry=retry or RetryPolicy(),
        on_error=on_error,  # type: ignore[arg-type]
    )


def _with_checkpoint(
    job: Job,
    df: Any,
    checkpoint: str | os.PathLike[str] | None,
    storage_options: Mapping[str, Any] | None,
    retry_errors: bool,
    overwrite: bool,
) -> Job:
    """``job`` with its checkpoint opened and checked. Runs last in ``enrich()``:
    the probe and manifest writes happen only once every other argument is good."""
    if checkpoint is None:
        if storage_options is not None or retry_errors or overwrite:
            raise ConfigError("storage_options=, retry_errors= and overwrite= need checkpoint=")
        return job
    if not isinstance(checkpoint, (str, os.PathLike)) or not os.fspath(checkpoint):
        raise ConfigError(f"checkpoint= must be a path or URL, got {checkpoint!r}")
    spec = RunSpec(
        prompt=job.prompt.template,
        system=job.prompt.system,
        model=job.model,
        params=job.params,
        columns={name: str(dtype) for name, dtype in job.outputs.dtypes.items()},
    )
    opened = open_checkpoint(
        checkpoint, storage_options, spec, retry_errors=bool(retry_errors),
        overwrite=bool(overwrite), npartitions=getattr(df, "npartitions", 1),
    )
    return dataclasses.replace(job, checkpoint=opened)
