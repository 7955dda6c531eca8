"""The Dask engine: ``map_partitions`` over the frame, lazily.

Each partition runs in a worker's task thread, where
:func:`dask_llm._coordination.current` finds its coordinator: the
scheduler on a ``distributed`` cluster, the process itself on the threaded
and synchronous schedulers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.dataframe as dd
import pandas as pd

from .._run import Job, enrich_batch, watch_local_computes

__all__ = ["enrich_dask"]


def enrich_dask(ddf: dd.DataFrame, job: Job) -> dd.DataFrame:
    """The lazy enrichment of a dask frame."""
    # On the local schedulers, a failed or interrupted compute stops the
    # partitions' calls (dask itself would let them run on).
    watch_local_computes()
    meta = pd.concat([ddf._meta, job.outputs.empty(ddf._meta.index)], axis=1)
    # meta is given, so dask never calls the function on fake data, which
    # would be a paid call at graph-construction time.
    return ddf.map_partitions(_partition, job, meta=meta, token=f"llm-{job.outputs.column}")


def _partition(frame: pd.DataFrame, job: Job, partition_info: Mapping[str, Any] | None = None) -> pd.DataFrame:
    # The number names the checkpoint file; rows are keyed by identity, since
    # the optimizer may renumber partitions between graphs.
    number = int((partition_info or {}).get("number") or 0)
    return enrich_batch(frame, job, number=number)
