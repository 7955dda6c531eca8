"""What the report reads from a checkpoint, and nothing else.

- ``_dask_llm/manifest.json``: the run (model, prompt, output columns);
- the ledger (``_dask_llm/rows/`` and ``_dask_llm/journal/``, through
  :class:`~dask_llm._checkpoint._ledger.LedgerIndex`): one record per row
  ever paid for or answered, by identity, whatever partitioning or run wrote
  it. Journals included, so a run that is still going (or was killed) is
  reported as far as it got, before any partition commits;
- the dataset files (``part-*.parquet``), only for what the ledger does not
  hold: each row's index and input text, for the slowest rows. Only their
  latency column is read whole; the other columns are read from the row
  groups that hold the slowest rows, so a large dataset on object storage
  costs little more than its latency column.

Works on any fsspec URL; reads are plain reads, so it is safe to run while
the enrichment is writing (a journal chunk deleted by a commit between the
listing and the read is simply found in the committed file, or missed once).
"""

from __future__ import annotations

import heapq
import json
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._checkpoint import FORMAT, MANIFEST, open_store
from .._checkpoint._ledger import JOURNAL_DIR, LedgerIndex
from .._errors import CheckpointError

__all__ = ["SLOW_COLUMNS", "CheckpointData", "prompt_columns", "read_checkpoint"]

#: Columns of :attr:`CheckpointData.slowest`.
SLOW_COLUMNS = ("index", "text", "latency", "attempts", "rate_limited", "error")


@dataclass(frozen=True)
class CheckpointData:
    """A checkpoint as read for the report.

    Attributes
    ----------
    url : str
        The checkpoint's root as a URL.
    manifest : mapping
        ``_dask_llm/manifest.json``.
    column : str
        The ``column=`` of the enrichment (the output column with an ``_error`` twin).
    records : pandas.DataFrame
        One ledger record per row identity (the best one): ``text``, ``error``,
        ``prompt_tokens``, ``completion_tokens``, ``attempts``, ``latency``,
        ``rate_limited``, ``finished_at``.
    journal_chunks : int
        Journal files not yet folded into a committed ledger file: rows of
        partitions still running, or of a run that was interrupted.
    dataset_files : int
        ``part-*.parquet`` files.
    dataset_rows : int
        Rows those files hold.
    text_column : str or None
        The input column quoted for the slowest rows.
    slowest : pandas.DataFrame
        The slowest rows, slowest first, with :data:`SLOW_COLUMNS`. From the
        dataset files when there are any (``index`` and ``text`` filled),
        else from the ledger (no index or input there: ``None``).
    """

    url: str
    manifest: Mapping[str, Any]
    column: str
    records: pd.DataFrame
    journal_chunks: int
    dataset_files: int
    dataset_rows: int
    text_column: str | None
    slowest: pd.DataFrame

    @property
    def model(self) -> str:
        return str(self.manifest.get("model", ""))


def read_checkpoint(url: str, storage_options: Mapping[str, Any] | None = None, *, slowest: int = 10) -> CheckpointData:
    """Read what the report needs from the checkpoint at ``url``.

    Raises
    ------
    FileNotFoundError
        No dask-llm checkpoint there (no manifest).
    CheckpointError
        The checkpoint cannot be opened, or was written in another format.
    """
    try:
        store = open_store(str(url), storage_options)
    except (ValueError, ImportError, OSError) as exc:
        raise CheckpointError(f"cannot open checkpoint {url}: {exc}") from exc
    raw = store.read(MANIFEST)
    if raw is None:
        raise FileNotFoundError(f"no dask-llm checkpoint at {str(url)!r} (no {MANIFEST})")
    manifest = json.loads(raw)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {store.url} was written by another version of dask-llm (format "
            f"{manifest.get('format')}, this version reads format {FORMAT}); it cannot be reported on"
        )
    column = _main_column(manifest)
    index = LedgerIndex(store)
    index.refresh()
    records = index.all_records()
    files = [n for n in store.list() if n.startswith("part-") and n.endswith(".parquet")]
    chunks = [p for p in store.find(JOURNAL_DIR) if p.endswith(".jsonl")]
    text_column = None
    if files:
        text_column, top = _slowest_in_dataset(store, files, column, manifest, slowest)
    else:
        top = _slowest_in_ledger(records, slowest)
    return CheckpointData(
        url=store.url,
        manifest=manifest,
        column=column,
        records=records,
        journal_chunks=len(chunks),
        dataset_files=len(files),
        dataset_rows=index.dataset_rows(),
        text_column=text_column,
        slowest=top,
    )


def _main_column(manifest: Mapping[str, Any]) -> str:
    names = list(manifest.get("columns", {}))
    return next((n for n in names if f"{n}_error" in names), names[0] if names else "?")


def prompt_columns(manifest: Mapping[str, Any]) -> list[str]:
    """The columns the prompt (and system message) read, in order."""
    out: list[str] = []
    for template in (manifest.get("prompt"), manifest.get("system")):
        if not isinstance(template, str):
            continue
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        except ValueError:
            continue
        out += [f for f in fields if f not in out]
    return out


# ------------------------------------------------------------------ slowest rows


def _slowest_in_ledger(records: pd.DataFrame, n: int) -> pd.DataFrame:
    latency = records["latency"].astype("float64").to_numpy(na_value=np.nan)
    order = [i for i in np.argsort(-np.nan_to_num(latency, nan=-1.0), kind="stable")[:n] if latency[i] > 0]
    rows = records.iloc[order]
    return pd.DataFrame(
        {
            "index": [None] * len(rows),
            "text": [None] * len(rows),
            "latency": latency[order],
            "attempts": rows["attempts"].to_numpy(),
            "rate_limited": rows["rate_limited"].to_numpy(),
            "error": rows["error"].astype(object).where(rows["error"].notna(), None).to_numpy(),
        },
        columns=list(SLOW_COLUMNS),
    )


def _index_columns(schema: pa.Schema) -> list[str]:
    meta = schema.pandas_metadata or {}
    return [c for c in meta.get("index_columns", []) if isinstance(c, str) and c in schema.names]


def _text_column(schema: pa.Schema, column: str, manifest: Mapping[str, Any]) -> str | None:
    """The input column to quote: the first one the prompt reads, else the first input column."""
    outputs = set(manifest.get("columns", {})) | {column}
    inputs = [n for n in schema.names if n not in outputs and n not in _index_columns(schema)]
    return next((c for c in prompt_columns(manifest) if c in inputs), inputs[0] if inputs else None)


def _slowest_in_dataset(
    store: Any, files: Sequence[str], column: str, manifest: Mapping[str, Any], n: int
) -> tuple[str | None, pd.DataFrame]:
    latency_col = f"{column}_latency_s"
    # Pass 1: the latency column of every row group; keep the n largest.
    best: list[tuple[float, int, str, int, int]] = []  # (latency, -order, file, row group, row)
    order = 0
    text_column: str | None = None
    for name in files:
        with store.fs.open(store.path(name), "rb") as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            if text_column is None:
                text_column = _text_column(schema, column, manifest)
            if latency_col not in schema.names:
                continue
            for group in range(pf.num_row_groups):
                values = pf.read_row_group(group, columns=[latency_col]).column(0)
                latency = values.to_numpy(zero_copy_only=False).astype("float64")
                latency = np.where(np.isfinite(latency), latency, -1.0)
                for row in np.argsort(-latency, kind="stable")[:n]:
                    if latency[row] > 0:
                        order += 1
                        heapq.heappush(best, (float(latency[row]), -order, name, group, int(row)))
                        if len(best) > n:
                            heapq.heappop(best)
    picked = sorted(best, reverse=True)
    # Pass 2: index, input text and outcome of those rows, from their row groups only.
    wanted: dict[tuple[str, int], list[int]] = defaultdict(list)
    for _, _, name, group, row in picked:
        wanted[(name, group)].append(row)
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    for (name, group), rows in wanted.items():
        with store.fs.open(store.path(name), "rb") as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            index_cols = _index_columns(schema)
            names = {
                "attempts": f"{column}_attempts",
                "rate_limited": f"{column}_rate_limited",
                "error": f"{column}_error",
            }
            cols = [c for c in (*index_cols, text_column, *names.values()) if c and c in schema.names]
            table = pf.read_row_group(group, columns=cols).take(pa.array(rows))
            data = table.to_pylist()
            for row, values in zip(rows, data, strict=False):
                index_values = [values.get(c) for c in index_cols]
                found[(name, group, row)] = {
                    "index": index_values[0] if len(index_values) == 1 else (tuple(index_values) or None),
                    "text": values.get(text_column) if text_column else None,
                    **{key: values.get(col) for key, col in names.items()},
                }
    rows_out = [{"latency": lat, **found[(name, group, row)]} for lat, _, name, group, row in picked]
    return text_column, pd.DataFrame(rows_out, columns=list(SLOW_COLUMNS))
