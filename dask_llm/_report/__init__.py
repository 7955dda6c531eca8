"""The run report: what a checkpointed run did, when, how fast and at what cost.

Built from the checkpoint alone (manifest, ledger, dataset files), so it
works on any fsspec storage, after the run, during it (rows still in
journals are counted), and after any number of resumed runs::

    import dask_llm
    r = dask_llm.report("s3://bucket/runs/tickets-v1/", html="report.html", png="charts/")
    print(r)                   # the headline figures
    r.calls, r.cost, r.latency_p95

or ``dask-llm report CHECKPOINT --html report.html --png charts/``.

Modules, one idea each:

- ``_data``: read a checkpoint into what the report needs;
- ``_stats``: the numbers (:class:`RunReport`);
- ``_charts``: what each chart shows (title, caption, colours);
- ``_svg``: the charts as hand-written inline SVG;
- ``_html``: the self-contained page;
- ``_png``: the charts as PNGs via matplotlib (optional);
- ``_format``: how numbers, durations and times are written.

The command line is ``dask_llm.cli._report``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import fsspec

from ._data import CheckpointData, read_checkpoint
from ._stats import RunReport, compute

__all__ = ["CheckpointData", "RunReport", "read_checkpoint", "report"]

PathLike = str | os.PathLike[str]


def _write(target: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(target)
    parent = path.rpartition("/")[0]
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if parent and ("file" in protocols or "local" in protocols):
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, data)


def report(
    checkpoint: PathLike,
    storage_options: Mapping[str, Any] | None = None,
    *,
    html: PathLike | None = None,
    png: PathLike | None = None,
    prices: Mapping[str, Any] | None = None,
) -> RunReport:
    """Report on the run stored in a checkpoint.

    Parameters
    ----------
    checkpoint : str or path-like
        The ``checkpoint=`` of ``enrich()``: a local path or any fsspec URL.
    storage_options : mapping, optional
        fsspec options for ``checkpoint`` (credentials, endpoint).
    html : str or path-like, optional
        Write the report here as one self-contained HTML file (inline SVG
        charts, no script, nothing fetched): a local path or fsspec URL.
    png : str or path-like, optional
        Write one PNG per chart into this directory (``throughput.png``,
        ``latency.png``, ``attempts.png``, ``tokens.png``). Needs matplotlib.
    prices : mapping, optional
        Model -> :class:`~dask_llm.Price` (or ``(input, output)`` USD per
        million tokens), consulted before the built-in table. A model found
        nowhere has no cost (``None``, shown as unknown).

    Returns
    -------
    RunReport
        The numbers, with ``html`` and ``png`` naming the files written.

    Raises
    ------
    FileNotFoundError
        No dask-llm checkpoint at ``checkpoint``.
    CheckpointError
        The checkpoint cannot be opened or is of another format.
    ConfigError
        ``png`` is given and matplotlib is not installed (checked first).
    """
    if png is not None:
        from ._png import require_matplotlib

        require_matplotlib()
    result = compute(read_checkpoint(os.fspath(checkpoint), storage_options), prices)
    written: dict[str, Any] = {}
    if html is not None:
        from ._html import render_html

        target = os.fspath(html)
        _write(target, render_html(result).encode("utf-8"))
        written["html"] = target
    if png is not None:
        from ._png import png_charts

        directory = os.fspath(png).rstrip("/")
        paths = []
        for name, data in png_charts(result).items():
            paths.append(f"{directory}/{name}")
            _write(paths[-1], data)
        written["png"] = tuple(paths)
    return dataclasses.replace(result, **written) if written else result
