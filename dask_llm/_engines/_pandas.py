"""The pandas engine: one batch, enriched at once, in this process."""

from __future__ import annotations

import pandas as pd

from .._run import Job, enrich_batch

__all__ = ["enrich_pandas"]


def enrich_pandas(df: pd.DataFrame, job: Job) -> pd.DataFrame:
    if job.batch is not None:
        from .._run._batch import collect_rows, submit_rows

        return collect_rows(df, submit_rows(df, job), job)
    return enrich_batch(df, job)
