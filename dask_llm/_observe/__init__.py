"""Watching jobs: the dask-llm page on the Dask dashboard and Prometheus metrics.

- ``_board``: the scheduler's view of each job, fed by progress events;
- ``_page``: ``/dask-llm/`` and its JSON, added to the scheduler's HTTP server;
- ``_metrics``: a Prometheus collector on the scheduler's ``/metrics``.

The coordinator plugin (:mod:`dask_llm._coordination._plugin`) holds the
board and installs the other two when it starts. The run report of a
finished (or running) checkpoint is :mod:`dask_llm._report`.
"""

from ._board import JOBS_TOPIC, JobBoard
from ._page import PAGE_PATH, install_routes, page_link

__all__ = ["JOBS_TOPIC", "PAGE_PATH", "JobBoard", "install_routes", "page_link"]
