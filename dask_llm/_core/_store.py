"""Whole-file reads and writes on any fsspec filesystem, all or nothing.

A checkpoint is only as good as its writes: a reader (a resumed task, or
``dd.read_parquet`` on the output) must never see half a file. How to get
that depends on the filesystem:

- object stores (S3, GCS, Azure): a single PUT is already atomic, and a
  "rename" would be a copy, so the final key is written directly;
- everything else (local disk, ``memory://``, NFS): write a dot-prefixed
  temporary file beside the target and rename it over the target, which
  POSIX makes atomic. fsspec's own transactions stage files in the system
  temp directory, which turns the rename into a copy, so they are not used.

Dot-prefixed names are skipped by every Parquet reader, so a temporary file
left by a crash never shows up in the output dataset.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

__all__ = ["Store", "open_store"]

_create_lock = threading.Lock()

#: Protocols whose writes are single atomic PUTs and whose renames are copies.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss"})


def _is_local(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def open_store(url: str, storage_options: Mapping[str, Any] | None = None) -> Store:
    """The :class:`Store` rooted at ``url``.

    fsspec caches filesystem instances per process, so calling this once per
    partition reuses one connection pool per worker.

    Raises
    ------
    ValueError, ImportError
        Unknown protocol, or its fsspec implementation is not installed.
    """
    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return Store(fs, root)


@contextlib.contextmanager
def _fresh_listing(fs: AbstractFileSystem, where: str) -> Iterator[None]:
    """List ``where`` from storage, and leave no listing of it cached.

    s3fs (like other object-store filesystems) caches directory listings
    per process, in the instance fsspec hands to everyone with the same
    options: the user's own reads of the checkpoint included. Other
    processes write and delete files here, so a listing kept after the call
    goes stale: a later ``dd.read_parquet`` in that process would miss a
    file, or refuse to open one its listing lacks.
    """
    fs.invalidate_cache(where)
    try:
        yield
    finally:
        fs.invalidate_cache(where)


class Store:
    """Files under one root directory of one filesystem, addressed by
    ``/``-separated paths relative to that root.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The filesystem.
    root : str
        Root path on ``fs``, without protocol.
    """

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.object_store = bool(OBJECT_STORES.intersection(protocols))

    @property
    def url(self) -> str:
        """The root as a URL that any process can open (absolute for local paths)."""
        return self.fs.unstrip_protocol(self.root)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def makedirs(self, rel: str = "") -> None:
        """Create a directory; a no-op on object stores, which have none (and
        where s3fs's makedirs would create a *bucket* as a side effect)."""
        if not self.object_store:
            self.fs.makedirs(self.path(rel), exist_ok=True)

    def write(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see the old file or the new one,
        never a part of either."""
        target = self.path(rel)
        if self.object_store:
            self.fs.pipe_file(target, data)
            return
        parent, _, name = target.rpartition("/")
        self.fs.makedirs(parent, exist_ok=True)
        temp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(temp, data)
            self.fs.mv(temp, target)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(temp)
            raise

    def create(self, rel: str, data: bytes) -> bool:
        """Write a whole file only if none exists there, atomically with
        respect to other writers: ``False`` (nothing written) when one does.

        Uses the storage's own conditional create, never read-then-write:
        a hard link of a finished temporary file on local disk (``link``
        fails if the target exists), ``If-None-Match: *`` on S3 (which
        s3fs maps to ``FileExistsError``), and exclusive mode elsewhere.
        """
        target = self.path(rel)
        if self.object_store:
            try:
                self.fs.pipe_file(target, data, mode="create")
            except FileExistsError:
                return False
            return True
        parent, _, name = target.rpartition("/")
        self.fs.makedirs(parent, exist_ok=True)
        if _is_local(self.fs):
            temp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
            with open(temp, "wb") as f:
                f.write(data)
            try:
                os.link(temp, target)
            except FileExistsError:
                return False
            finally:
                os.unlink(temp)
            return True
        with _create_lock:  # memory:// and the like live in this process
            if self.fs.exists(target):
                return False
            self.write(rel, data)
            return True

    def read(self, rel: str) -> bytes | None:
        """A whole file, or ``None`` when it does not exist."""
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        """Several whole files at once (concurrently on object stores); files
        that vanished meanwhile are left out."""
        # fs.cat answers under its own spelling of each path (memory:// adds
        # a leading "/"), so match answers to requests in that spelling.
        paths = {self.fs._strip_protocol(self.path(r)): r for r in rels}
        if not paths:
            return {}
        found = self.fs.cat(list(paths), on_error="omit")
        if not isinstance(found, dict):  # fsspec returns bare bytes for one plain path
            found = {next(iter(paths)): found}
        return {paths[p]: data for p, data in found.items() if p in paths and isinstance(data, bytes)}

    def list(self, rel: str = "") -> list[str]:
        """Names in a directory, sorted, without dot-prefixed temporary files;
        empty when the directory does not exist."""
        return sorted(self._ls(rel, detail=False))

    def versions(self, rel: str = "") -> dict[str, str]:
        """The files of a directory (as :meth:`list`), each with a token that
        changes when the file is written again under its name (inode, mtime,
        ETag, size: whatever the backend reports)."""
        entries = self._ls(rel, detail=True)
        keys = ("size", "ino", "mtime", "ETag", "LastModified", "created")
        return {name: repr([entries[name].get(k) for k in keys]) for name in sorted(entries)}

    def _ls(self, rel: str, detail: bool) -> dict[str, Any]:
        """A directory's entries by name (fsspec's detail dicts, or their
        paths), without dot-prefixed temporary files."""
        where = self.path(rel)
        with _fresh_listing(self.fs, where):
            try:
                entries = self.fs.ls(where, detail=detail)
            except FileNotFoundError:
                return {}
        out = {}
        for entry in entries:
            name = str(entry["name"] if detail else entry).rstrip("/").rpartition("/")[2]
            if name and not name.startswith("."):
                out[name] = entry
        return out

    def find(self, rel: str) -> builtins.list[str]:
        """Every file under a directory, recursively, as paths relative to
        it, without dot-prefixed temporary files; empty when it does not exist."""
        where = self.path(rel)
        with _fresh_listing(self.fs, where):
            try:
                found = self.fs.find(where)
            except FileNotFoundError:
                return []
        prefix = self.fs._strip_protocol(where).rstrip("/") + "/"
        out = []
        for path in found:
            path = self.fs._strip_protocol(str(path))
            if path.startswith(prefix):
                tail = path[len(prefix) :]
                if not any(part.startswith(".") for part in tail.split("/")):
                    out.append(tail)
        return sorted(out)

    def remove_files(self, rels: Iterable[str]) -> None:
        """Delete these files (one bulk request on object stores); missing is fine."""
        paths = [self.path(r) for r in rels]
        if paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(paths)

    def remove_empty_dir(self, rel: str) -> None:
        """Delete a directory if it is empty: never what another writer just put there."""
        if not self.object_store:
            with contextlib.suppress(OSError):
                self.fs.rmdir(self.path(rel))

    def remove(self, rel: str) -> None:
        """Delete a file or a directory tree; missing is fine."""
        target = self.path(rel)
        self.fs.invalidate_cache(target)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(target, recursive=True)
