"""The row journal: finished rows of a running partition, saved as they come.

A partition can take hours; committing it only at the end would lose every
paid answer when a worker or the driver dies. So the runner hands each
row's outcome to a :class:`JournalWriter`, whose background thread writes
continuously: each write is one small chunk file holding every row that
finished since the previous write returned, then the next write starts at
once if more rows are waiting. A crash therefore loses the calls in flight
plus the rows that finished during one write (a local write takes about a
millisecond, an S3 PUT tens of milliseconds: far less than one model call),
and the pool threads never wait for storage.

Each chunk is one atomic write under the partition's journal directory, so
a chunk is there whole or not at all, and the chunks of two attempts of the
same task never collide (each writer has its own name prefix). Chunks are
ledger files (:mod:`._ledger`): what they record is found by identity, by any
later partition of any partitioning.
"""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType
from typing import Any

from .._core._store import Store
from .._errors import CheckpointError
from ._identity import RowIds
from ._ledger import FIELDS, LedgerIndex, dicts_table, records_to_jsonl

__all__ = ["JournalWriter"]

logger = logging.getLogger("dask_llm.checkpoint")

#: Seconds the writer keeps retrying a failed write on exit before giving up.
CLOSE_TIMEOUT = 10.0


class JournalWriter:
    """Save the outcomes of one partition's rows continuously; a context manager.

    Parameters
    ----------
    store : Store
        Where the checkpoint lives.
    directory : str
        The partition's journal directory, relative to the store's root.
    ids : RowIds
        The partition's row identities (rows are added by position).
    index : LedgerIndex, optional
        This process's ledger index, told about each chunk written, so that
        other partitions here see the rows without reading them back.
    """

    def __init__(self, store: Store, directory: str, ids: RowIds, index: LedgerIndex | None = None) -> None:
        self.store = store
        self.directory = directory
        self.ids = ids
        self.index = index
        self.written: list[str] = []  # chunk files, relative to the store's root
        self.rows_written = 0
        self._prefix = uuid.uuid4().hex[:12]
        self._seq = 0
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._writing = False
        self._error: CheckpointError | None = None
        self._thread = threading.Thread(target=self._run, name="dask-llm-journal", daemon=True)

    def __enter__(self) -> JournalWriter:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(CLOSE_TIMEOUT)
        try:
            self._write_pending()  # whatever the thread left (e.g. after an error)
        except CheckpointError:
            if exc is None:
                raise
            # The error that stopped the partition is the one to report.
            logger.warning("journal of %s not saved on exit", self.directory, exc_info=True)

    def add(self, position: int, outcome: Any) -> None:
        """Queue the outcome of the row at ``position``; thread-safe and
        non-blocking.

        Raises
        ------
        CheckpointError
            An earlier write failed: the rows cannot be saved, so the
            partition should stop rather than pay for rows it would lose.
        """
        if self._error is not None:
            raise self._error
        ids = self.ids
        record = {"hi": int(ids.hi[position]), "lo": int(ids.lo[position]), "content": int(ids.content[position])}
        record.update({name: getattr(outcome, name) for name in FIELDS})
        with self._cond:
            self._pending.append(record)
            self._cond.notify()

    def flush(self) -> None:
        """Return once every row queued before the call is written.

        Raises
        ------
        CheckpointError
            The write failed.
        """
        self._write_pending()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
            try:
                self._write_pending()
            except CheckpointError as exc:
                self._error = exc  # raised by the next add(), in a pool thread
                return

    def _write_pending(self) -> None:
        with self._cond:
            if self._writing:
                # The thread is writing: it takes the rest when it returns.
                while self._writing:
                    self._cond.wait(0.1)
            batch, self._pending = self._pending, []
            if not batch:
                return
            self._writing = True
            name = f"{self.directory}/{self._prefix}-{self._seq:06d}.jsonl"
            self._seq += 1
        try:
            self.store.write(name, records_to_jsonl(batch))
        except Exception as exc:
            with self._cond:
                self._pending[:0] = batch  # kept for the next try
                self._writing = False
                self._cond.notify_all()
            raise CheckpointError(f"could not write the row journal to {self.store.url}/{name}: {exc}") from exc
        if self.index is not None:
            self.index.register(name, dicts_table(batch), committed=False)
        with self._cond:
            self.written.append(name)
            self.rows_written += len(batch)
            self._writing = False
            self._cond.notify_all()
