"""Checkpoint and resume: no finished row is paid for twice, whatever the partitioning.

Layout under the checkpoint URL::

    part-00000-<key16>-<run>.parquet   the dataset: the rows of the latest run
    part-00001-<key16>.parquet         (input columns, index, output columns), in
                                       files of its partitions, and of earlier
                                       runs' that it stands on
    _dask_llm/manifest.json            the run: prompt, model, params, schema
    _dask_llm/rows/<part>.arrow        the ledger: rows paid for, by identity
    _dask_llm/journal/<key>/*.jsonl    the ledger: rows of partitions still running
    _dask_llm/members/<part>.arrow     the row identities each dataset file holds

Readers skip ``_`` and ``.`` names, so ``dd.read_parquet(url)`` and
``pyarrow.parquet.read_table(url)`` see exactly the dataset files.

*Paid* is a property of a row (:mod:`._identity`), recorded in the ledger
(:mod:`._ledger`); the dataset is a property of a run. A partition:

0. if earlier runs' files hold it as it is, every row (the resume of any
   layout of an unchanged input), stands on them and is done: found by
   comparing its rows with theirs (:mod:`._standing`, :class:`StoodOn`);
1. otherwise computes its rows' identities and looks them up in this
   process's ledger index: rows found are restored, the others are called
   (journaling them continuously);
2. *stands on* the rows that earlier runs' dataset files hold as they
   are (restored as answered, every column as it is now: the members'
   whole-row hashes), through the run's claims (:mod:`._claims`): a row is
   stood on by one partition of the run, so exact duplicates in two
   partitions are each kept. A file holding a stale row of the partition
   (another value now, an error retried) or an earlier version of one of
   its rows (the same request under another key, the same key with
   another request) is *closed*: the rows other partitions stand on so far
   move to a file of their own (written first), then it is deleted, and
   partitions that come later write their rows of it themselves;
3. commits: the records of rows no committed ledger file holds yet, or
   holds only as an error this run retried, go to ``rows/<part>.arrow``
   (its journal chunks are then deleted); then its members file and its
   dataset file, of the rows it does not stand on (none: no file), are
   written, each atomically, under a name with the run's epoch (no other
   run writes or deletes it);
4. tells the run it committed (:meth:`PartitionCheckpoint.finish`): the
   partition that completes the run's set closes every earlier file its
   partitions do not stand on wholly (rows that left the input, second
   copies).

A resume of unchanged rows under any partitioning writes nothing, and
after a run completes the dataset holds its rows exactly once (the run is
one ``enrich()`` result; the latest is the one computed last, even if an
older result is computed again). During a run no row is written twice
except while a closed file's kept rows are in both files (a crash there
leaves the second copy to the next run's completion). A crash leaves the
ledger whole; the next run finishes the dataset without calling anything
again.

Repeated tasks (lost worker, recomputation, speculation) are idempotent:
they find their rows in the ledger (their earlier attempt's journal is
read back by identity), the run's claims answer them as before, and a
second commit writes the same file names.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._core._store import Store, open_store
from .._errors import CheckpointError
from ._claims import DatasetClaims
from ._identity import RowIds, row_ids, with_row_hashes
from ._journal import JournalWriter
from ._ledger import (
    INTERNAL_DIR,
    JOURNAL_DIR,
    LEDGER_SUFFIX,
    MEMBERS_DIR,
    ROWS_DIR,
    Found,
    LedgerIndex,
    index_for,
    members_to_arrow,
    records_table,
    table_to_arrow,
)
from ._manifest import RunSpec, claim
from ._standing import decoded, held_as_is

__all__ = ["Checkpoint", "PartitionCheckpoint", "open_checkpoint"]

logger = logging.getLogger("dask_llm.checkpoint")


def new_epoch() -> str:
    """A run's epoch: sorts after every earlier run's (wall-clock nanoseconds)."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


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
        fsspec options for ``url`` (credentials, endpoint). Not shown in the repr.
    run : str
        Fingerprint of the run (:attr:`RunSpec.fingerprint`).
    manifest_id : str
        Id of the manifest claimed by ``enrich()``.
    epoch : str
        This run's epoch (:func:`new_epoch`): the files of other epochs are
        earlier runs' files, which its partitions stand on or take away.
    retry_errors : bool
        Call again the rows whose stored outcome is an error.
    width : int
        Digits of the partition number in file names.
    partitions : int
        The run's partitions (numbered from 0): the one that completes the
        set finishes the run's dataset (:meth:`PartitionCheckpoint.finish`);
        0: not known (Spark's batches), the dataset is never finished.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    run: str = ""
    manifest_id: str = ""
    epoch: str = ""
    retry_errors: bool = False
    width: int = 5
    partitions: int = 0

    def store(self) -> Store:
        """The checkpoint's storage, opened in this process."""
        return _open(self)

    def partition(
        self,
        frame: pd.DataFrame,
        columns: Sequence[str],
        *,
        key: Sequence[str] | None = None,
        share_content: bool = True,
        partition_info: Mapping[str, Any] | None = None,
        claims: DatasetClaims | None = None,
        part: str | None = None,
        outputs: Mapping[str, str] | None = None,
        output_columns: Sequence[str] = (),
    ) -> PartitionCheckpoint:
        """The checkpoint of one partition, about to be enriched.

        Parameters
        ----------
        frame : pandas.DataFrame
            The partition.
        columns : sequence of str
            The columns the prompt reads (what decides each row's request).
        key : sequence of str, optional
            Columns identifying a row; default its index.
        share_content : bool
            A row not found by identity may take the stored answer of another
            row with the same request (the job's ``dedup``).
        claims : DatasetClaims, optional
            The run's claims on earlier runs' files, through the job's
            coordinator; default: this process's (one process runs the job).
        part : str, optional
            The partition's label among the claims (default: its number;
            Spark's batches of one partition each have one).
        outputs : mapping, optional
            The output column of each stored field, and ``output_columns``
            every output column: with them, a partition that earlier runs'
            files hold as it is is found by comparing (:mod:`._standing`).
        """
        number = int((partition_info or {}).get("number") or 0)
        store = _open(self)
        if outputs is not None:
            stood = StoodOn.find(self, store, frame, columns, key, number, claims, part, outputs, output_columns)
            if stood is not None:
                return stood
        ids = with_row_hashes(row_ids(frame, columns, key), frame, [*columns, *(key or ())])
        return PartitionCheckpoint(self, store, ids, number, share_content, claims, part)


def _open(ckpt: Checkpoint) -> Store:
    try:
        return open_store(ckpt.url, ckpt.storage_options)
    except (ValueError, ImportError, OSError) as exc:
        raise CheckpointError(f"cannot open checkpoint {ckpt.url}: {exc}") from exc


class PartitionCheckpoint:
    """What is saved of one partition, and how to save the rest.

    Use: :attr:`complete` (nothing to do) or :attr:`todo` -> call them under
    :meth:`journal` -> :meth:`commit` the result; then :meth:`finish`.
    """

    def __init__(
        self, ckpt: Checkpoint, store: Store, ids: RowIds, number: int, share_content: bool,
        claims: DatasetClaims | None = None, part: str | None = None,
    ) -> None:  # fmt: skip
        self.ckpt = ckpt
        self._claims = claims if claims is not None else DatasetClaims(ckpt.epoch)
        self.store = store
        self.ids = ids
        self.number = number
        self.part = part if part is not None else str(number)
        self.key = ids.digest
        # The run's epoch in the name: no other run ever writes or deletes it.
        self.name = f"part-{number:0{ckpt.width}d}-{self.key[:16]}-{ckpt.epoch[-8:]}"
        self.journal_dir = f"{JOURNAL_DIR}/{self.key[:32]}"
        self.index: LedgerIndex = index_for(store, ckpt.manifest_id)
        self._writer: JournalWriter | None = None
        self._inside: np.ndarray | None = None
        try:
            self.index.refresh(self.journal_dir, run=ckpt.epoch)
            self.found: Found = self.index.lookup(ids, share_content=share_content)
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            raise CheckpointError(f"cannot read the ledger of checkpoint {store.url}: {exc}") from exc
        usable = self.found.found | self.found.shared
        if ckpt.retry_errors:
            usable &= self.found.records["error"].isna().to_numpy()
        self.restored = usable
        #: Positions of the rows to call.
        self.todo: list[int] = np.flatnonzero(~usable).tolist()

    @functools.cached_property
    def complete(self) -> bool:
        """Nothing to call or write: every row has a committed record, and
        earlier runs' files hold every row as it is now, which this
        partition stands on (a rerun of any layout of unchanged rows)."""
        try:
            return not self.todo and bool(self.found.committed.all()) and bool(self._plan().all())
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"could not read checkpoint {self.store.url}: {type(exc).__name__}: {exc}") from exc

    @property
    def records(self) -> pd.DataFrame:
        """The stored fields of each row (null where it is to be called)."""
        return self.found.records

    #: The output columns as the dataset files hold them, when every row
    #: comes from them (:class:`StoodOn`); ``None``: made from :attr:`records`.
    stored_outputs: pa.Table | None = None

    def restored_by_run(self) -> tuple[int, int, int]:
        """The restored rows as progress counts them: from earlier runs, and
        from earlier attempts of this run (a restarted task), with how many
        of the latter are errors. Told apart by when each row finished."""
        started = int(self.ckpt.epoch.split("-")[0] or 0) / 1e9
        records = self.found.records
        this_run = self.restored & (records["finished_at"].to_numpy(dtype=float, na_value=0.0) >= started)
        errors = int((this_run & records["error"].notna().to_numpy()).sum())
        return int((self.restored & ~this_run).sum()), int(this_run.sum()), errors

    def journal(self) -> JournalWriter:
        """A journal writer for the rows about to be called (a context manager)."""
        self._writer = JournalWriter(self.store, self.journal_dir, self.ids, self.index)
        return self._writer

    def commit(self, result: pd.DataFrame, fields: pd.DataFrame) -> None:
        """Record the rows, take stale files away, and write the dataset file.

        Parameters
        ----------
        result : pandas.DataFrame
            The enriched partition, as returned to the user.
        fields : pandas.DataFrame
            The :data:`~._ledger.FIELDS` of every row, by position.

        Raises
        ------
        CheckpointError
            A write failed; what was saved before it (journal, ledger) stands.
        """
        store, index = self.store, self.index
        try:
            # 1. The ledger: rows no committed file holds yet, and rows called
            #    again (a stored error retried): their committed record is
            #    the old outcome, which the next process would otherwise read.
            retried = self.found.committed & ~self.restored
            fresh = np.flatnonzero(~self.found.committed | retried)
            if len(fresh):
                records = records_table(self.ids, fresh, fields)
                # A file of this name may already hold the rows' first records
                # (a retry under the same partitioning): never overwrite it.
                suffix = f"-{uuid.uuid4().hex[:8]}" if retried.any() else ""
                rel = f"{ROWS_DIR}/{self.name}{suffix}{LEDGER_SUFFIX}"
                store.write(rel, table_to_arrow(records))
                index.register(rel, records, committed=True)
            # 2. Journal chunks whose every row is now committed.
            chunks = set(self._writer.written if self._writer is not None else ())
            chunks.update(index.journals_holding(self.ids))
            covered = sorted(c for c in chunks if index.covered(c))
            store.remove_files(covered)
            for chunk in covered:
                index.forget_chunk(chunk)
            store.remove_empty_dir(self.journal_dir)
            # 3. Earlier runs' files: stand on the rows they hold as they are,
            #    take away those that hold stale rows (see _plan).
            rest = np.flatnonzero(~self._plan())
            # 4. The rows no earlier file holds: this run's file. Members
            #    first: a dataset file never exists without one, so it can
            #    always be taken away.
            if len(rest):
                whole = len(rest) == len(self.ids)
                ids = self.ids if whole else self.ids.take(rest)
                store.write(f"{MEMBERS_DIR}/{self.name}{LEDGER_SUFFIX}", members_to_arrow(ids, self.ckpt.epoch))
                index.register_members(self.name, ids, self.ckpt.epoch)
                store.write(f"{self.name}.parquet", _parquet(result if whole else result.iloc[rest]))
            elif index.members_of(self.name) is not None:
                self._remove(self.name)  # an earlier attempt's, of rows earlier files hold
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"could not commit partition {self.number} to checkpoint {store.url}: {type(exc).__name__}: {exc}"
            ) from exc

    def finish(self) -> None:
        """Tell the run this partition is committed; the partition that
        completes the run then closes every earlier run's file that its
        partitions do not stand on wholly (rows that left the input, copies
        of rows written again), keeping the rows they stand on."""
        total = self.ckpt.partitions
        if total <= 0 or not self._claims.done(self.number, total):
            return
        try:
            self.index.refresh(run=self.ckpt.epoch, records=False)
            for name, size in self.index.files_of_other_runs(self.ckpt.epoch).items():
                self._close(name, size, unless_kept=True)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"could not finish the run in checkpoint {self.store.url}: {type(exc).__name__}: {exc}"
            ) from exc

    def _plan(self) -> np.ndarray:
        """Which rows earlier runs' files hold as they are and this partition
        stands on (it writes the others). A file holding a stale row of this
        partition (another value now, or an error retried), or an earlier
        version of one of its rows, is closed first: it goes, and the rows
        other partitions stand on move to a file of their own. Decided once."""
        if self._inside is not None:
            return self._inside
        index, ids, epoch = self.index, self.ids, self.ckpt.epoch
        n = len(ids)
        matched = self.found.matched
        shared = matched[(matched != 0) & (matched != ids.hi)]
        placed, outside = index.holding(np.concatenate([ids.hi, shared]), run=epoch)
        holding = sorted(placed)
        inside = np.zeros(n, dtype=bool)
        stale: set[str] = set()
        # Rows no earlier file holds under their identity may be there under
        # another key (a renumbered index: a reordered or re-split CSV) or
        # with another request (an edited row): files with rows of the same
        # request, or of the same key, hold their earlier versions.
        outside = outside[:n]
        if outside.any():
            for kind in ("content", "key"):
                stale.update(index.files_with(kind, np.unique(getattr(ids, kind)[outside]), run=epoch))
        mine = functools.cache(lambda: pd.Index(ids.hi, copy=False))  # (unique: occurrences tell repeats apart)
        others = pd.Index(shared) if len(shared) else None
        for name in holding:
            members = index.members_of(name)
            if members is None:
                continue  # closed meanwhile
            where = placed[name]
            if where is not None:
                at, rows = where
                at, rows = at[rows < n], rows[rows < n]  # (the others are rows these share answers with)
            else:
                pos = mine().get_indexer(members)
                at = np.flatnonzero(pos >= 0)
                rows = pos[at]
            current = self.restored[rows] & self._as_they_are(name, at, rows)
            if name in stale or not current.all() or (others is not None and (others.get_indexer(members) >= 0).any()):
                stale.add(name)  # this partition writes its rows of it
                continue
            ok = ~inside[rows]  # (a row two files hold: one copy)
            if ok.any():
                whole = len(at) == len(members) and bool(ok.all())
                kept = self._claims.keep(name, self.part, len(members), None if whole else at[ok])
                inside[rows[ok][kept]] = True
        for name in sorted(stale):
            members = index.members_of(name)
            if members is not None:
                self._close(name, len(members))
        self._inside = inside
        return inside

    def _as_they_are(self, name: str, at: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Whether dataset file ``name`` holds each of this partition's
        ``rows`` (at positions ``at`` of the file) with every column as it is
        now (files written before whole-row hashes were kept: not known)."""
        hashes = self.index.member_rows(name)
        if hashes is None or self.ids.row is None:
            return np.zeros(len(rows), dtype=bool)
        return hashes[at] == self.ids.row[rows]

    def _close(self, name: str, size: int, *, unless_kept: bool = False) -> None:
        """Take an earlier run's file away, keeping the rows the run's
        partitions stand on in a file of their own (same epoch: still an
        earlier run's file), written before the file goes: a partition
        computed again finds its rows in one or the other (a crash between
        the two leaves both, and the next run that completes takes the copy
        no partition stands on away)."""
        number = name.split("-")[1]
        digest = hashlib.sha256(f"{name} {self.ckpt.epoch}".encode()).hexdigest()[:16]
        into = f"part-{number}-{digest}"
        kept = self._claims.close(name, self.part, size, into, unless_kept=unless_kept)
        if kept is None:
            return  # another partition closes it, or nothing to close
        members, about = self.index.members_of(name), self.index.member_hashes(name)
        if members is None or about is None:
            return  # already closed (by an earlier attempt of this task)
        if len(kept):
            data = self.store.read(f"{name}.parquet")
            if data is None:
                return  # an earlier attempt of this task closed it: its rows are in ``into``
            table = pq.read_table(pa.BufferReader(data))
            epoch, hashes = about
            ids = RowIds(hi=members[kept], lo=members[kept], content=hashes["content"][kept],
                         key=hashes["key"][kept], row=hashes["row"][kept])  # fmt: skip
            self.store.write(f"{MEMBERS_DIR}/{into}{LEDGER_SUFFIX}", members_to_arrow(ids, epoch))
            self.index.register_members(into, ids, epoch)
            self.store.write(f"{into}.parquet", _table_parquet(table.take(pa.array(kept))))
        self._remove(name)

    def _remove(self, name: str, run: str = "") -> None:
        """Delete a dataset file, then its members file (never the other way
        round: a dataset file without members could not be taken away)."""
        self.store.remove_files([f"{name}.parquet"])
        self.store.remove_files([f"{MEMBERS_DIR}/{name}{LEDGER_SUFFIX}"])
        self.index.forget_members(name, run=run)


class StoodOn(PartitionCheckpoint):
    """A partition that earlier runs' files hold as it is, every row, which
    it stands on: nothing to call or write (see :mod:`._standing`)."""

    def __init__(
        self, ckpt: Checkpoint, store: Store, index: LedgerIndex, number: int, claims: DatasetClaims,
        part: str, records: pd.DataFrame, outputs: pa.Table,
    ) -> None:  # fmt: skip
        self.ckpt, self.store, self.index, self.number, self._claims, self.part = (
            ckpt, store, index, number, claims, part,
        )  # fmt: skip
        self._records = records
        self.stored_outputs = outputs
        self.todo = []
        self.restored = np.ones(len(records), dtype=bool)
        self.key = ""
        self.__dict__["complete"] = True  # (the cached property, known)

    @classmethod
    def find(
        cls, ckpt: Checkpoint, store: Store, frame: pd.DataFrame, columns: Sequence[str],
        key: Sequence[str] | None, number: int, claims: DatasetClaims | None, part: str | None,
        outputs: Mapping[str, str], output_columns: Sequence[str],
    ) -> StoodOn | None:  # fmt: skip
        """The partition, if earlier files hold it all as it is and the run
        lets it stand on every row of them; else ``None``."""
        index = index_for(store, ckpt.manifest_id)
        claims = claims if claims is not None else DatasetClaims(ckpt.epoch)
        label = part if part is not None else str(number)
        try:
            index.refresh(run=ckpt.epoch, records=False)
            held = held_as_is(frame, columns, key, index, ckpt.epoch,
                              lambda name: decoded.read(store, name, index.version_of(name)),
                              outputs, output_columns,
                              lambda name, rows: decoded.used(store, name, index.version_of(name), rows))  # fmt: skip
        except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
            raise CheckpointError(f"cannot read checkpoint {store.url}: {exc}") from exc
        if held is None:
            return None
        pieces, records, stored = held
        if ckpt.retry_errors and records["error"].notna().any():
            return None
        for piece in pieces:
            whole = piece.rows == piece.size
            at = None if whole else np.arange(piece.start, piece.start + piece.rows)
            if not claims.keep(piece.name, label, piece.size, at).all():
                return None  # (a copy another partition stands on: the usual path writes its own)
        return cls(ckpt, store, index, number, claims, label, records, stored)

    @property
    def records(self) -> pd.DataFrame:
        return self._records

    def restored_by_run(self) -> tuple[int, int, int]:
        return len(self._records), 0, 0  # earlier runs' files: answered by earlier runs


def _parquet(frame: pd.DataFrame) -> bytes:
    # The output columns have fixed extension dtypes, so an all-null error
    # column is still a string column and every file has one schema.
    try:
        table = pa.Table.from_pandas(frame, preserve_index=True)
    except UnicodeEncodeError:
        # A text cell Parquet cannot hold (a lone surrogate): that row's
        # prompt already failed; its copy in the checkpoint gets U+FFFD.
        logger.warning("checkpoint: replacing text that is not valid UTF-8 in the dataset file")
        table = pa.Table.from_pandas(_valid_text(frame), preserve_index=True)
    return _table_parquet(table)


def _table_parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def _valid_text(frame: pd.DataFrame) -> pd.DataFrame:
    def fix(value: Any) -> Any:
        return value.encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else value

    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object:
            out[name] = out[name].map(fix)
    return out


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
        raise CheckpointError(f"checkpoint path {shown!r} is not writable: {type(exc).__name__}: {exc}") from exc
    try:
        manifest_id = claim(store, spec, overwrite)
    except (OSError, CheckpointError) as exc:
        # Refused: leave the folder as it was (the probe made _dask_llm/; an
        # existing checkpoint's is not empty, so it stays).
        store.remove_empty_dir(INTERNAL_DIR)
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot use checkpoint path {shown!r}: {exc}") from exc
    return Checkpoint(
        url=store.url,
        storage_options=dict(storage_options or {}),
        run=spec.fingerprint,
        manifest_id=manifest_id,
        epoch=new_epoch(),
        retry_errors=retry_errors,
        width=max(5, len(str(max(npartitions - 1, 0)))),
        partitions=max(npartitions, 0),
    )
