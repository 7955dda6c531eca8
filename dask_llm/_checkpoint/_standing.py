"""A partition that earlier runs' dataset files hold as it is, found by comparing.

Resuming any layout of an unchanged input is the common case (another
``npartitions``, blocksize or file split of the same table), and there every
partition is a run of rows of one or a few earlier files. Such a partition
needs no row hashes and no ledger: the identity of its first row finds the
file and the position (:meth:`~._ledger.LedgerIndex.where`), and the
partition, index and every column, is *compared* with the file's rows there
(Arrow's equality: the values as written, nulls included), then with the
next file from the first row not yet matched, and so on. When every row
matches, the outputs are the files' own output columns. Anything else (a
shuffled order, an edited row, a NaN, another dtype) is simply not a match,
and the partition takes the path of :mod:`._partition` (hash, look up,
stand on what matches, write the rest). The typed columns of ``output=``
come from the files too: parsing every answer again would cost more than
the whole resume.

Decoding a file is shared by the partitions that read it in this process
(most files hold rows of two partitions of the new layout).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._core._store import Store
from ._identity import row_ids
from ._ledger import FIELD_SCHEMA, FIELDS, LedgerIndex, to_pandas

__all__ = ["Piece", "held_as_is"]


@dataclass(frozen=True)
class Piece:
    """Rows ``start`` to ``start + rows`` of the earlier file ``name`` (of ``size`` rows)."""

    name: str
    size: int
    start: int
    rows: int


def held_as_is(
    frame: pd.DataFrame,
    columns: Sequence[str],
    key: Sequence[str] | None,
    index: LedgerIndex,
    run: str,
    read: Callable[[str], pa.Table | None],
    outputs: Mapping[str, str],
    output_columns: Sequence[str],
    used: Callable[[str, int], None],
) -> tuple[list[Piece], pd.DataFrame, pa.Table] | None:
    """The runs of earlier files' rows that hold ``frame`` as it is, the
    stored fields of its rows (as a ledger lookup gives them), and its
    output columns as the files hold them; ``None`` when they do not hold
    it all.

    Parameters
    ----------
    frame : pandas.DataFrame
        The partition.
    columns, key
        What identifies a row (see :func:`~._identity.row_ids`).
    index : LedgerIndex
        This process's index, its member files read.
    run : str
        The run's epoch: files of other runs only.
    read : callable
        A dataset file's rows, by name (``None``: gone).
    used : callable
        Told how many rows of a file read the partition stands on.
    outputs : mapping
        The output column of each stored field (``OutputColumns.by_field``).
    output_columns : sequence of str
        Every output column (the typed ones of ``output=`` too).
    """
    n = len(frame)
    sizes = index.files_of_other_runs(run)
    if not n or not sizes:
        return None
    want: pa.Table | None = None
    order = list(sizes)  # by name: the order the files were written in, mostly
    pieces: list[Piece] = []
    stored: list[pa.Table] = []
    done = 0
    while done < n:
        hi = int(row_ids(frame.iloc[done : done + 1], columns, key).hi[0])
        hits = _next_file(index, order, pieces[-1].name, hi) if pieces else []
        hits = hits or index.where(hi, run)
        if len(hits) != 1 or hits[0][0] not in sizes:
            return None
        name, start = hits[0]
        if want is None:
            try:
                want = pa.Table.from_pandas(frame, preserve_index=True)  # as the dataset file was written
            except (pa.ArrowException, TypeError, ValueError):
                return None
            expected = set(want.column_names) | set(output_columns)
        table = read(name)
        if table is None or table.num_rows != sizes[name] or set(table.column_names) != expected:
            return None
        rows = min(n - done, table.num_rows - start)
        got = table.slice(start, rows)
        if not got.select(want.column_names).equals(want.slice(done, rows)):
            return None
        pieces.append(Piece(name, table.num_rows, start, rows))
        stored.append(got.select(list(output_columns)))
        done += rows
    for piece in pieces:
        used(piece.name, piece.rows)
    values = pa.concat_tables(stored)
    fields = {name: values.column(column) for name, column in outputs.items()}
    table = pa.table({name: fields.get(name, pa.nulls(n)) for name in FIELDS})
    return pieces, to_pandas(table.cast(FIELD_SCHEMA)), values


def _next_file(index: LedgerIndex, order: list[str], last: str, hi: int) -> list[tuple[str, int]]:
    """The file after ``last`` when it starts with identity ``hi`` (a
    partition running on into the next file), found without a scan."""
    at = order.index(last) + 1 if last in order else len(order)
    members = index.members_of(order[at]) if at < len(order) else None
    return [(order[at], 0)] if members is not None and len(members) and int(members[0]) == hi else []


class DecodedFiles:
    """Dataset files decoded in this process (files are never rewritten under
    a name, so a name and its members' version identify the rows).

    A file leaves once partitions have stood on all its rows: the file a
    boundary cuts stays for the partition on its other side, in whichever
    order the two run, while whole files go at once. Beyond ``budget``
    bytes the oldest go first (a shuffled partition, which stands on none,
    leaves the files it read to that).
    """

    def __init__(self, budget: int = 256 << 20) -> None:
        self.budget = budget
        self._tables: OrderedDict[tuple[str, str, object], pa.Table] = OrderedDict()
        self._used: dict[tuple[str, str, object], int] = {}  # rows stood on, by file
        self._bytes = 0
        self._lock = threading.Lock()

    def read(self, store: Store, name: str, version: object) -> pa.Table | None:
        key = (store.url, name, version)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                return table
        data = store.read(f"{name}.parquet")
        if data is None:
            return None
        table = pq.read_table(pa.BufferReader(data))
        with self._lock:
            if key not in self._tables:
                self._tables[key] = table
                self._bytes += table.nbytes
            while len(self._tables) > 1 and self._bytes > self.budget:
                # Files no partition has stood on yet go before those one is
                # halfway through (the other side of a boundary awaits them).
                unused = (k for k in self._tables if k != key and not self._used.get(k))
                self._drop(next(unused, next(iter(self._tables))))
        return table

    def used(self, store: Store, name: str, version: object, rows: int) -> None:
        """A partition stands on ``rows`` rows of the file: once all of them
        are stood on, no other partition of the run needs it decoded."""
        key = (store.url, name, version)
        with self._lock:
            table = self._tables.get(key)
            if table is None:
                return
            self._used[key] = self._used.get(key, 0) + rows
            if self._used[key] >= table.num_rows:
                self._drop(key)

    def _drop(self, key: tuple[str, str, object]) -> None:
        self._bytes -= self._tables.pop(key).nbytes
        self._used.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
            self._used.clear()
            self._bytes = 0


#: This process's decoded files.
decoded = DecodedFiles()
