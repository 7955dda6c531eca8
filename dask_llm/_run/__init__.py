"""Running a job: one batch of rows -> prompts -> budgeted calls -> columns -> commit.

The engine-free core every engine maps over its partitions
(:func:`enrich_batch`), with what it needs while it runs:

- ``_job``: :class:`Job` and :class:`Outcome`, the values that travel;
- ``_runner``: :func:`enrich_batch` and its thread pool of calls;
- ``_progress``: row counts, published through the coordinator;
- ``_stopping``: stopping running pools promptly.

May import everything below it: ``_core``, ``_calls``, ``_budget``,
``_cost``, ``_checkpoint``, ``_coordination``, ``_config``, ``_errors``.
"""

from ._job import Job, Outcome
from ._progress import Cancelled, ProgressChannel
from ._runner import enrich_batch, run_rows, to_columns
from ._stopping import watch_local_computes

__all__ = [
    "Cancelled",
    "Job",
    "Outcome",
    "ProgressChannel",
    "enrich_batch",
    "run_rows",
    "to_columns",
    "watch_local_computes",
]
