"""``dask-llm status CHECKPOINT``: what a checkpoint holds, without running anything.

Reads only the checkpoint: the manifest (which run), the partition entries
(which partitions started), the output columns of committed partitions
(errors, tokens) and the journals of the others (rows finished so far). The
totals of the input come from the note ``dask-llm run`` leaves there; a
checkpoint written from Python has none, and shows no "of N".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ._checkpoint_store import open_store
from ._cli_run import RUN_INFO, cost_function, parse_storage_options
from ._journal import read_journal
from ._manifest import INTERNAL_DIR, MANIFEST
from ._progress_line import format_count

__all__ = ["CheckpointStatus", "add_arguments", "read_status", "run"]


@dataclass
class CheckpointStatus:
    """Counts read from a checkpoint."""

    url: str
    model: str
    column: str
    partitions_committed: int = 0
    partitions_started: int = 0
    partitions_total: int | None = None
    rows_done: int = 0
    rows_total: int | None = None
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    command: str | None = None


def read_status(url: str, storage_options: Mapping[str, Any] | None = None) -> CheckpointStatus:
    """Count what the checkpoint at ``url`` holds.

    Raises
    ------
    FileNotFoundError
        No dask-llm checkpoint there.
    """
    store = open_store(url, storage_options)
    raw = store.read(MANIFEST)
    if raw is None:
        raise FileNotFoundError(f"no dask-llm checkpoint at {url!r} (no {MANIFEST})")
    manifest = json.loads(raw)
    names = list(manifest.get("columns", {}))
    column = next((n for n in names if f"{n}_error" in names), names[0] if names else "?")
    status = CheckpointStatus(url=store.url, model=str(manifest.get("model")), column=column)
    info_raw = store.read(RUN_INFO)
    if info_raw is not None:
        info = json.loads(info_raw)
        status.rows_total = info.get("rows")
        status.partitions_total = info.get("partitions")
        status.command = info.get("command")

    files = set(store.list())
    entries = store.read_many(f"{INTERNAL_DIR}/parts/{n}" for n in store.list(f"{INTERNAL_DIR}/parts"))
    for rel, data in sorted(entries.items()):
        key = rel.rpartition("/")[2].removesuffix(".json")
        entry = json.loads(data)
        status.partitions_started += 1
        if entry["file"] in files:
            status.partitions_committed += 1
            _count_committed(store.read(entry["file"]) or b"", column, status)
        else:
            rows, _ = read_journal(store, f"{INTERNAL_DIR}/journal/{key}")
            status.rows_done += len(rows)
            for record in rows.values():
                status.errors += record["error"] is not None
                status.prompt_tokens += record["prompt_tokens"] or 0
                status.completion_tokens += record["completion_tokens"] or 0
    return status


def _count_committed(data: bytes, column: str, status: CheckpointStatus) -> None:
    names = [f"{column}_error", f"{column}_prompt_tokens", f"{column}_completion_tokens"]
    # A native buffer and no thread pool: pyarrow 26 can abort at interpreter
    # exit after reading a Python file object with threads.
    table = pq.read_table(pa.BufferReader(data), columns=names, use_threads=False)
    status.rows_done += table.num_rows
    status.errors += table.num_rows - table.column(names[0]).null_count
    status.prompt_tokens += int(table.column(names[1]).to_pandas().sum())
    status.completion_tokens += int(table.column(names[2]).to_pandas().sum())


def format_status(s: CheckpointStatus) -> str:
    of_parts = f" of {s.partitions_total:,}" if s.partitions_total is not None else ""
    in_progress = s.partitions_started - s.partitions_committed
    if s.rows_total:
        rows = f"{s.rows_done:,} of {s.rows_total:,} ({min(s.rows_done / s.rows_total, 1):.0%})"
    else:
        rows = f"{s.rows_done:,}"
    price = cost_function(s.model)
    cost = price(s.prompt_tokens, s.completion_tokens) if price else None
    lines = [
        f"checkpoint: {s.url}",
        f"model: {s.model}  column: {s.column}",
        f"partitions: {s.partitions_committed:,} done, {in_progress:,} in progress{of_parts}",
        f"rows done: {rows}  errors: {s.errors:,}",
        f"tokens: {format_count(s.prompt_tokens)} in, {format_count(s.completion_tokens)} out  "
        f"cost: {f'${cost:,.4f}' if cost is not None else 'unknown'}",
    ]
    if s.command:
        lines.append(f"resume: {s.command}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the --checkpoint folder or URL of a run")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for CHECKPOINT, as for dask-llm run")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    status = read_status(args.checkpoint, parse_storage_options(args.storage_option))
    print(format_status(status))
    sys.stdout.flush()
    return 0
