"""Row identity: what makes a row "already paid for", whatever the partitioning.

A row is identified by

- its **request content**: the values of the columns the prompt (and system
  message) reads; the run's prompt, model and parameters are fixed by the
  checkpoint's manifest, so these values decide the request;
- its **key**: the value of the ``key=`` column(s) when given, else the
  row's index value, which tells apart rows that send the same request;
- its **occurrence**: the 2nd, 3rd... row of a partition that agrees with an
  earlier one on both, so that exact duplicates are each kept.

None of these depends on partition numbers or boundaries, so ``npartitions``,
``repartition``, another ``blocksize``, a shuffle or appended rows leave every
answered row's identity unchanged. An index that is *not* stable between
runs (``dd.read_csv`` numbers each block's rows from 0, so another blocksize
renumbers them) changes the key: then the request content alone still finds
the stored answer (with ``dedup=True``, see :mod:`._ledger`), or ``key=``
names a column that is stable.

Hashing is vectorized (pandas' SipHash of each column, combined per row,
strings hashed as the UTF-8 bytes Arrow encodes) and costs about a tenth of
a microsecond per value, so a resume never renders a prompt for a row it
does not call. Two 64-bit hashes with independent keys give a 128-bit
identity; string columns hash alike whatever their dtype (object,
``string[python]``, ``string[pyarrow]``), so a pandas run and a dask run of
the same data agree. pandas hashes a missing value as the text "None" (or
"nan"); a text cell equal to one of these gets an escape byte first, so it
never takes a missing cell's answer. Arrow integer columns hash as the
nullable integers they are (pandas would go through float64 once a null is
present, making 2**53 + 1 equal 2**53 and 1 equal 1.0).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array

__all__ = ["RowIds", "row_ids", "with_row_hashes"]

# Two independent SipHash keys (16 bytes each) for the two halves.
_KEY_HI = "dask-llm-row-hi!"
_KEY_LO = "dask-llm-row-lo!"
#: Mixed in when the index is the key, so that an index never equals a key column.
_INDEX_TAG = np.uint64(0x5851F42D4C957F2D)


@dataclass(frozen=True, eq=False)
class RowIds:
    """The identities of the rows of one partition, in row order.

    Attributes
    ----------
    hi, lo : numpy.ndarray of uint64
        The two halves of each row's 128-bit identity.
    content : numpy.ndarray of uint64
        Hash of the request content alone (no key, no occurrence): rows that
        send the same request share it.
    key : numpy.ndarray of uint64
        Hash of the key alone: a row whose request changed keeps it.
    row : numpy.ndarray of uint64, optional
        Hash of the whole row (its identity and every other column): a
        dataset file holds a row as it is now only if this matches
        (:func:`with_row_hashes`).
    """

    hi: np.ndarray
    lo: np.ndarray
    content: np.ndarray
    key: np.ndarray
    row: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.hi)

    def take(self, positions: np.ndarray) -> RowIds:
        """The identities of the rows at ``positions``."""
        return RowIds(hi=self.hi[positions], lo=self.lo[positions], content=self.content[positions],
                      key=self.key[positions], row=self.row[positions] if self.row is not None else None)  # fmt: skip

    @property
    def digest(self) -> str:
        """A hex digest of the whole sequence: the partition's content key."""
        h = hashlib.sha256()
        h.update(self.hi.tobytes())
        h.update(self.lo.tobytes())
        return h.hexdigest()


def _hash_column(values: pd.Series | pd.Index, keys: Sequence[str]) -> list[np.ndarray]:
    """SipHash of each value under each key; the same for a string whatever
    its dtype."""
    if pd.api.types.is_string_dtype(values.dtype) and not isinstance(values.dtype, pd.CategoricalDtype):
        # No categorize: with mostly distinct strings it costs ten times more.
        obj = _utf8(values)
        try:
            return [hash_array(obj, hash_key=k, categorize=False) for k in keys]
        except (TypeError, ValueError, UnicodeEncodeError):  # lists, dicts, lone surrogates: their text's bytes
            return [hash_array(_as_bytes(obj), hash_key=k, categorize=False) for k in keys]
    if isinstance(values, pd.Index):
        values = values.to_series(index=pd.RangeIndex(len(values)))
    if isinstance(values.dtype, pd.ArrowDtype) and values.dtype.kind in "iu":
        # pandas hashes Arrow integers through float64 once a null is present
        # (2**53 + 1 would be 2**53, and 1 would be 1.0): hash them as the
        # nullable integers they are, as Int64 columns always were.
        # (pandas' own astype goes through float64 too: built from Arrow).
        arr = pa.chunked_array(pa.array(values)).combine_chunks()
        mask = arr.is_null().to_numpy(zero_copy_only=False)
        values = pd.Series(pd.arrays.IntegerArray(arr.fill_null(0).to_numpy(), mask))
    try:
        return [
            pd.util.hash_pandas_object(values, index=False, hash_key=k, categorize=False).to_numpy(np.uint64)
            for k in keys
        ]
    except (TypeError, ValueError, UnicodeEncodeError):  # ValueError: list cells
        obj = np.asarray(values.to_numpy(dtype=object))
        return [hash_array(_as_bytes(obj), hash_key=k, categorize=False) for k in keys]


def _utf8(values: pd.Series | pd.Index) -> np.ndarray:
    """The strings as UTF-8 ``bytes`` objects (``None`` where missing), made
    by Arrow. pandas hashes a ``str`` by encoding it first, once per key, and
    a ``bytes`` object as it is, to the same digest: encoding once in Arrow's
    C++ makes the hash about three times faster (and four for string[pyarrow],
    which Dask gives every string column by default)."""
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        arr = None  # mixed objects: what pandas makes of them
    if arr is not None and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        binary = arr.cast(pa.large_binary())
        out = np.asarray(binary.to_numpy(zero_copy_only=False))
        clash = pc.starts_with(arr, "\x00")
        if (pc.min(pc.binary_length(binary)).as_py() or 0) <= _NULL_LONGEST:  # rarely worth the lookup
            clash = pc.or_(clash, pc.is_in(binary, _NULL_TEXTS))
        if pc.any(clash).as_py():
            where = pc.fill_null(clash, False).to_numpy(zero_copy_only=False)
            out[where] = [_ESCAPE + v for v in out[where]]
        return out
    obj = np.asarray(values.to_numpy(dtype=object, na_value=None))
    # Filled cell by cell: np.asarray of a list makes list cells of one length 2-D.
    out = np.empty(len(obj), dtype=object)
    for i, v in enumerate(obj):
        out[i] = _escaped(v)
    return out


#: pandas hashes a missing value as the text ``str(value)`` ("None", "nan"):
#: a text equal to one of these (or starting with the escape byte) gets the
#: escape byte in front, so a cell holding "None" is never a missing cell.
_ESCAPE = b"\x00"
_NULL_BYTES = (b"None", b"nan")
_NULL_TEXTS = pa.array(_NULL_BYTES, pa.large_binary())
_NULL_LONGEST = max(map(len, _NULL_BYTES))


def _escaped(value: object) -> object:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes) and (value in _NULL_BYTES or value.startswith(_ESCAPE)):
        return _ESCAPE + value
    return value


def _as_bytes(obj: np.ndarray) -> np.ndarray:
    out = np.empty(len(obj), dtype=object)
    for i, v in enumerate(obj):
        out[i] = v if v is None or isinstance(v, bytes) else _escaped(str(v))  # bytes: from _utf8
    return out


def _combine(arrays: Sequence[np.ndarray], n: int) -> np.ndarray:
    """An order-dependent combination of per-column hashes (boost's
    hash_combine, then a splitmix64 finalizer), wrapping in uint64."""
    h = np.full(n, 0x243F6A8885A308D3, dtype=np.uint64)
    for x in arrays:
        h ^= x + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2))
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def _key_columns(frame: pd.DataFrame, key: Sequence[str] | None) -> list[pd.Series | pd.Index]:
    if key is not None:  # () : no key at all, the content alone (frames without an index)
        return [frame[k] for k in key]
    index = frame.index
    if isinstance(index, pd.MultiIndex):
        return [index.get_level_values(i) for i in range(index.nlevels)]
    return [index]


def row_ids(frame: pd.DataFrame, columns: Sequence[str], key: Sequence[str] | None = None) -> RowIds:
    """The identities of ``frame``'s rows (see the module docstring).

    Parameters
    ----------
    frame : pandas.DataFrame
        One partition.
    columns : sequence of str
        The columns the prompt reads (each named once in the frame).
    key : sequence of str, optional
        Columns that identify a row; default: the index; ``()``: none (the
        request content and the occurrence alone: Spark rows have no index).
    """
    n = len(frame)
    with np.errstate(over="ignore"):
        content_cols = [frame[c] for c in columns]
        keys = _key_columns(frame, key)
        both = [_hash_column(c, (_KEY_HI, _KEY_LO)) for c in content_cols]
        key_hashes = [_hash_column(k, (_KEY_HI, _KEY_LO)) for k in keys]
        content = _combine([h for h, _ in both], n)
        tag = [np.full(n, _INDEX_TAG, dtype=np.uint64)] if key is None else []
        hi = _combine([content, *tag, *(h for h, _ in key_hashes)], n)
        key_only = _combine([*tag, *(h for h, _ in key_hashes)], n)
        lo = _combine([*(lo_ for _, lo_ in both), *tag, *(lo_ for _, lo_ in key_hashes)], n)
        # Exact duplicates inside the partition: the k-th repeat gets k mixed in.
        if pd.Index(hi, copy=False).has_duplicates:
            pairs = pd.DataFrame({"hi": hi, "lo": lo})
            dup = pairs.duplicated(keep="first").to_numpy()
            occurrence = pairs.groupby(["hi", "lo"], sort=False).cumcount().to_numpy(np.uint64)
            hi = hi.copy()
            hi[dup] = _combine([hi[dup], occurrence[dup]], int(dup.sum()))
    return RowIds(hi=np.ascontiguousarray(hi), lo=np.ascontiguousarray(lo), content=content, key=key_only)


def with_row_hashes(ids: RowIds, frame: pd.DataFrame, skip: Sequence[str]) -> RowIds:
    """``ids`` with the hash of each whole row: its identity and the columns
    not in ``skip`` (those the identity already covers). A column the prompt
    does not read may change between runs (a corrected id, a new status);
    a dataset file that holds the old value must not stand for the row."""
    others = [i for i, name in enumerate(frame.columns) if name not in set(skip)]
    with np.errstate(over="ignore"):
        hashes = [_hash_column(frame.iloc[:, i], (_KEY_HI,))[0] for i in others]
        return dataclasses.replace(ids, row=_combine([ids.hi, *hashes], len(frame)))
