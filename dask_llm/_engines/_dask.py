"""The Dask engine: ``map_partitions`` over the frame, lazily.

Each partition runs in a worker's task thread, where
:func:`dask_llm._coordination.current` finds its coordinator: the
scheduler on a ``distributed`` cluster, the process itself on the threaded
and synchronous schedulers.
"""

from __future__ import annotations

import dask.dataframe as dd
import pandas as pd

from .._observe._announce import announce
from .._run import Job, enrich_batch, watch_local_computes
from .._run._batch import Submitted, collect_rows, submit_rows

__all__ = ["enrich_dask"]


def enrich_dask(ddf: dd.DataFrame, job: Job) -> dd.DataFrame:
    """The lazy enrichment of a dask frame."""
    # On the local schedulers, a failed or interrupted compute stops the
    # partitions' calls (dask itself would let them run on).
    watch_local_computes()
    job = announce(job, partitions=ddf.npartitions)
    meta = pd.concat([ddf._meta, job.outputs.empty(ddf._meta.index)], axis=1)
    if job.batch is not None:
        return _two_phases(ddf, job, meta)
    # meta is given, so dask never calls the function on fake data, which
    # would be a paid call at graph-construction time.
    return ddf.map_partitions(
        _partition, _numbers(ddf.npartitions), job, align_dataframes=False, meta=meta, token=f"llm-{job.outputs.column}"
    )


def _numbers(npartitions: int) -> dd.DataFrame:
    """A frame whose partition ``i`` holds the number ``i``, mapped beside
    the input: a graph of some partitions only (``out.partitions[k]``,
    ``out.tail()``) keeps their numbers, where ``partition_info`` would
    number them from 0, naming their checkpoint files after other partitions."""
    meta = pd.DataFrame({"number": pd.Series([], dtype="int64")})
    return dd.from_map(_number, range(npartitions), meta=meta, enforce_metadata=False)


def _number(i: int) -> pd.DataFrame:
    return pd.DataFrame({"number": [i]})


def _two_phases(ddf: dd.DataFrame, job: Job, meta: pd.DataFrame) -> dd.DataFrame:
    """The Batch API's graph: every partition submits its batches, and only
    then does any partition wait for its own (each collect task depends on
    every submit task), so a task that only waits never holds a slot while a
    partition has not submitted yet."""
    from dask.delayed import delayed

    parts = ddf.to_delayed()
    name = f"llm-{job.outputs.column}-{job.run_id[:8]}"
    submitted = [
        delayed(submit_rows, pure=False, name=f"{name}-submit-{i}")(part, job, i) for i, part in enumerate(parts)
    ]
    barrier = delayed(_all_submitted, name=f"{name}-submitted")(*submitted)
    collected = [
        delayed(_collect, pure=False, name=f"{name}-collect-{i}")(part, sub, barrier, job, i)
        for i, (part, sub) in enumerate(zip(parts, submitted, strict=True))
    ]
    return dd.from_delayed(collected, meta=meta, verify_meta=False)


def _all_submitted(*submitted: Submitted) -> int:
    return len(submitted)


def _collect(frame: pd.DataFrame, submitted: Submitted, barrier: int, job: Job, number: int) -> pd.DataFrame:
    return collect_rows(frame, submitted, job, number)


def _partition(frame: pd.DataFrame, numbers: pd.DataFrame, job: Job) -> pd.DataFrame:
    # The number names the checkpoint file; rows are keyed by identity.
    return enrich_batch(frame, job, number=int(numbers["number"].iloc[0]))
