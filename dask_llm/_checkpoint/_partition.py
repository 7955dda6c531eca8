"""Checkpoint and resume: no finished row is paid for twice.

Layout under the checkpoint URL::

    part-00000-<key16>.parquet     committed partitions: the output dataset
    part-00001-<key16>.parquet     (input columns, index, output columns)
    _dask_llm/manifest.json        the run: prompt, model, params, schema
    _dask_llm/parts/<key>.json     partition key -> its file name
    _dask_llm/journal/<key>/*.jsonl  rows finished in uncommitted partitions

Readers skip ``_`` and ``.`` names, so ``dd.read_parquet(url)`` and
``pyarrow.parquet.read_table(url)`` see exactly the committed partitions.

A partition is keyed by its content, not its number: dask's optimizer may
fuse partitions, so numbers change between graphs. The key hashes the run,
the requests the partition sends and the partition's rows (so two partitions
that happen to send the same prompts are still two files). The number only
names the file, so that a listing sorts in input order; lookups go through
``_dask_llm/parts/<key>.json``, one read per partition whatever the number
of partitions. The entry is written before the partition's first journal
chunk or its Parquet file, so:

- no entry: the partition never started; nothing to list or read;
- an entry naming a file that does not exist: started, read the journal;
- the file exists: committed. A crash can never leave a Parquet file that no
  entry names (an orphan that would duplicate rows in the dataset).

Repeated tasks (lost worker, recomputation) are idempotent: they find the
commit or the journal, and a second commit of the same key writes the same
file name with the same content.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.config
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.utils import parse_timedelta

from ._checkpoint_store import Store, open_store
from ._errors import CheckpointError
from ._journal import FIELDS, JournalWriter, Record, read_journal
from ._manifest import INTERNAL_DIR, RunSpec, claim
from ._prompt import messages_fingerprint
from ._schema import OutputColumns

__all__ = ["Checkpoint", "PartitionCheckpoint", "open_checkpoint"]

logger = logging.getLogger("dask_llm.checkpoint")

#: dask.config keys of the journal cadence, read once by ``enrich()``.
JOURNAL_ROWS_KEY = "dask-llm.checkpoint.journal-rows"
JOURNAL_INTERVAL_KEY = "dask-llm.checkpoint.journal-interval"
DEFAULT_JOURNAL_ROWS = 16
DEFAULT_JOURNAL_INTERVAL = "5s"


@dataclass(frozen=True)
class Checkpoint:
    """Where and how a job checkpoints; travels inside the task graph.

    Only the URL and storage options travel, never a filesystem object:
    every worker process opens its own.

    Parameters
    ----------
    url : str
        Root of the checkpoint, protocol-qualified and absolute.
    storage_options : mapping
        fsspec options for ``url`` (credentials, endpoint).
    run : str
        Fingerprint of the run (:attr:`RunSpec.fingerprint`).
    retry_errors : bool
        Call again the rows whose stored outcome is an error.
    journal_rows, journal_interval : int, float
        Journal cadence, see :class:`~dask_llm._journal.JournalWriter`.
    width : int
        Digits of the partition number in file names.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    run: str = ""
    retry_errors: bool = False
    journal_rows: int = DEFAULT_JOURNAL_ROWS
    journal_interval: float = 5.0
    width: int = 5

    def partition(
        self,
        frame: pd.DataFrame,
        messages: Sequence[Any],
        outputs: OutputColumns,
        partition_info: Mapping[str, Any] | None = None,
    ) -> PartitionCheckpoint:
        """The checkpoint of one partition, about to be enriched."""
        number = int((partition_info or {}).get("number") or 0)
        key = partition_key(self.run, frame, messages)
        return PartitionCheckpoint(self, _open(self), key, number, len(frame), outputs)


def _open(ckpt: Checkpoint) -> Store:
    try:
        return open_store(ckpt.url, ckpt.storage_options)
    except (ValueError, ImportError, OSError) as exc:
        raise CheckpointError(f"cannot open checkpoint {ckpt.url}: {exc}") from exc


def partition_key(run: str, frame: pd.DataFrame, messages: Sequence[Any]) -> str:
    """Content key of a partition: the run, its requests, and its rows."""
    h = hashlib.sha256()
    h.update(run.encode())
    h.update(messages_fingerprint(messages).encode())
    h.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    try:
        hashed = pd.util.hash_pandas_object(frame, index=True)
    except TypeError:  # unhashable cells (lists, dicts): hash their text
        hashed = pd.util.hash_pandas_object(frame.astype(str), index=True)
    h.update(hashed.to_numpy().tobytes())
    return h.hexdigest()


class PartitionCheckpoint:
    """What is saved of one partition, and how to save the rest.

    Use: :meth:`finished` -> run the other rows under :meth:`journal` ->
    :meth:`commit` the result.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        store: Store,
        key: str,
        number: int,
        n_rows: int,
        outputs: OutputColumns,
    ) -> None:
        self.ckpt = ckpt
        self.store = store
        self.key = key
        self.number = number
        self.n_rows = n_rows
        self.outputs = outputs
        self.committed = False
        self._file: str | None = None  # known once the entry exists
        self._chunks: list[str] = []  # journal chunks read
        self._writer: JournalWriter | None = None

    @property
    def _entry(self) -> str:
        return f"{INTERNAL_DIR}/parts/{self.key}.json"

    @property
    def _journal_dir(self) -> str:
        return f"{INTERNAL_DIR}/journal/{self.key}"

    def finished(self) -> dict[int, Record]:
        """Stored outcomes of rows that need no call, by row number.

        Sets :attr:`committed` when the partition's file exists. With
        ``retry_errors``, rows stored as errors are left out (called again).
        """
        try:
            raw = self.store.read(self._entry)
            if raw is None:
                # Never started: the entry is written before any journal
                # chunk, so there is nothing to list.
                return {}
            self._file = str(json.loads(raw)["file"])
            rows = self._read_committed()
            if not self.committed or self.ckpt.retry_errors:
                # A commit deletes the journal; with retry_errors it may hold
                # retries newer than the committed file.
                journaled, self._chunks = read_journal(self.store, self._journal_dir)
                for i, record in journaled.items():
                    if i in rows and rows[i]["error"] is None:
                        continue  # a success is final
                    rows[i] = record
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"cannot read partition {self.number} from checkpoint {self.store.url}: {exc}"
            ) from exc
        if self.ckpt.retry_errors:
            rows = {i: r for i, r in rows.items() if r["error"] is None}
        return rows

    def _read_committed(self) -> dict[int, Record]:
        assert self._file is not None
        data = self.store.read(self._file)
        if data is None:  # started, not committed
            return {}
        names = {f: self.outputs.by_field[f] for f in FIELDS}
        table = pq.read_table(pa.BufferReader(data), columns=list(names.values()))
        if table.num_rows != self.n_rows:
            logger.warning("ignoring %s: %d rows, expected %d", self._file, table.num_rows, self.n_rows)
            return {}
        self.committed = True
        columns = {f: table.column(n).to_pylist() for f, n in names.items()}
        return {i: {f: columns[f][i] for f in FIELDS} for i in range(self.n_rows)}

    def journal(self) -> JournalWriter:
        """A journal writer for the rows about to be called (a context manager).

        The partition's entry, if it has none, is written just before the
        first chunk: a journal never exists without an entry pointing to it.
        """
        self._writer = JournalWriter(
            self.store, self._journal_dir, self.ckpt.journal_rows, self.ckpt.journal_interval,
            before_first=self._start,
        )  # fmt: skip
        return self._writer

    def _start(self) -> None:
        """Write the entry naming the partition's file, once."""
        if self._file is not None:
            return
        name = f"part-{self.number:0{self.ckpt.width}d}-{self.key[:16]}.parquet"
        entry = {"file": name, "partition": self.number, "rows": self.n_rows}
        try:
            self.store.write(self._entry, json.dumps(entry).encode())
        except OSError as exc:
            raise CheckpointError(
                f"could not start partition {self.number} in checkpoint {self.store.url}: {exc}"
            ) from exc
        self._file = name

    def commit(self, result: pd.DataFrame) -> None:
        """Write the enriched partition as one Parquet file, atomically, then
        drop its journal chunks.

        Raises
        ------
        CheckpointError
            The file could not be written; the journal is kept.
        """
        self._start()
        assert self._file is not None
        # The output columns have fixed extension dtypes, so an all-null error
        # column is still a string column and every file has one schema.
        table = pa.Table.from_pandas(result, preserve_index=True)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        try:
            self.store.write(self._file, buffer.getvalue())
        except OSError as exc:
            raise CheckpointError(
                f"could not commit partition {self.number} to {self.store.url}/{self._file}: {exc}"
            ) from exc
        self.committed = True
        # Only the chunks this task read or wrote: a concurrent attempt's new
        # chunks are not ours to delete.
        chunks = self._chunks + (self._writer.written if self._writer is not None else [])
        try:
            self.store.remove_files(chunks)
            self.store.remove_empty_dir(self._journal_dir)
        except OSError:  # harmless: a committed partition's journal is not read again
            logger.warning("could not delete journal %s", self._journal_dir, exc_info=True)


def open_checkpoint(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None,
    spec: RunSpec,
    *,
    retry_errors: bool,
    overwrite: bool,
    npartitions: int,
) -> Checkpoint:
    """Check that ``url`` is writable and holds this run (or nothing), and
    return the :class:`Checkpoint` the tasks use. Called by ``enrich()``,
    before any call.

    Raises
    ------
    CheckpointError
        The path cannot be opened or written, or holds another run.
    """
    shown = os.fspath(url)
    try:
        store = open_store(shown, storage_options)
        store.makedirs()
        probe = f"{INTERNAL_DIR}/.probe-{uuid.uuid4().hex}"
        store.write(probe, b"")
        store.remove(probe)
    except Exception as exc:  # whatever the backend raises, name the path
        raise CheckpointError(
            f"checkpoint path {shown!r} is not writable: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        claim(store, spec, overwrite)
    except OSError as exc:
        raise CheckpointError(f"cannot use checkpoint path {shown!r}: {exc}") from exc
    rows = dask.config.get(JOURNAL_ROWS_KEY, DEFAULT_JOURNAL_ROWS)
    interval = parse_timedelta(dask.config.get(JOURNAL_INTERVAL_KEY, DEFAULT_JOURNAL_INTERVAL))
    if not isinstance(rows, int) or rows < 1 or not interval or interval <= 0:
        raise CheckpointError(
            f"{JOURNAL_ROWS_KEY} must be a positive integer and {JOURNAL_INTERVAL_KEY} "
            f"a positive duration, got {rows!r} and {interval!r}"
        )
    return Checkpoint(
        url=store.url,
        storage_options=dict(storage_options or {}),
        run=spec.fingerprint,
        retry_errors=retry_errors,
        journal_rows=rows,
        journal_interval=float(interval),
        width=max(5, len(str(max(npartitions - 1, 0)))),
    )
