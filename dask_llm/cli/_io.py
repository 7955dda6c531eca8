"""Reading INPUT and writing OUTPUT of ``dask-llm run``: Parquet, CSV or JSON Lines,
local paths or any fsspec URL.

The format follows the name:

=======================================  ======================================
name                                     format
=======================================  ======================================
``*.csv``, ``*.csv.gz``                  CSV with a header row
``*.jsonl``, ``*.ndjson``, ``*.json``    JSON Lines (one object per line); an
                                         INPUT ``*.json`` may also be a JSON
                                         array of objects
anything else (``*.parquet``, a folder)  Parquet (a file, folder or glob)
=======================================  ======================================

An OUTPUT with another file suffix (``out.txt``, ``out.tsv``) is refused
rather than written as a Parquet folder of that name.

INPUT may be a glob (``data/*.csv``). A CSV or JSON Lines OUTPUT is one
file; a Parquet OUTPUT is a folder of ``part-NNNNN.parquet`` files.

Every partition is written by the task that enriches it, and the same task
returns the partition's totals (:func:`partition_totals`), so writing the
output and summing the run summary is *one* pass over the data: the model
is called once per row, never a second time for the summary (summing a
lazy ``enrich()`` result separately would compute it again).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dask.dataframe as dd
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._core._schema import OutputColumns
from .._core._store import open_store
from .._cost._summary import RunSummary
from ._storage import missing_filesystem

__all__ = [
    "TOTALS",
    "Format",
    "Output",
    "auto_partitions",
    "format_of",
    "is_json_array",
    "output_format",
    "partition_totals",
    "read_input",
]

Format = Literal["parquet", "csv", "jsonl"]

_SUFFIXES: dict[str, Format] = {
    ".csv": "csv", ".csv.gz": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl", ".json.gz": "jsonl",
}  # fmt: skip

#: The per-partition totals every output task returns, and their dtypes: the
#: additive fields of :class:`~dask_llm._cost._summary.RunSummary` (``rate_limited``
#: is null when the output has no column that counts 429s).
TOTALS = {
    "rows": "int64",
    "rows_ok": "int64",
    "rows_failed": "int64",
    "rows_not_called": "int64",
    "calls": "int64",
    "retries": "int64",
    "rate_limited": "Int64",
    "calls_saved": "int64",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
}


def format_of(path: str) -> Format:
    """The format a path names, by its suffix (Parquet when none matches)."""
    name = path.rstrip("/").lower()
    for suffix, fmt in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return "parquet"


def _filesystem(path: str, options: Mapping[str, Any], what: str) -> tuple[Any, str]:
    """fsspec's filesystem and path for ``path``, with errors that name it."""
    try:
        return fsspec.core.url_to_fs(path, **dict(options))
    except ImportError as exc:
        raise missing_filesystem(path, exc, what) from None
    except ValueError as exc:
        raise ValueError(f"cannot open {what} {path!r}: {exc}") from None


def _compression(path: str) -> str | None:
    return "gzip" if path.lower().endswith(".gz") else None


def read_input(
    path: str, storage_options: Mapping[str, Any] | None = None, partitions: int | None = None
) -> dd.DataFrame:
    """INPUT as a lazy dask frame.

    Raises
    ------
    FileNotFoundError
        Nothing exists at ``path`` (or the glob matches nothing).
    ValueError, ImportError
        Unknown protocol, or its fsspec implementation is not installed.
    """
    options = dict(storage_options or {})
    fs, root = _filesystem(path, options, "input")
    # Checked here because each reader words a missing file differently, and
    # some only notice at compute time.
    found = _matches(fs, root)
    if not found:
        raise FileNotFoundError(f"input {path!r} does not exist")
    fmt = format_of(path)
    try:
        ddf = _read(path, fmt, options, fs, found[0])
    except (ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        # dask words these as "An error occurred while calling the read_csv
        # method registered to the pandas backend. Original Message: ...".
        message = str(exc).partition("Original Message:")[2].strip() or str(exc)
        hint = "" if _known_suffix(path) else " (the format follows the name: *.csv, *.jsonl or *.json, else Parquet)"
        raise ValueError(f"cannot read input {path!r} as {_LABELS[fmt]}{hint}: {message}") from exc
    if partitions is not None and partitions != ddf.npartitions:
        ddf = ddf.repartition(npartitions=partitions)
    return ddf


_LABELS: dict[Format, str] = {"csv": "CSV", "jsonl": "JSON", "parquet": "Parquet"}


def _read(path: str, fmt: Format, options: dict[str, Any], fs: Any, first: str) -> dd.DataFrame:
    compression = _compression(path)
    if fmt == "csv":
        return dd.read_csv(path, storage_options=options, compression=compression,
                           blocksize=None if compression else "64MB")  # fmt: skip
    if fmt == "jsonl":
        # A *.json file is as often one JSON array as JSON Lines: its first
        # character tells (read line by line, an array is a frame of numbered columns).
        lines = not _is_json_array(fs, first, compression)
        return dd.read_json(path, lines=lines, orient="records", storage_options=options, compression=compression,
                            blocksize=None if compression or not lines else 2**26)  # fmt: skip
    return dd.read_parquet(path, storage_options=options)


def _is_json_array(fs: Any, path: str, compression: str | None) -> bool:
    with fs.open(path, "rb", compression=compression) as f:
        head = f.read(4096)
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def is_json_array(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether JSON INPUT ``path`` (its first file, for a glob) is one JSON array."""
    fs, root = _filesystem(path, dict(storage_options or {}), "input")
    found = _matches(fs, root)
    return bool(found) and _is_json_array(fs, found[0], _compression(path))


def _matches(fs: Any, root: str) -> list[str]:
    """The files INPUT names: a glob's matches, or the path if it exists."""
    return list(fs.glob(root)) if any(c in root for c in "*?[") else ([root] if fs.exists(root) else [])


def _known_suffix(path: str) -> bool:
    """Whether ``path`` names its format: a known suffix, ``*.parquet``, or
    none at all (a folder)."""
    name = path.rstrip("/").rpartition("/")[2].lower()
    suffix = name.rpartition(".")[2] if "." in name.lstrip(".") else ""
    # A suffix that is not a word (a date, a version) is part of a folder's name.
    if not suffix or not suffix[0].isalpha() or format_of(name) != "parquet":
        return True
    return suffix in ("parquet", "parq", "pq")


def output_format(path: str) -> Format:
    """The format of OUTPUT ``path``.

    Raises
    ------
    ValueError
        ``path`` has a file suffix that names no format (``out.txt``), which
        would otherwise become a Parquet folder of that name.
    """
    if not _known_suffix(path):
        suffix = path.rstrip("/").rpartition(".")[2]
        raise ValueError(
            f"output {path!r}: no format is named .{suffix}; write a *.csv or *.jsonl file, "
            "or a Parquet folder (*.parquet or a name without a suffix)"
        )
    return format_of(path)


#: Calls of each thread per partition, at most, when the partitions are chosen.
ROUNDS_PER_PARTITION = 8
#: Partitions at most, when they are chosen.
MAX_AUTO_PARTITIONS = 10_000


def auto_partitions(rows: int, parallel: int, threads: int) -> int:
    """Partitions for ``rows`` rows when ``--partitions`` is not given.

    At least ``parallel`` (the partitions computed at once), so that every
    worker has work; and partitions of at most
    :data:`ROUNDS_PER_PARTITION` rounds of ``threads`` calls each, so that a
    partition (one checkpoint commit) takes seconds to minutes, and the last
    partitions of a run do not leave most workers idle.
    """
    by_size = -(-rows // (threads * ROUNDS_PER_PARTITION))
    return max(parallel, min(by_size, MAX_AUTO_PARTITIONS), 1)


def partition_totals(frame: pd.DataFrame, outputs: OutputColumns) -> dict[str, int | None]:
    """The :data:`TOTALS` of one enriched partition, from its output columns.

    The library's run summary does the counting, so the command line and
    ``dask_llm.summarize()`` agree; this task only keeps the additive fields,
    which the client sums over partitions.
    """
    summary = RunSummary.from_frame(frame, outputs.column)
    return {name: getattr(summary, name) for name in TOTALS}


@dataclass
class Output:
    """Where and how to write OUTPUT.

    Parameters
    ----------
    path : str
        OUTPUT as the user gave it.
    storage_options : mapping
        fsspec options for ``path``.

    Use: :meth:`check` before the run, :meth:`write` to get the lazy frame of
    totals to compute, :meth:`finish` after it computed (joins the parts of
    a single-file output), :meth:`abort` if it did not.
    """

    path: str
    storage_options: Mapping[str, Any]

    def __post_init__(self) -> None:
        self.format: Format = output_format(self.path)
        self.single_file = self.format != "parquet"
        fs, root = _filesystem(self.path, self.storage_options, "output")
        self._fs = fs
        self._root = root.rstrip("/")
        if self.single_file:
            # Parts go to a hidden folder beside the file, joined at the end.
            parent, _, name = self._root.rpartition("/")
            self._parts_root = f"{parent}/.{name}.parts-{uuid.uuid4().hex[:12]}"
        else:
            self._parts_root = self._root

    @property
    def parts_url(self) -> str:
        return self._fs.unstrip_protocol(self._parts_root)

    def check(self, input_path: str, checkpoint: str | None = None) -> None:
        """Refuse an OUTPUT that would destroy data.

        Raises
        ------
        FileExistsError
            OUTPUT is INPUT, is the checkpoint (or inside it, or holds it),
            or is a folder holding files dask-llm did not write.
        """
        in_fs, in_root = fsspec.core.url_to_fs(input_path, **dict(self.storage_options))
        if type(in_fs) is type(self._fs) and in_root.rstrip("/") == self._root:
            raise FileExistsError(f"output {self.path!r} is the input; choose another path")
        if checkpoint is not None:
            ck_fs, ck_root = fsspec.core.url_to_fs(checkpoint, **dict(self.storage_options))
            a, b = ck_root.rstrip("/"), self._root
            if type(ck_fs) is type(self._fs) and (a == b or b.startswith(a + "/") or a.startswith(b + "/")):
                # Both are folders of part-* files: reading either would see the other's rows.
                raise FileExistsError(
                    f"output {self.path!r} and --checkpoint {checkpoint!r} overlap; give each its own path"
                )
        if not self.single_file and self._fs.isdir(self._root):
            foreign = [
                n for n in (p.rstrip("/").rpartition("/")[2] for p in self._fs.ls(self._root, detail=False))
                if not n.startswith(("part-", "_", "."))
            ]  # fmt: skip
            if foreign:
                raise FileExistsError(
                    f"output folder {self.path!r} holds files dask-llm did not write "
                    f"({', '.join(map(repr, sorted(foreign)[:3]))}); choose a new or empty path"
                )
        elif self._fs.isdir(self._root):
            raise FileExistsError(f"output {self.path!r} is a folder; a {self.format} output is one file")
        # The parts are written beside OUTPUT first: on a local disk, name
        # OUTPUT's folder, not theirs, when it is a file (object stores have
        # no folders to be in the way).
        protocols = (self._fs.protocol,) if isinstance(self._fs.protocol, str) else self._fs.protocol
        parent = self._root.rpartition("/")[0] if self.single_file else self._root
        while "file" in protocols and parent and not self._fs.exists(parent):
            parent = parent.rpartition("/")[0]
        if "file" in protocols and parent and not self._fs.isdir(parent):
            raise FileExistsError(f"output {self.path!r}: {parent!r} is a file, not a folder")

    def write(self, out: dd.DataFrame, outputs: OutputColumns) -> dd.DataFrame:
        """A lazy frame of per-partition :data:`TOTALS`; computing it writes the parts."""
        store = open_store(self.parts_url, self.storage_options)
        # Parts left by an earlier (interrupted) run would duplicate rows.
        store.remove_files([n for n in store.list() if n.startswith("part-")])
        store.makedirs()
        meta = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in TOTALS.items()})
        schema = pa.Schema.from_pandas(out._meta, preserve_index=False) if self.format == "parquet" else None
        return out.map_partitions(
            _write_part, self.parts_url, dict(self.storage_options), self.format, schema, outputs,
            max(5, len(str(out.npartitions - 1))), meta=meta, token="dask-llm-write",
        )  # fmt: skip

    def finish(self, columns: list[str]) -> None:
        """Join the parts of a single-file output into OUTPUT, in order."""
        if not self.single_file:
            return
        # The workers wrote the parts: the Store lists them afresh (and leaves no stale listing cached).
        parts = open_store(self.parts_url, self.storage_options)
        names = [n for n in parts.list() if n.startswith("part-")]
        with self._fs.open(self._root, "wb", compression=_compression(self.path)) as target:
            if self.format == "csv":
                target.write(pd.DataFrame(columns=columns).to_csv(index=False).encode())
            for name in names:
                with parts.fs.open(parts.path(name), "rb") as part:
                    while chunk := part.read(1 << 22):
                        target.write(chunk)
        self.abort()

    def abort(self) -> None:
        """Remove the hidden parts folder of a single-file output (best effort)."""
        if self.single_file:
            try:
                self._fs.rm(self._parts_root, recursive=True)
            except (FileNotFoundError, OSError):
                pass


def _write_part(
    frame: pd.DataFrame,
    parts_url: str,
    storage_options: Mapping[str, Any],
    fmt: Format,
    schema: pa.Schema | None,
    outputs: OutputColumns,
    width: int,
    partition_info: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    number = int((partition_info or {}).get("number") or 0)
    if fmt == "parquet":
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        sink = pa.BufferOutputStream()  # native buffer, not a Python file object
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    elif fmt == "csv":
        data = frame.to_csv(index=False, header=False).encode()
    elif frame.empty:  # pandas writes a bare newline: a blank line in the joined file
        data = b""
    else:
        text = frame.to_json(orient="records", lines=True, force_ascii=False)
        data = (text if text.endswith("\n") else text + "\n").encode()
    ext = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}[fmt]
    # Whole-file atomic write: a rerun of the task replaces the part, and a
    # reader never sees half of one.
    open_store(parts_url, storage_options).write(f"part-{number:0{width}d}.{ext}", data)
    totals = partition_totals(frame, outputs)
    return pd.DataFrame({k: pd.Series([v], dtype=TOTALS[k]) for k, v in totals.items()})
