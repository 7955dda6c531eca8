"""The row journal: finished rows of a partition, saved while it runs.

A partition can take hours; committing it only at the end would lose every
paid answer when a worker dies. So the runner hands each row's outcome to a
:class:`JournalWriter`, which writes the rows in small chunk files (every
``rows`` rows or ``interval`` seconds, whichever comes first) under the
partition's journal directory. Each chunk is one atomic write, so a chunk is
there whole or not at all, and the chunks of two attempts of the same task
never collide (each writer has its own name prefix).

A crash loses the calls in flight plus the rows not yet written: fewer than
``rows`` of them, and none older than ``interval``. With ``rows=1`` a thread
does not take its next row before its last one is saved, so only the calls
in flight are lost.

The chunk is written by the thread that fills it (a pool thread), not a
background thread, so that ``rows`` is a hard bound: a background writer
could fall behind without limit. Writes are one small file, ~1 ms locally and
tens of ms on S3, against calls that take seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

from ._checkpoint_store import Store
from ._errors import CheckpointError

__all__ = ["FIELDS", "JournalWriter", "read_journal"]

logger = logging.getLogger("dask_llm.checkpoint")

#: The fields of a row's outcome that are stored (those the output columns hold).
FIELDS = ("text", "error", "prompt_tokens", "completion_tokens", "attempts", "latency")

Record = dict[str, Any]


class _Outcome(Protocol):
    text: str | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int
    latency: float


class JournalWriter:
    """Save row outcomes of one partition in chunks; a context manager.

    Parameters
    ----------
    store : Store
        Where the checkpoint lives.
    directory : str
        The partition's journal directory, relative to the store's root.
    rows : int
        Write a chunk as soon as this many rows are waiting.
    interval : float
        Also write waiting rows at least this often, in seconds, so slow rows
        are saved too.
    before_first : callable, optional
        Called once, before the first chunk is written (the partition's
        entry is written there, off the partition's start-up path).

    Leaving the context writes what is still waiting, also when the partition
    stops on an error or a KeyboardInterrupt: finished rows are kept. Rows
    handed over after that (calls that were still in flight) are dropped.
    """

    def __init__(
        self,
        store: Store,
        directory: str,
        rows: int,
        interval: float,
        before_first: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._before_first = before_first
        self.directory = directory
        self.rows = rows
        self.interval = interval
        # Chunk names sort by writer start, then sequence: a later attempt's
        # chunks come after an earlier one's.
        self._prefix = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        #: Chunks written so far, relative to the store's root.
        self.written: list[str] = []
        self._pending: list[Record] = []
        self._lock = threading.Lock()  # guards _pending and _closed
        self._write_lock = threading.Lock()  # one chunk write at a time
        self._closed = False
        self._error: CheckpointError | None = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="dask-llm-journal", daemon=True)

    def __enter__(self) -> JournalWriter:
        self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        try:
            self.flush(close=True)
        except CheckpointError:
            if exc is None:
                raise
            # The error that stopped the partition is the one to report.
            logger.warning("journal of %s not saved on exit", self.directory, exc_info=True)
        self._ticker.join(timeout=self.interval + 1.0)

    def add(self, row: int, outcome: _Outcome) -> None:
        """Queue the outcome of row number ``row`` (its position in the
        partition); write a chunk if enough rows wait. Thread-safe.

        Raises
        ------
        CheckpointError
            A chunk could not be written (now or by the timer).
        """
        if self._error is not None:
            raise self._error
        record = {"i": row, **{f: getattr(outcome, f) for f in FIELDS}}
        with self._lock:
            if self._closed:
                return
            self._pending.append(record)
            due = len(self._pending) >= self.rows
        if due:
            self.flush()

    def flush(self, close: bool = False) -> None:
        """Write every waiting row as one chunk. When this returns, the rows
        queued before the call are saved, whoever wrote them."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                self._closed = self._closed or close
            if not batch:
                return
            name = f"{self.directory}/{self._prefix}-{self._seq:06d}.jsonl"
            data = "\n".join(json.dumps(r, ensure_ascii=False) for r in batch).encode()
            try:
                if self._before_first is not None:
                    self._before_first()
                    self._before_first = None
                self.store.write(name, data)
            except Exception as exc:
                with self._lock:
                    self._pending[:0] = batch  # keep them for the next try
                if isinstance(exc, CheckpointError):
                    raise
                raise CheckpointError(
                    f"could not write the row journal to {self.store.url}/{name}: {exc}"
                ) from exc
            self.written.append(name)
            self._seq += 1

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except CheckpointError as exc:
                self._error = exc  # raised by the next add(), in a pool thread
                return


def read_journal(store: Store, directory: str) -> tuple[dict[int, Record], list[str]]:
    """The saved outcome of each journaled row, by row number, and the chunk
    files read (relative to the store's root).

    When a row was saved more than once (a retried error), a success wins
    over an error, and otherwise the later chunk wins.
    """
    names = [n for n in store.list(directory) if n.endswith(".jsonl")]
    chunks = store.read_many(f"{directory}/{n}" for n in names)
    rows: dict[int, Record] = {}
    for rel in sorted(chunks):
        for line in chunks[rel].decode().splitlines():
            try:
                record = json.loads(line)
                row = int(record.pop("i"))
                record = {f: record[f] for f in FIELDS}
            except (ValueError, KeyError, TypeError):
                # Chunks are written atomically, so this is damage from outside;
                # the row is simply called again.
                logger.warning("skipping a malformed journal line in %s", rel)
                continue
            if _ok(rows.get(row)) and not _ok(record):
                continue
            rows[row] = record
    return rows, sorted(chunks)


def _ok(record: Mapping[str, Any] | None) -> bool:
    return record is not None and record["error"] is None
