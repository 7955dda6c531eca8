"""``dask-llm status CHECKPOINT``: what a checkpoint holds, without running anything.

Reads only the checkpoint: the manifest (which run), the ledger (every row
paid for, by identity, whatever partitioning wrote it: committed files and
the journals of partitions that did not finish) and the members of the
dataset files (rows visible to ``dd.read_parquet``). The size of the input
comes from the note ``dask-llm run`` leaves there; a checkpoint written from
Python has none, and shows no "of N".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._checkpoint import MANIFEST
from .._checkpoint._ledger import LedgerIndex
from .._core._store import Store, open_store
from ._progress_line import format_count
from ._run import RUN_INFO, cost_function, parse_storage_options

__all__ = ["CheckpointStatus", "read_status", "run"]


@dataclass
class CheckpointStatus:
    """Counts read from a checkpoint.

    ``rows_done`` counts each row identity once (answered or failed), however
    many partitionings wrote it; ``rows_visible`` is what the dataset files
    hold now (the latest run's rows that have been committed).
    """

    url: str
    model: str
    column: str
    files: int = 0
    rows_visible: int = 0
    rows_done: int = 0
    rows_total: int | None = None
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limited: int = 0
    command: str | None = None
    #: Batch API runs: the batches recorded, by the status a run last saw them in.
    batches: dict[str, int] = field(default_factory=dict)
    batch_requests: int = 0
    batch_answered: int = 0
    batches_seen_at: float | None = None


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
        status.command = info.get("command")

    index = LedgerIndex(store)
    index.refresh()
    records = index.all_records()
    status.rows_done = len(records)
    status.errors = int(records["error"].notna().sum())
    status.prompt_tokens = int(records["prompt_tokens"].fillna(0).sum())
    status.completion_tokens = int(records["completion_tokens"].fillna(0).sum())
    status.rate_limited = int(records["rate_limited"].sum())
    status.rows_visible = index.dataset_rows()
    status.files = len([n for n in store.list() if n.startswith("part-") and n.endswith(".parquet")])
    _read_batches(store, status)
    return status


def _read_batches(store: Store, status: CheckpointStatus) -> None:
    from .._run._batch import recorded

    for record in recorded(store):
        seen = record.get("seen") or {}
        state = str(seen.get("status", "submitted"))
        status.batches[state] = status.batches.get(state, 0) + 1
        status.batch_requests += int(record.get("rows") or 0)
        status.batch_answered += int(seen.get("completed") or 0)
        if seen.get("at"):
            status.batches_seen_at = max(status.batches_seen_at or 0.0, float(seen["at"]))


def format_status(s: CheckpointStatus) -> str:
    extra = ""
    if s.rows_total:
        done = min(s.rows_done, s.rows_total)
        rows = f"{done:,} of {s.rows_total:,} ({done / s.rows_total:.0%})"
        if s.rows_done > s.rows_total:
            # Rows renumbered (a reordered or re-split file) or removed since
            # they were answered: their earlier identities stay in the ledger.
            extra = f" (the ledger holds {s.rows_done:,} row identities: rows renumbered or removed since)"
    else:
        rows = f"{s.rows_done:,}"
    price = cost_function(s.model)
    cost = price(s.prompt_tokens, s.completion_tokens) if price else None
    lines = [
        f"checkpoint: {s.url}",
        f"model: {s.model}  column: {s.column}",
        f"rows done: {rows}  errors: {s.errors:,}  429s: {s.rate_limited:,}{extra}",
        f"dataset: {s.rows_visible:,} rows in {s.files:,} files",
        f"tokens: {format_count(s.prompt_tokens)} in, {format_count(s.completion_tokens)} out  "
        f"cost: {f'${cost:,.4f}' if cost is not None else 'unknown'}",
    ]
    if s.batches:
        states = ", ".join(f"{n:,} {state}" for state, n in sorted(s.batches.items()))
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.batches_seen_at)) if s.batches_seen_at else None
        lines.append(
            f"batches: {sum(s.batches.values()):,} ({states}); requests {s.batch_answered:,}/{s.batch_requests:,} "
            f"answered" + (f" (as a run last saw them, {when})" if when else "")
        )
    if s.command:
        lines.append(f"resume: {s.command}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    status = read_status(args.checkpoint, parse_storage_options(args.storage_option))
    print(format_status(status))
    sys.stdout.flush()
    return 0
