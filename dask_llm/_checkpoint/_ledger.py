"""The ledger: every row the run has paid for, keyed by row identity.

It is the source of truth for "already paid": a row whose identity has a
record is never called again (unless it is an error and ``retry_errors``).
Records live in two kinds of files under ``_dask_llm/``::

    rows/<part-file>.arrow              written when a partition commits: the
                                        records of its rows that no committed
                                        file held yet
    journal/<partition>/<w>-<n>.jsonl   written while a partition runs, by its
                                        journal (:mod:`._journal`); deleted once
                                        a committed file covers them

A row is recorded when it is paid for: once, or again when a stored error
is retried (the best record wins: a success over an error, then the
latest), so the ledger grows with the data and the retries, not with the
number of runs or partitionings.

:class:`LedgerIndex` is this process's view of the ledger, built once per
process and run and refreshed incrementally (only files it has not read):
resuming a partition costs a hash and a lookup per row, never a read of the
whole ledger per partition. It also holds the *members* of each visible
dataset file (``_dask_llm/members/``), which is how a partition finds the
files of an earlier partitioning that hold its rows (see :mod:`._partition`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .._core._store import Store
from ._identity import RowIds

__all__ = [
    "FIELDS",
    "FIELD_SCHEMA",
    "INTERNAL_DIR",
    "JOURNAL_DIR",
    "LEDGER_SUFFIX",
    "MEMBERS_DIR",
    "ROWS_DIR",
    "Found",
    "LedgerIndex",
    "dicts_table",
    "index_for",
    "members_to_arrow",
    "read_members",
    "records_table",
    "records_to_jsonl",
    "table_to_arrow",
    "to_pandas",
]

logger = logging.getLogger("dask_llm.checkpoint")

#: Everything that is not output data lives here; readers skip ``_`` names.
INTERNAL_DIR = "_dask_llm"
ROWS_DIR = f"{INTERNAL_DIR}/rows"
JOURNAL_DIR = f"{INTERNAL_DIR}/journal"
MEMBERS_DIR = f"{INTERNAL_DIR}/members"
#: Internal files are Arrow IPC files, never ``*.parquet``: ``dd.read_parquet``
#: finds every ``*.parquet`` under a folder, ``_``-prefixed ones included.
LEDGER_SUFFIX = ".arrow"
#: LZ4: the ledger is read back whole by every process of a resumed run, and
#: LZ4 decompresses several times faster than zstd for a little more space.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4" if pa.Codec.is_available("lz4_frame") else None)

#: The stored fields of a row's outcome (those the output columns hold, and
#: when it finished), with their pandas dtypes.
FIELDS: dict[str, str] = {
    "text": "string",
    "error": "string",
    "prompt_tokens": "Int64",
    "completion_tokens": "Int64",
    "attempts": "int64",
    "latency": "float64",
    "rate_limited": "int64",
    "finished_at": "float64",
}
_ARROW = pa.schema(
    [pa.field(n, pa.uint64()) for n in ("hi", "lo", "content")]
    + [
        pa.field("text", pa.string()),
        pa.field("error", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("attempts", pa.int64()),
        pa.field("latency", pa.float64()),
        pa.field("rate_limited", pa.int64()),
        pa.field("finished_at", pa.float64()),
    ]
)


#: The Arrow type of each stored field.
FIELD_SCHEMA = pa.schema([_ARROW.field(name) for name in FIELDS])


# ------------------------------------------------------------------ records


def records_table(ids: RowIds, positions: np.ndarray, fields: pd.DataFrame) -> pa.Table:
    """Ledger records of the rows at ``positions``, whose :data:`FIELDS`
    are the rows of ``fields`` at those positions."""
    part = fields.iloc[positions]
    arrays = [pa.array(ids.hi[positions]), pa.array(ids.lo[positions]), pa.array(ids.content[positions])]
    arrays += [pa.array(part[name], type=_ARROW.field(name).type, from_pandas=True) for name in FIELDS]
    return pa.Table.from_arrays(arrays, schema=_ARROW)


#: Members files hold hashes, which do not compress: read without decoding.
_IPC_PLAIN = pa.ipc.IpcWriteOptions(compression=None)


def _to_arrow_file(table: pa.Table, options: pa.ipc.IpcWriteOptions = _IPC_OPTIONS) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def table_to_arrow(table: pa.Table) -> bytes:
    """Ledger records as an Arrow IPC file (what ``rows/`` holds)."""
    return _to_arrow_file(table)


def records_to_jsonl(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Ledger records as JSON Lines (what a journal chunk holds)."""
    return "\n".join(json.dumps(r, ensure_ascii=False, allow_nan=True) for r in records).encode()


def jsonl_to_table(data: bytes, where: str) -> pa.Table:
    rows = []
    for line in data.decode().splitlines():
        try:
            record = json.loads(line)
            rows.append({name: record[name] for name in _ARROW.names})
        except (ValueError, KeyError, TypeError):
            # Chunks are written atomically, so this is damage from outside;
            # the row is simply called again.
            logger.warning("skipping a malformed journal line in %s", where)
    return pa.Table.from_pylist(rows, schema=_ARROW)


def dicts_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Records given as dicts (the journal's) as a table of the ledger's schema."""
    return pa.Table.from_pylist(list(records), schema=_ARROW)


def _read_arrow(data: bytes) -> pa.Table:
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


#: The hashes a members file keeps of each row besides its identity (files
#: written before a hash was kept lack it).
_MEMBER_HASHES = ("content", "key", "row")


def read_members(data: bytes) -> tuple[np.ndarray, str, dict[str, np.ndarray]]:
    """The row identities (``hi`` halves) a dataset file holds, the run
    epoch that wrote it, and the rows' request content, key and whole-row
    hashes (those it has: older files lack the later ones)."""
    table = _read_arrow(data)
    epoch = (table.schema.metadata or {}).get(b"epoch", b"").decode()
    hashes = {name: table.column(name).to_numpy() for name in _MEMBER_HASHES if name in table.column_names}
    return table.column("hi").to_numpy(), epoch, hashes


def members_to_arrow(ids: RowIds, epoch: str) -> bytes:
    """The members file of a dataset file: its rows' identities, request
    content, key and whole-row hashes, and the epoch."""
    names = ["hi", *(n for n in _MEMBER_HASHES if getattr(ids, n) is not None)]
    table = pa.table({name: pa.array(getattr(ids, name), pa.uint64()) for name in names})
    return _to_arrow_file(table.replace_schema_metadata({"epoch": epoch}), _IPC_PLAIN)


#: pandas dtypes of the stored fields as a partition sees them (all nullable,
#: strings Arrow-backed: converting a million answers costs no Python object).
_PANDAS_TYPES = {
    pa.string(): pd.StringDtype("pyarrow"),
    pa.int64(): pd.Int64Dtype(),
    pa.float64(): pd.Float64Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
}


def to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


# ------------------------------------------------------------------ the index


@dataclass
class Found:
    """What the ledger holds for the rows of one partition.

    Attributes
    ----------
    records : pandas.DataFrame
        The :data:`FIELDS` of each row's best record, at the row's position;
        null where none (every column nullable).
    found : numpy.ndarray of bool
        The row has a record of its own identity.
    shared : numpy.ndarray of bool
        The row has no record, but another row with the same request
        content was answered: its answer is shared (no call).
    committed : numpy.ndarray of bool
        The row's record is in a committed file (not only in a journal).
    matched : numpy.ndarray of uint64
        The identity (``hi``) of the record used, for found and shared rows
        (0 elsewhere): the dataset rows this row stands for.
    """

    records: pd.DataFrame
    found: np.ndarray
    shared: np.ndarray
    committed: np.ndarray
    matched: np.ndarray


class _Block:
    """An immutable block of records, one per identity (the best), indexed."""

    def __init__(self, table: pa.Table, committed: np.ndarray) -> None:
        hi = table.column("hi").to_numpy()
        ok = table.column("error").is_null().to_numpy(zero_copy_only=False)
        finished = np.nan_to_num(table.column("finished_at").to_numpy(), nan=0.0)  # (nulls come as NaN)
        by_id = pd.Index(hi, copy=False)
        if not by_id.is_unique:
            # Best record first: a success over an error, committed over
            # journaled, later over earlier; then one per identity.
            order = np.lexsort((-finished, ~committed, ~ok))
            first = ~pd.Index(hi[order], copy=False).duplicated(keep="first")
            keep = order[first]
            table, hi, ok, committed, finished = table.take(keep), hi[keep], ok[keep], committed[keep], finished[keep]
            by_id = pd.Index(hi, copy=False)
        self.table = table  # one chunk per file read: a run of rows is sliced, not copied
        self._combined: pa.Table | None = None
        self.hi = hi
        self.lo = table.column("lo").to_numpy()
        self.ok = ok
        self.committed = committed
        self.finished = finished
        self.by_id = by_id
        self._by_content: tuple[pd.Index, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.hi)

    @property
    def combined(self) -> pa.Table:
        """The records in one chunk, made on the first lookup that takes rows
        here and there (one take per lookup, not one per file)."""
        if self._combined is None:
            self._combined = self.table.combine_chunks()
        return self._combined

    def get(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Position of each identity in this block, -1 where absent."""
        start = _run_in(self.hi, hi, self.by_id)
        if start is not None:
            # The rows in the order they were committed (any layout of an
            # unshuffled input): one probe, not one per row.
            pos = np.arange(start, start + len(hi))
            return np.where(self.lo[start : start + len(hi)] == lo, pos, -1)
        pos = self.by_id.get_indexer(hi)
        hit = pos >= 0
        # A 64-bit half that matches with another lower half is a different row.
        hit[hit] = self.lo[pos[hit]] == lo[hit]
        return np.where(hit, pos, -1)

    def get_content(self, content: np.ndarray) -> np.ndarray:
        """Position of a success with the same request content, -1 where none."""
        if self._by_content is None:
            rows = np.flatnonzero(self.ok)
            values = self.table.column("content").to_numpy()[rows]
            keep = ~pd.Index(values).duplicated()
            self._by_content = (pd.Index(values[keep]), rows[keep])
        index, rows = self._by_content
        if not len(rows):
            return np.full(len(content), -1, dtype=np.int64)
        pos = index.get_indexer(content)
        return np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)

    @classmethod
    def merge(cls, blocks: Sequence[_Block]) -> _Block:
        return cls(pa.concat_tables([b.table for b in blocks]), np.concatenate([b.committed for b in blocks]))


def _pick(blocks: Sequence[_Block], positions: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``n`` rows, the block holding its best record (-1: none)
    and the position there; ties go to the earlier block."""
    best_block = np.full(n, -1, dtype=np.int64)
    best_pos = np.full(n, -1, dtype=np.int64)
    score = np.full(n, -1.0)
    for b, (block, pos) in enumerate(zip(blocks, positions, strict=False)):
        hit = pos >= 0
        p = pos[hit]
        # ok (4) over error, committed (2) over journaled, then later finished.
        s = block.ok[p] * 4.0 + block.committed[p] * 2.0 + block.finished[p] / 1e10
        better = np.zeros(n, dtype=bool)
        better[hit] = s > score[hit]
        score[better] = s[better[hit]]
        best_block[better] = b
        best_pos[better] = pos[better]
    return best_block, best_pos


def _gather(blocks: Sequence[_Block], which: np.ndarray, pos: np.ndarray, n: int) -> pa.Table:
    """The chosen records, aligned to ``n`` rows (null rows where none)."""
    parts = []
    for b, block in enumerate(blocks):
        mine = which == b
        if mine.all():
            n_pos = len(pos)
            if n_pos and pos[0] >= 0 and pos[-1] - pos[0] == n_pos - 1 and (np.diff(pos) == 1).all():
                parts.append(block.table.slice(int(pos[0]), n_pos))  # a run of rows: no copy
            else:
                parts.append(block.combined.take(pa.array(pos)))  # no nulls: the cheap take
        elif mine.any():
            parts.append(block.combined.take(pa.array(np.where(mine, pos, 0), mask=~mine)))
    if not parts:
        return pa.Table.from_pylist([], schema=_ARROW).take(pa.array([None] * n, pa.int64()))
    if len(parts) == 1:
        return parts[0]
    columns = [pc.coalesce(*(p.column(i) for p in parts)) for i in range(len(_ARROW))]
    return pa.Table.from_arrays(columns, schema=_ARROW)


#: Where a file holds rows: their positions in the file, and in the rows asked for.
Placed = tuple[np.ndarray, np.ndarray]


def _run_in(values: np.ndarray, wanted: np.ndarray, index: pd.Index | None) -> int | None:
    """Where ``wanted`` is a run of ``values`` (``values[p:p+len(wanted)]``),
    found by one probe (``index``, or a scan); ``None`` when it is not one."""
    n = len(wanted)
    if not n or n > len(values):
        return None
    if index is not None:
        try:
            start = index.get_loc(wanted[0])
        except KeyError:
            return None
        if not isinstance(start, (int, np.integer)):
            return None  # a repeated identity: not a run
    else:
        hits = np.flatnonzero(values == wanted[0])
        if len(hits) != 1:
            return None
        start = hits[0]
    start = int(start)
    if start + n <= len(values) and np.array_equal(values[start : start + n], wanted):
        return start
    return None


class _Segment:
    """Identity -> dataset file, for a batch of members files."""

    def __init__(self, members: Mapping[str, tuple[np.ndarray, str]]) -> None:
        arrays = [ids for ids, _ in members.values()]
        self.names = list(members)
        self.owner = np.repeat(np.arange(len(arrays), dtype=np.int32), [len(a) for a in arrays])
        self.starts = np.cumsum([0, *(len(a) for a in arrays)])[:-1]
        self.hi = np.concatenate(arrays) if arrays else np.empty(0, np.uint64)
        self._index: pd.Index | None = None
        #: The epochs (runs) of its files.
        self.epochs = {epoch for _, epoch in members.values()}
        self._by_hash: dict[str, tuple[pd.Index, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.hi)

    @property
    def index(self) -> pd.Index:
        """Identity -> position, built when first needed (a resume of an
        unshuffled input finds its rows as one run: see :meth:`locate`)."""
        if self._index is None:
            self._index = pd.Index(self.hi, copy=False)
        return self._index

    def locate(self, hi: np.ndarray, known: Mapping[str, object]) -> tuple[dict[str, Placed | None], np.ndarray]:
        """The files holding any of ``hi``, each with where (``None``: not
        told, a row two files hold), and which of ``hi`` a file of ``known`` holds.

        When ``hi`` is one run of the segment's rows (files read in the
        order they were written, a partition of the input in its order), the
        run is the answer. A copy of one of these rows in another file
        (exact duplicates) is then not seen: the partition stands on the
        run's, and the run's completion takes the other copy away."""
        live = np.array([n in known for n in self.names], dtype=bool)
        start = _run_in(self.hi, hi, self._index)
        if start is not None:
            run = np.arange(start, start + len(hi))
            return self._placed(run, np.arange(len(hi))), live[self.owner[run]]
        if self.index.is_unique:
            pos = self.index.get_indexer(hi)
            hit = np.flatnonzero(pos >= 0)
            held = np.zeros(len(hi), dtype=bool)
            held[hit] = live[self.owner[pos[hit]]]
            return self._placed(pos[hit], hit), held
        # A row in two files (exact duplicates of one run): every position.
        pos, _ = self.index.get_indexer_non_unique(hi)
        names: dict[str, Placed | None] = {self.names[i]: None for i in np.unique(self.owner[pos[pos >= 0]])}
        return names, np.isin(hi, self.index.to_numpy()[live[self.owner]])

    def _placed(self, positions: np.ndarray, rows: np.ndarray) -> dict[str, Placed | None]:
        """Segment ``positions`` of ``rows``, by file: (positions in the file, rows)."""
        if not len(positions):
            return {}
        owners = self.owner[positions]
        order = np.argsort(owners, kind="stable")  # (already sorted for a run)
        owners, positions, rows = owners[order], positions[order], rows[order]
        which, first = np.unique(owners, return_index=True)
        ends = [*first[1:], len(owners)]
        return {
            self.names[i]: (positions[a:b] - self.starts[i], rows[a:b])
            for i, a, b in zip(which, first, ends, strict=True)
        }

    def where(self, hi: int) -> list[tuple[str, int]]:
        """Each file holding identity ``hi``, with its position there."""
        hits = np.flatnonzero(self.hi == hi)
        return [(self.names[self.owner[i]], int(i - self.starts[self.owner[i]])) for i in hits]

    def with_hash(self, kind: str, values: np.ndarray, hashes: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
        """Files holding a row whose ``kind`` hash ("content" or "key") is
        one of ``values`` (``hashes``: each file's, as known)."""
        if kind not in self._by_hash:
            known = [(i, hashes[n][kind]) for i, n in enumerate(self.names) if kind in hashes.get(n, {})]
            column = np.concatenate([c for _, c in known]) if known else np.empty(0, np.uint64)
            owners = np.repeat(np.array([i for i, _ in known], dtype=np.int32), [len(c) for _, c in known])
            # One entry per (content, file): a text repeated across the table
            # costs a lookup per file, not per row.
            pairs = pd.DataFrame({"c": column, "o": owners}).drop_duplicates()
            self._by_hash[kind] = (pd.Index(pairs["c"].to_numpy()), pairs["o"].to_numpy())
        index, owners = self._by_hash[kind]
        pos, _ = index.get_indexer_non_unique(values)
        return [self.names[i] for i in np.unique(owners[pos[pos >= 0]])]


#: Merge the small blocks into the big one when there are more of them than this.
_MAX_BLOCKS = 8


class LedgerIndex:
    """This process's view of one run's ledger and dataset members.

    Thread-safe; one per checkpoint (and manifest) per process, from
    :func:`index_for`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.RLock()
        # One refresh at a time: partitions that start together in one
        # process would otherwise each read the whole ledger.
        self._refresh_lock = threading.Lock()
        self._blocks: list[_Block] = []
        self._loaded: set[str] = set()  # ledger files read
        self._journals_listed = False
        self._chunk_ids: dict[str, np.ndarray] = {}  # journal chunk -> its identities
        self._members: dict[str, tuple[np.ndarray, str]] = {}  # dataset file -> (ids, epoch)
        self._member_hashes: dict[str, dict[str, np.ndarray]] = {}  # dataset file -> content, key, row hashes
        self._member_versions: dict[str, str] = {}  # members file -> the version read (Store.versions)
        self._run = ""  # the run of the last refresh
        # Identity -> file, in segments (one per batch of member files read or
        # written), each with the epochs of its files: a partition asks only
        # for files of other runs, so the segments of its own run's
        # commits are skipped, and its own members file never makes the next
        # partition rebuild an index of every row.
        self._member_segments: list[_Segment] = []
        self._visible: set[str] = set()  # dataset files present at the last refresh

    # -- loading ---------------------------------------------------------------

    def refresh(self, journal: str | None = None, run: str = "", *, records: bool = True) -> None:
        """Read the ledger and member files written since the last refresh
        (``records=False``: the member files only, what a partition that
        stands on earlier files wholly needs).

        Journals: on the first refresh in this process every journal is read
        (rows an earlier, interrupted run paid for); afterwards only
        ``journal`` (the directory of the partition about to run: what an
        earlier attempt of this very task saved), since the journals of
        partitions running elsewhere hold none of this partition's rows.

        ``run``: the epoch of the run asking. A run's first refresh in this
        process forgets the files that are gone (an earlier run took them
        away); during the run, files that vanish are the run's own doing.
        """
        with self._refresh_lock:
            self._refresh(journal, run, records)

    def _refresh(self, journal: str | None, run: str, records: bool = True) -> None:
        store = self.store
        rows = [f"{ROWS_DIR}/{n}" for n in store.list(ROWS_DIR) if n.endswith(LEDGER_SUFFIX)] if records else []
        if not records:
            chunks = []
        elif not self._journals_listed:
            chunks = [f"{JOURNAL_DIR}/{p}" for p in store.find(JOURNAL_DIR) if p.endswith(".jsonl")]
        elif journal is not None:
            chunks = [f"{journal}/{n}" for n in store.list(journal) if n.endswith(".jsonl")]
        else:
            chunks = []
        members = {n: v for n, v in store.versions(MEMBERS_DIR).items() if n.endswith(LEDGER_SUFFIX)}
        visible = {n for n in store.list() if n.startswith("part-") and n.endswith(".parquet")}
        with self._lock:
            new_rows = [r for r in rows if r not in self._loaded]
            new_chunks = [c for c in chunks if c not in self._loaded]
            # A members file written again under its name (a partition that
            # rewrote its own file with other rows, or in another run) is read
            # again: the name alone does not say which rows the file holds.
            new_members = [m for m, v in members.items() if self._member_versions.get(m) != v]
        data = store.read_many([*new_rows, *new_chunks, *(f"{MEMBERS_DIR}/{m}" for m in new_members)])
        tables, committed = [], []
        for rel in new_rows:
            if rel in data:
                table = _read_arrow(data[rel])
                tables.append(table)
                committed.append(np.ones(table.num_rows, dtype=bool))
        chunk_ids: dict[str, np.ndarray] = {}
        for rel in new_chunks:
            if rel in data:
                table = jsonl_to_table(data[rel], rel)
                chunk_ids[rel] = table.column("hi").to_numpy()
                tables.append(table)
                committed.append(np.zeros(table.num_rows, dtype=bool))
        member_data = {}
        for name in new_members:
            raw = data.get(f"{MEMBERS_DIR}/{name}")
            if raw is not None:
                member_data[name.removesuffix(LEDGER_SUFFIX)] = read_members(raw)
        if not records and any("content" not in hashes for _, _, hashes in member_data.values()):
            # Files of the oldest members format: their request content comes from the ledger.
            return self._refresh(journal, run, True)
        with self._lock:
            if run and run != self._run:
                self._run = run
                for name in [n for n in self._members if f"{n}.parquet" not in visible]:
                    self.forget_members(name)
            self._journals_listed = self._journals_listed or records
            self._loaded.update(r for r in (*new_rows, *new_chunks) if r in data)
            self._chunk_ids.update(chunk_ids)
            if tables:
                self._add(pa.concat_tables(tables), np.concatenate(committed))
            self._member_versions.update({m: members[m] for m in new_members})
            known = set(self._members)
            if member_data:
                # (This process's own writes come back once here, unchanged.)
                indexed = {n for seg in self._member_segments for n in seg.names}
                rewritten = [
                    n for n, (hi, epoch, _) in member_data.items()
                    if (n in known and (self._members[n][1] != epoch or not np.array_equal(self._members[n][0], hi)))
                    or (n not in known and n in indexed)  # forgotten, then written again
                ]  # fmt: skip
                for name, (hi, epoch, hashes) in member_data.items():
                    self._members[name] = (hi, epoch)
                    # Files written before members kept hashes: the ledger has the contents.
                    self._member_hashes[name] = hashes if "content" in hashes else {"content": self._content_of(hi)}
                if rewritten:
                    # Their earlier rows are in the segments: index them anew.
                    self._member_segments = [_Segment(dict(self._members))]
                else:
                    fresh = {n: (hi, epoch) for n, (hi, epoch, _) in member_data.items() if n not in known}
                    if fresh:
                        self._add_members(fresh)
            self._visible = visible

    def _add(self, table: pa.Table, committed: np.ndarray) -> None:
        if not table.num_rows:
            return
        self._blocks.append(_Block(table, committed))
        if len(self._blocks) > _MAX_BLOCKS:
            # Keep the big block, merge the small ones (or all, once they add up).
            big, *small = sorted(self._blocks, key=len, reverse=True)
            if sum(len(b) for b in small) * 4 > len(big):
                self._blocks = [_Block.merge(self._blocks)]
            else:
                self._blocks = [big, _Block.merge(small)]

    def register(self, rel: str, table: pa.Table, committed: bool) -> None:
        """Add records this process just wrote (no need to read them back)."""
        flags = np.full(table.num_rows, committed, dtype=bool)
        with self._lock:
            self._loaded.add(rel)
            if not committed:
                self._chunk_ids[rel] = table.column("hi").to_numpy()
            self._add(table, flags)

    def _add_members(self, members: Mapping[str, tuple[np.ndarray, str]]) -> None:
        self._member_segments.append(_Segment(members))
        if len(self._member_segments) > _MAX_BLOCKS:
            # Keep the biggest (the earlier runs' files, read once), merge the
            # others (this run's commits, skipped by its own partitions) from
            # what is still known: forgotten files drop out.
            big, *small = sorted(self._member_segments, key=len, reverse=True)
            keep = [big]
            if 2 * sum(n in self._members for n in big.names) < len(big.names):
                small.append(big)  # mostly superseded files: rebuilt too
                keep = []
            names = {n for seg in small for n in seg.names if n in self._members}
            keep.append(_Segment({n: self._members[n] for n in sorted(names)}))
            self._member_segments = keep

    def _content_of(self, hi: np.ndarray) -> np.ndarray:
        content = np.zeros(len(hi), dtype=np.uint64)
        for block in self._blocks:
            pos = block.by_id.get_indexer(hi)
            hit = pos >= 0
            content[hit] = block.table.column("content").to_numpy()[pos[hit]]
        return content

    def register_members(self, name: str, ids: RowIds, epoch: str) -> None:
        with self._lock:
            self._members[name] = (ids.hi, epoch)
            self._member_hashes[name] = {"content": ids.content, "key": ids.key}
            if ids.row is not None:
                self._member_hashes[name]["row"] = ids.row
            self._add_members({name: (ids.hi, epoch)})
            self._visible.add(f"{name}.parquet")

    def forget_members(self, name: str, run: str = "") -> None:
        """A dataset file is gone; ``run``: closed by that run (its rows
        are still "in the dataset" for that run: see :meth:`files_holding`)."""
        with self._lock:
            if not run:
                self._members.pop(name, None)
                self._member_hashes.pop(name, None)
            self._visible.discard(f"{name}.parquet")

    # -- lookups -------------------------------------------------------------------

    def lookup(self, ids: RowIds, *, share_content: bool) -> Found:
        """The best record of each row, and how it was found."""
        n = len(ids)
        with self._lock:
            blocks = list(self._blocks)
        which, pos = _pick(blocks, [b.get(ids.hi, ids.lo) for b in blocks], n)
        found = which >= 0
        shared = np.zeros(n, dtype=bool)
        if share_content and not found.all():
            missing = np.flatnonzero(~found)
            content = ids.content[missing]
            c_which, c_pos = _pick(blocks, [b.get_content(content) for b in blocks], len(missing))
            hit = c_which >= 0
            shared[missing[hit]] = True
            which[missing[hit]] = c_which[hit]
            pos[missing[hit]] = c_pos[hit]
        table = _gather(blocks, which, pos, n)
        committed = np.zeros(n, dtype=bool)
        matched = np.zeros(n, dtype=np.uint64)
        for b, block in enumerate(blocks):
            mine = which == b
            committed[mine] = block.committed[pos[mine]]
            matched[mine] = block.hi[pos[mine]]
        records = to_pandas(table.select(list(FIELDS)))
        if shared.any():
            # The answer is shared, not paid again: as a dedup follower.
            for name in ("attempts", "prompt_tokens", "completion_tokens", "rate_limited"):
                records.loc[shared, name] = 0
            records.loc[shared, "latency"] = 0.0
        return Found(records=records, found=found, shared=shared, committed=committed & found, matched=matched)

    def journals_holding(self, ids: RowIds) -> list[str]:
        """Journal chunks that hold any of ``ids``."""
        wanted = pd.Index(ids.hi, copy=False)
        with self._lock:
            items = list(self._chunk_ids.items())
        return [rel for rel, chunk in items if wanted.get_indexer(chunk).max(initial=-1) >= 0]

    def covered(self, chunk: str) -> bool:
        """Whether every row of a journal chunk has a committed record."""
        with self._lock:
            ids = self._chunk_ids.get(chunk)
            blocks = list(self._blocks)
        if ids is None:
            return False
        done = np.zeros(len(ids), dtype=bool)
        for block in blocks:
            pos = block.by_id.get_indexer(ids)
            hit = pos >= 0
            done[hit] |= block.committed[pos[hit]]
        return bool(done.all())

    def forget_chunk(self, chunk: str) -> None:
        with self._lock:
            self._chunk_ids.pop(chunk, None)

    def files_holding(self, hi: np.ndarray, run: str) -> tuple[list[str], np.ndarray]:
        """Visible dataset files of runs other than ``run`` that hold any of
        the identities ``hi`` (sorted), and which of ``hi`` no such
        file held when this run first looked (files it closed since
        still count: their rows are being rewritten, not lost)."""
        placed, outside = self.holding(hi, run)
        return sorted(placed), outside

    def holding(self, hi: np.ndarray, run: str) -> tuple[dict[str, Placed | None], np.ndarray]:
        """:meth:`files_holding`, with where each file holds them: positions
        in the file and in ``hi`` (``None``: not told)."""
        segments, members, _ = self._other_runs(run)
        files: dict[str, Placed | None] = {}
        inside = np.zeros(len(hi), dtype=bool)
        for seg in segments:
            names, held = seg.locate(hi, members)
            for name, placed in names.items():
                files[name] = None if name in files else placed
            inside |= held
        return {name: files[name] for name in self._visible_of(set(files), run)}, ~inside

    def where(self, hi: int, run: str) -> list[tuple[str, int]]:
        """The visible dataset files of runs other than ``run`` holding
        identity ``hi``, each with its position there."""
        segments, _, _ = self._other_runs(run)
        found = [hit for seg in segments for hit in seg.where(hi)]
        visible = set(self._visible_of({name for name, _ in found}, run))
        return [(name, pos) for name, pos in found if name in visible]

    def files_with(self, kind: str, values: np.ndarray, run: str) -> list[str]:
        """Visible dataset files of runs other than ``run`` that hold
        a row whose ``kind`` hash ("content" or "key") is one of ``values``,
        sorted."""
        segments, _, hashes = self._other_runs(run)
        files: set[str] = set()
        for seg in segments:
            files.update(seg.with_hash(kind, values, hashes))
        return self._visible_of(files, run)

    def _other_runs(
        self, run: str
    ) -> tuple[list[_Segment], dict[str, tuple[np.ndarray, str]], dict[str, dict[str, np.ndarray]]]:
        """The segments with files of runs other than ``run``, and a copy of
        the members and their hashes (read without the lock)."""
        with self._lock:
            segments = [seg for seg in self._member_segments if seg.epochs - {run}]
            return segments, dict(self._members), dict(self._member_hashes)

    def _visible_of(self, files: set[str], run: str) -> list[str]:
        """Those of ``files`` that are visible and of runs other than ``run``, sorted."""
        with self._lock:
            members, visible = self._members, self._visible
            return sorted(f for f in files if f in members and members[f][1] != run and f"{f}.parquet" in visible)

    def member_rows(self, name: str) -> np.ndarray | None:
        """The whole-row hashes of a dataset file's rows (``None``: not known)."""
        with self._lock:
            return self._member_hashes.get(name, {}).get("row")

    def member_hashes(self, name: str) -> tuple[str, dict[str, np.ndarray]] | None:
        """The epoch that wrote a visible dataset file, and its rows' hashes
        (``None``: no such file)."""
        with self._lock:
            entry = self._members.get(name)
            if entry is None or f"{name}.parquet" not in self._visible:
                return None
            return entry[1], dict(self._member_hashes.get(name, {}))

    def files_of_other_runs(self, run: str) -> dict[str, int]:
        """The visible dataset files of runs other than ``run``, with their row counts."""
        with self._lock:
            return {
                name: len(ids) for name, (ids, epoch) in sorted(self._members.items())
                if epoch != run and f"{name}.parquet" in self._visible
            }  # fmt: skip

    def version_of(self, name: str) -> object:
        """The version token of a dataset file's members file, as last listed."""
        with self._lock:
            return self._member_versions.get(f"{name}{LEDGER_SUFFIX}")

    def members_of(self, name: str) -> np.ndarray | None:
        """The identities a visible dataset file holds (``None``: no such file)."""
        with self._lock:
            entry = self._members.get(name)
            visible = f"{name}.parquet" in self._visible
        return entry[0] if entry is not None and visible else None

    # -- summaries (dask-llm status) --------------------------------------------------

    def all_records(self) -> pd.DataFrame:
        """One record per identity (the best), over everything loaded."""
        with self._lock:
            blocks = list(self._blocks)
        if not blocks:
            return to_pandas(pa.Table.from_pylist([], schema=_ARROW))
        block = blocks[0] if len(blocks) == 1 else _Block.merge(blocks)
        return to_pandas(block.table)

    def dataset_rows(self) -> int:
        """Rows the visible dataset files hold."""
        with self._lock:
            return sum(len(ids) for name, (ids, _) in self._members.items() if f"{name}.parquet" in self._visible)


# ------------------------------------------------------------------ the per-process cache

_indexes: dict[tuple[str, str], LedgerIndex] = {}
_indexes_lock = threading.Lock()
#: Indexes kept per process (of the most recent runs).
_KEEP = 2


def index_for(store: Store, manifest_id: str) -> LedgerIndex:
    """This process's index of the checkpoint at ``store`` as claimed by the
    manifest ``manifest_id`` (a new manifest, e.g. after ``overwrite=True``,
    gets a new index: nothing stale survives it)."""
    key = (store.url, manifest_id)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            index = _indexes[key] = LedgerIndex(store)
            while len(_indexes) > _KEEP:
                del _indexes[next(iter(_indexes))]
        return index
