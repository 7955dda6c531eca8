"""Checkpoint and resume: no finished row is paid for twice, whatever the partitioning.

Layout under the checkpoint URL::

    part-00000-<key16>.parquet         the dataset: the rows of the latest run
    part-00001-<key16>.parquet         (input columns, index, output columns), in
                                       files of its partitions or adopted from
                                       earlier runs
    _dask_llm/manifest.json            the run: prompt, model, params, schema
    _dask_llm/rows/<part>.arrow        the ledger: rows paid for, by identity
    _dask_llm/journal/<key>/*.jsonl    the ledger: rows of partitions still running
    _dask_llm/members/<part>.arrow     the row identities each dataset file holds

Readers skip ``_`` and ``.`` names, so ``dd.read_parquet(url)`` and
``pyarrow.parquet.read_table(url)`` see exactly the dataset files.

*Paid* is a property of a row (:mod:`._identity`), recorded in the ledger
(:mod:`._ledger`); the dataset is a property of a run. A partition:

1. computes its rows' identities and looks them up in this process's ledger
   index: rows found are restored, the others are called;
2. **fast path**: if the dataset already holds exactly this partition (a
   file with its number and content key, listing exactly its rows, every
   column as it is now), every
   row is found, no other run's file holds these rows too, and the run
   *keeps* that file (the run's first claim on it, through the coordinator:
   see step 3), nothing is called or written;
3. otherwise it calls the missing rows (journaling them continuously), then
   commits: the records of rows no committed ledger file holds yet, or
   holds only as an error this run retried, go to ``rows/<part>.arrow``
   (its journal chunks are then deleted); a dataset file of *another run*
   that holds only rows of this partition, restored as they were and with
   every column as it is now (the members' whole-row hashes), is
   *adopted* (kept as it is: a resume under fewer or other partitions
   rewrites only the files its boundaries cut through); the other files of
   other runs that hold any of its rows (or the rows whose answers it
   shares) are deleted, unless the run keeps them (their other rows belong
   to other partitions of this run, which rewrite them or stand on the
   file, and are in the ledger meanwhile); then its members file and its
   dataset file, of the rows no adopted file holds (none: no file), are
   written, each atomically. The run's first claim on a file, keep or
   supersede, wins, so a file is never deleted under a partition that
   stands on it.

So after any sequence of runs that completes, the dataset holds the latest
run's rows exactly once (a run is one ``enrich()`` result; the latest is
the one computed last, even if an older result is computed again; rows of
other runs' files are superseded, never
duplicated), and during a run it holds no row twice: a file is deleted
before the rows it held are written again. Files of the same run never
supersede each other, so two partitions that happen to hold identical rows
keep both. A crash leaves the ledger whole; the next run finishes the
dataset without calling anything again.

Repeated tasks (lost worker, recomputation, speculation) are idempotent:
they find their rows in the ledger (their earlier attempt's journal is
read back by identity), and a second commit writes the same file names.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._core._store import Store, open_store
from .._errors import CheckpointError
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

__all__ = ["Checkpoint", "PartitionCheckpoint", "open_checkpoint"]

logger = logging.getLogger("dask_llm.checkpoint")

#: ``claim(name, keep)``: see :meth:`Checkpoint.partition`.
Claim = Callable[[str, bool], bool]


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
        This run's epoch (:func:`new_epoch`): dataset files of other epochs
        that hold a partition's rows are superseded by it.
    retry_errors : bool
        Call again the rows whose stored outcome is an error.
    width : int
        Digits of the partition number in file names.
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    run: str = ""
    manifest_id: str = ""
    epoch: str = ""
    retry_errors: bool = False
    width: int = 5

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
        claim: Claim | None = None,
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
        claim : callable, optional
            ``claim(name, keep)``: the run's first claim on a dataset file
            (keep it, or supersede it) wins; ``True`` when this one is it.
            The job's coordinator answers it (``dataset_claim``); without
            one, every claim wins (one process, one partition at a time).
        """
        number = int((partition_info or {}).get("number") or 0)
        ids = with_row_hashes(row_ids(frame, columns, key), frame, [*columns, *(key or ())])
        return PartitionCheckpoint(self, _open(self), ids, number, share_content, claim)


def _open(ckpt: Checkpoint) -> Store:
    try:
        return open_store(ckpt.url, ckpt.storage_options)
    except (ValueError, ImportError, OSError) as exc:
        raise CheckpointError(f"cannot open checkpoint {ckpt.url}: {exc}") from exc


class PartitionCheckpoint:
    """What is saved of one partition, and how to save the rest.

    Use: :attr:`complete` (nothing to do) or :attr:`todo` -> call them under
    :meth:`journal` -> :meth:`commit` the result.
    """

    def __init__(
        self, ckpt: Checkpoint, store: Store, ids: RowIds, number: int, share_content: bool,
        claim: Claim | None = None,
    ) -> None:  # fmt: skip
        self.ckpt = ckpt
        self._claim = claim
        self.store = store
        self.ids = ids
        self.number = number
        self.key = ids.digest
        self.name = f"part-{number:0{ckpt.width}d}-{self.key[:16]}"
        self.journal_dir = f"{JOURNAL_DIR}/{self.key[:32]}"
        self.index: LedgerIndex = index_for(store, ckpt.manifest_id)
        self._writer: JournalWriter | None = None
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
        #: The dataset already holds exactly this partition, every row
        #: restored, and the run keeps that file (no partition of it
        #: supersedes the file: see :meth:`commit`).
        self.complete = (
            not self.todo
            and bool(self.found.found.all())
            and self._holds_exactly(self.name, np.arange(len(ids)))
            # No other run's file holds these rows too (a copy left by an
            # earlier run's duplicate partitions would stay forever).
            and set(self.index.files_holding(ids.hi, run=ckpt.epoch)[0]) <= {self.name}
            and self._claims(self.name, keep=True)
        )

    def _claims(self, name: str, *, keep: bool) -> bool:
        return self._claim is None or bool(self._claim(name, keep))

    @property
    def records(self) -> pd.DataFrame:
        """The stored fields of each row (null where it is to be called)."""
        return self.found.records

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
        """Record the rows, supersede earlier files, and write the dataset file.

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
            # 3. Files of other runs holding any of these rows (or rows
            #    whose answers these share). A file that lies wholly inside
            #    this partition is *adopted*: kept as it is, its rows not
            #    written again (a resume under fewer or other partitions
            #    rewrites only the files it cuts through). The others are
            #    superseded, unless a partition of this run stands on the
            #    file: the run's first claim on a file wins, so a file is
            #    never deleted under a partition that kept it. Its own name
            #    is kept and overwritten; if another partition superseded
            #    that name first, it writes under a name of its own.
            epoch = self.ckpt.epoch
            alternate = f"{self.name}-{epoch[-8:]}"
            matched = self.found.matched
            held = np.concatenate([self.ids.hi, matched[(matched != 0) & (matched != self.ids.hi)]])
            holding, outside = index.files_holding(held, run=epoch)
            adopted, inside = self._adopt(holding)
            superseded = set(holding) - set(adopted)
            # Rows the dataset does not hold under their own identity may be
            # there under another key (a renumbered index: a reordered or
            # re-split CSV) or with another request (an edited row): files
            # with rows of the same request, or of the same key, stand for them.
            outside = outside[: len(self.ids)]
            if outside.any():
                for kind in ("content", "key"):
                    values = np.unique(getattr(self.ids, kind)[outside])
                    superseded.update(index.files_with(kind, values, run=epoch))
            rest = np.flatnonzero(~inside)
            if not len(rest):
                # Every row is in adopted files: this partition has no file of
                # its own (one left by an earlier attempt would hold them twice).
                superseded.add(self.name)
                name = ""
            else:
                name = self.name if self._claims(self.name, keep=True) else alternate
            for old in sorted(superseded):
                if old != name and index.members_of(old) is not None and self._claims(old, keep=False):
                    self._remove(old, run=epoch)
            if not name:
                return
            # Unless nothing was called and the file already holds exactly
            # these rows (a rerun of this layout):
            if self.todo or not self._holds_exactly(name, rest):
                whole = len(rest) == len(self.ids)
                ids = self.ids if whole else self.ids.take(rest)
                # 4. Members first: a dataset file never exists without one,
                #    so it can always be superseded.
                store.write(f"{MEMBERS_DIR}/{name}{LEDGER_SUFFIX}", members_to_arrow(ids, epoch))
                index.register_members(name, ids, epoch)
                store.write(f"{name}.parquet", _parquet(result if whole else result.iloc[rest]))
            if name == self.name and index.members_of(alternate) is not None:
                # A copy of these rows this run wrote under its own name
                # while the usual one was superseded (an earlier compute).
                self._remove(alternate)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"could not commit partition {self.number} to checkpoint {store.url}: {type(exc).__name__}: {exc}"
            ) from exc

    def _adopt(self, files: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Of ``files`` (other runs' dataset files holding rows of this
        partition), those that hold only rows of this partition, none of them
        twice, and that the run keeps (its first claim on them); and which
        rows of the partition they hold."""
        inside = np.zeros(len(self.ids), dtype=bool)
        mine = pd.Index(self.ids.hi)
        if not mine.is_unique:
            return [], inside
        adopted = []
        for name in files:
            members = self.index.members_of(name)
            if name == self.name or members is None or len(members) > len(mine):
                continue  # its own name: rewritten with the rows no adopted file holds
            pos = mine.get_indexer(members)
            # Only rows restored as they were: a row called again (a retried
            # error) has a new answer, which the file does not hold.
            if (pos < 0).any() or inside[pos].any() or not self.restored[pos].all():
                continue
            if not self._holds_as_they_are(name, pos):
                continue  # another column of these rows changed since
            if not self._claims(name, keep=True):
                continue
            inside[pos] = True
            adopted.append(name)
        return adopted, inside

    def _holds_as_they_are(self, name: str, positions: np.ndarray) -> bool:
        """Whether dataset file ``name``, whose rows are this partition's
        rows at ``positions`` (in its order), holds every column of them as
        it is now (files written before whole-row hashes were kept: not known)."""
        rows = self.index.member_rows(name)
        return rows is not None and self.ids.row is not None and np.array_equal(rows, self.ids.row[positions])

    def _holds_exactly(self, name: str, positions: np.ndarray) -> bool:
        """Whether visible dataset file ``name`` holds exactly this
        partition's rows at ``positions``, in that order, as they are now."""
        members = self.index.members_of(name)
        return (
            members is not None
            and np.array_equal(members, self.ids.hi[positions])
            and self._holds_as_they_are(name, positions)
        )

    def _remove(self, name: str, run: str = "") -> None:
        """Delete a dataset file, then its members file (never the other way
        round: a dataset file without members could not be superseded)."""
        self.store.remove_files([f"{name}.parquet"])
        self.store.remove_files([f"{MEMBERS_DIR}/{name}{LEDGER_SUFFIX}"])
        self.index.forget_members(name, run=run)


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
    )
