"""``enrich``: the public entry point, and the ``.llm`` accessors."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._batchapi import BatchAPI
from ._budget import Budget, adaptive_budget
from ._checkpoint import RunSpec, open_checkpoint
from ._config import Endpoint, RetryPolicy
from ._core._prompt import Prompt
from ._core._schema import OutputColumns
from ._core._structured import structured_output
from ._cost._cache import ResponseCache
from ._cost._pricing import PriceTable, price_for
from ._cost._spend import SpendCap
from ._engines import engine_for
from ._errors import ConfigError
from ._run import Job, ProgressChannel

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

__all__ = ["enrich", "run_fingerprint"]

Frame = TypeVar("Frame", "pd.DataFrame", "dd.DataFrame")

#: Request fields that enrich() sets itself.
_RESERVED_PARAMS = frozenset({"model", "messages", "stream", "n"})


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
    budget: Budget | Literal[False] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
    output: Any = None,
    spend_cap: SpendCap | None = None,
    prices: PriceTable | None = None,
    dedup: bool = True,
    cache: ResponseCache | str | None = None,
    progress: ProgressChannel | None = None,
    key: str | Sequence[str] | None = None,
    coordinator: str | None = None,
    batch: bool | BatchAPI | None = None,
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
    budget : Budget or False, optional
        Limits shared by every call of the job across the whole cluster:
        calls in flight, requests and tokens per minute, and a cool-down
        that a 429 imposes on every worker. Pass the same :class:`Budget`
        (or one with the same name) to several enrichments to make them share
        it. Without a ``distributed`` client it is enforced in-process.
        Default (``None``): an adaptive budget, shared by every enrichment of
        the same model at the same endpoint, that adopts the provider's
        announced limits (``x-ratelimit-limit-*``), backs off on 429s and
        probes upward while clean, so that rows are not lost to 429s.
        ``False``: no budget at all (nothing but ``threads`` per partition).
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
    output : Pydantic model class or JSON schema dict, optional
        Structured output: the request asks for JSON that fits this schema
        (a strict ``json_schema`` ``response_format``), each answer is
        validated, an invalid one is retried (up to ``retry.max_attempts``)
        and then stored as an error with the raw answer kept in
        ``<column>``; each top-level field becomes a typed column named
        after it (string, category for enums, Int64, Float64, boolean, Arrow
        list/struct for arrays and objects).
    spend_cap : SpendCap, optional
        The most the whole run may spend, in USD (``max_cost``) and/or tokens
        billed (``max_tokens``), across the cluster. Rows past it get a
        ``"budget exhausted: ..."`` error without a call; with ``checkpoint``
        they are left for a later run (give it a higher cap).
    prices : mapping, optional
        Model -> :class:`Price` (or ``(input, output)`` USD per million
        tokens), before the built-in table; prices ``spend_cap.max_cost``.
    dedup : bool
        Send identical requests (same model, messages and parameters) once
        and share the answer: within a partition, and between partitions
        that run in the same process. Rows that got a shared answer show
        0 attempts and no tokens.
    cache : ResponseCache or str, optional
        A response cache on any fsspec storage, keyed by the request: answers
        found there are not requested again, new accepted answers are added.
        Shares answers between worker processes and between runs.
    progress : ProgressChannel, optional
        Where partitions report their rows as they finish, for a live
        progress display (``dask-llm run`` uses it; see ``dask_llm._run._progress``).
    batch : bool or BatchAPI, optional
        Send the rows through the OpenAI Batch API (half the price; answers
        within ``completion_window``, 24 h) instead of synchronous calls:
        ``True`` for the defaults, or a :class:`BatchAPI` for options. Every
        partition submits its batches before any waits for them; with
        ``checkpoint`` each batch is recorded the moment it exists, so a
        re-run re-attaches to the batches instead of creating new ones
        (without a checkpoint, it finds them by their metadata). pandas and
        dask frames.
    coordinator : str, optional
        Spark only: the address (``tcp://host:port``) of a running dask-llm
        coordinator (a ``distributed`` scheduler) that every executor can
        reach. Default: one started in the driver on ``spark.driver.host``.
    key : str or list of str, optional
        With ``checkpoint``: the column(s) that identify a row, instead of
        the index. A row is "already paid for" when a row with the same
        request content and the same key was answered, whatever the
        partitioning (see Notes). Pass it when the index is not stable
        between runs, e.g. ``dd.read_csv``, which numbers each block's rows
        from 0, with another ``blocksize``.

    Returns
    -------
    The same kind of frame with every input column and row, in order, plus:

    - ``<column>`` (string): the answer, null when the row failed;
    - ``<column>_error`` (string): why the row failed, null on success;
    - ``<column>_prompt_tokens``, ``<column>_completion_tokens`` (Int64):
      tokens billed, from the response's ``usage``;
    - ``<column>_attempts`` (int64): calls made for the row;
    - ``<column>_latency_s`` (float64): seconds from the first attempt to
      the outcome, back-off included;
    - ``<column>_rate_limited`` (int64): attempts answered 429;
    - with ``output=``, one typed column per field of the schema.

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
    With ``checkpoint``, a row is identified by its request content (the
    values of the columns the prompt reads), its index value (or ``key``)
    and, for exact duplicates within a partition, its occurrence. A run with
    other partitions (``npartitions``, ``repartition``, another blocksize or
    file split, a shuffle, appended rows) calls only the rows whose identity
    has no stored answer; with ``dedup=True`` a row whose key changed but
    whose request was answered takes that answer without a call. The
    checkpoint reads back (``dd.read_parquet``) as the latest run's rows,
    each exactly once.

    A crash (killed driver or worker, Ctrl+C, an endpoint error) loses at most
    the calls in flight plus the rows that finished during one journal write:
    a background thread writes finished rows continuously, each write taking
    whatever finished since the previous one returned.
    """
    job = _make_job(
        df,
        prompt,
        column,
        model,
        endpoint=endpoint,
        system=system,
        threads=threads,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        retry=retry,
        on_error=on_error,
    )
    if budget is None:
        budget = adaptive_budget(job.endpoint, job.model)
    elif budget is False:
        budget = None
    elif not isinstance(budget, Budget):
        raise ConfigError(f"budget= must be a dask_llm.Budget or False, got {type(budget).__name__}")
    job = dataclasses.replace(job, budget=budget, progress=progress)
    job = _with_accounting(job, df, output, spend_cap, prices, dedup, cache)
    job = _with_checkpoint(job, df, checkpoint, storage_options, retry_errors, overwrite, key)
    engine = engine_for(df)
    job = _with_batch(job, batch, engine, spend_cap, cache)
    if coordinator is not None and engine != "spark":
        raise ConfigError("coordinator= is for Spark frames; a Dask job's coordinator is its scheduler")
    if engine == "pandas":
        from ._engines._pandas import enrich_pandas

        return enrich_pandas(df, job)
    if engine == "spark":
        from ._engines._spark import enrich_spark

        return enrich_spark(df, job, coordinator=coordinator)
    from ._engines._dask import enrich_dask

    return enrich_dask(df, job)


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
    if engine_for(df) is None:
        raise ConfigError(f"enrich() takes a pandas, dask or pyspark DataFrame, not {type(df).__name__}")
    if not isinstance(column, str) or not column:
        raise ConfigError("column= must be a non-empty string")
    if not isinstance(model, str) or not model:
        raise ConfigError("model= must be a non-empty string")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads= must be a positive integer, got {threads!r}")
    if on_error not in ("store", "raise"):
        raise ConfigError(f"on_error= must be 'store' or 'raise', got {on_error!r}")
    template = Prompt(prompt, system)
    template.check_columns(df.columns, _dtypes(df))
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


def _with_batch(
    job: Job, batch: bool | BatchAPI | None, engine: str | None, spend_cap: SpendCap | None, cache: Any
) -> Job:
    """``job`` sent through the Batch API, when asked for and possible."""
    job = dataclasses.replace(job, run_spec=_spec(job).fingerprint)
    if batch is None or batch is False:
        return job
    options = BatchAPI() if batch is True else batch
    if not isinstance(options, BatchAPI):
        raise ConfigError(f"batch= must be True or a dask_llm.BatchAPI, got {type(batch).__name__}")
    if engine == "spark":
        raise ConfigError("batch= is not available on Spark frames yet; use a pandas or dask frame")
    if spend_cap is not None:
        raise ConfigError("spend_cap= does not apply to batch=: a batch is billed as a whole, not per call")
    if cache is not None:
        raise ConfigError("cache= does not apply to batch=: the batch's answers are kept by the checkpoint")
    price = job.price.for_batch() if job.price is not None else None
    return dataclasses.replace(job, batch=options, price=price)


def run_fingerprint(
    df: Any,
    prompt: str,
    column: str,
    model: str,
    *,
    endpoint: Endpoint | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """The fingerprint of what decides the answers of
    ``enrich(df, prompt, column, model, ...)``: what names its batches at
    the provider (``dask-llm run --batch --cancel`` finds them by it)."""
    job = _make_job(df, prompt, column, model, endpoint=endpoint, system=system, threads=1, temperature=temperature,
                    max_tokens=max_tokens, params=params, retry=None, on_error="store")  # fmt: skip
    return _spec(job).fingerprint


def _spec(job: Job) -> RunSpec:
    """What decides the answers of the job."""
    return RunSpec(
        prompt=job.prompt.template,
        system=job.prompt.system,
        model=job.model,
        params=job.params,
        columns={name: str(dtype) for name, dtype in job.outputs.dtypes.items()},
    )


def _dtypes(df: Any) -> Any:
    """The frame's column dtypes as pandas dtypes (Spark describes its own)."""
    if engine_for(df) == "spark":
        from ._engines._spark import spark_dtypes

        return spark_dtypes(df)
    return df.dtypes


def _with_accounting(
    job: Job,
    df: Any,
    output: Any,
    spend_cap: SpendCap | None,
    prices: PriceTable | None,
    dedup: bool,
    cache: ResponseCache | str | None,
) -> Job:
    """``job`` with structured output, spend cap, de-duplication and cache set and checked."""
    changes: dict[str, Any] = {"dedup": bool(dedup), "run_id": uuid.uuid4().hex}
    if output is not None:
        structured = structured_output(output)
        if "response_format" in job.params:
            raise ConfigError("output= sets response_format itself; do not pass it in params= as well")
        outputs = OutputColumns(job.outputs.column, structured)
        outputs.check_free(df.columns)
        changes["outputs"] = outputs
        changes["params"] = {**job.params, "response_format": structured.response_format}
    if spend_cap is not None and not isinstance(spend_cap, SpendCap):
        raise ConfigError(f"spend_cap= must be a dask_llm.SpendCap, got {type(spend_cap).__name__}")
    price = price_for(job.model, prices)
    if spend_cap is not None and spend_cap.max_cost is not None and price is None:
        raise ConfigError(
            f"spend_cap=SpendCap(max_cost=...) needs the price of model {job.model!r}: "
            f"pass prices={{{job.model!r}: dask_llm.Price(input=..., output=...)}} (USD per million tokens)"
        )
    changes.update(spend_cap=spend_cap, price=price)
    if isinstance(cache, str):
        cache = ResponseCache(cache)
    if cache is not None and not isinstance(cache, ResponseCache):
        raise ConfigError(f"cache= must be a dask_llm.ResponseCache or a path, got {type(cache).__name__}")
    changes["cache"] = cache
    return dataclasses.replace(job, **changes)


def _with_checkpoint(
    job: Job,
    df: Any,
    checkpoint: str | os.PathLike[str] | None,
    storage_options: Mapping[str, Any] | None,
    retry_errors: bool,
    overwrite: bool,
    key: str | Sequence[str] | None,
) -> Job:
    """``job`` with its checkpoint opened and checked. Runs last in ``enrich()``:
    the probe and manifest writes happen only once every other argument is good."""
    if checkpoint is None:
        if storage_options is not None or retry_errors or overwrite or key is not None:
            raise ConfigError("storage_options=, retry_errors=, overwrite= and key= need checkpoint=")
        return job
    keys: tuple[str, ...] | None = None
    if key is not None:
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"key= must be a column name or a list of them, got {key!r}")
        missing = [k for k in keys if k not in {str(c) for c in df.columns}]
        if missing:
            raise ConfigError(f"key= names column(s) {', '.join(map(repr, missing))} that the frame does not have")
    if not isinstance(checkpoint, (str, os.PathLike)) or not os.fspath(checkpoint):
        raise ConfigError(f"checkpoint= must be a path or URL, got {checkpoint!r}")
    spec = _spec(job)
    opened = open_checkpoint(
        checkpoint,
        storage_options,
        spec,
        retry_errors=bool(retry_errors),
        overwrite=bool(overwrite),
        # Spark hands over batches, not numbered partitions: never "all done".
        npartitions=0 if engine_for(df) == "spark" else getattr(df, "npartitions", 1),
    )
    return dataclasses.replace(job, checkpoint=opened, key=keys)
