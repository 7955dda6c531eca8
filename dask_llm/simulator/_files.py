"""Uploaded files, kept in memory, and the multipart/form-data the openai client uploads them in.

``client.files.create(file=..., purpose="batch")`` sends a ``multipart/form-data``
body with a ``purpose`` field and a ``file`` part carrying a filename; the
files API answers ``FileObject``s and lists them newest first with a cursor.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["FILE_PURPOSES", "FileStore", "StoredFile", "cursor_page", "parse_multipart"]

#: Purposes the openai client's ``FileObject`` accepts.
FILE_PURPOSES = (
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
)

_PARAM = re.compile(r';\s*([\w*-]+)="((?:[^"\\]|\\.)*)"|;\s*([\w*-]+)=([^;\s]+)')

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """One file in the store."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_object(self) -> dict[str, Any]:
        """The ``FileObject`` the API answers."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class FileStore:
    """Files by id, in the order they were added (uploads and batch results alike)."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._ids = itertools.count(1)

    def add(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        """Store `content` under a new id and return it."""
        stored = StoredFile(f"file-sim{next(self._ids):06d}", filename, purpose, content, int(time.time()))
        self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """Return the file, or ``None`` if there is none with this id."""
        return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        """Forget the file; return whether it existed."""
        return self._files.pop(file_id, None) is not None

    def newest_first(self, purpose: str | None = None) -> list[StoredFile]:
        """Every file, newest first, optionally only those of `purpose`."""
        files = reversed(self._files.values())
        return [f for f in files if purpose is None or f.purpose == purpose]

    def __len__(self) -> int:
        return len(self._files)


def cursor_page(
    items: Sequence[T], item_id: Callable[[T], str], after: str | None, limit: int, to_object: Callable[[T], Any]
) -> dict[str, Any]:
    """Return one page of a list the way OpenAI paginates: ``after`` an id, at most `limit` items.

    Parameters
    ----------
    items : sequence
        The whole list, in the order the API returns it (newest first).
    item_id : callable
        The id of an item.
    after : str, optional
        Start after the item with this id; an unknown id gives an empty page.
    limit : int
        Most items in the page.
    to_object : callable
        The JSON object of an item.

    Returns
    -------
    dict
        ``{"object": "list", "data": [...], "first_id", "last_id", "has_more"}``.
    """
    start = 0
    if after is not None:
        ids = [item_id(item) for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": [to_object(item) for item in page],
        "first_id": item_id(page[0]) if page else None,
        "last_id": item_id(page[-1]) if page else None,
        "has_more": start + limit < len(items),
    }


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Split a ``multipart/form-data`` body into its fields.

    Parameters
    ----------
    body : bytes
        The request body.
    content_type : str
        The request's ``content-type``, which names the boundary.

    Returns
    -------
    dict of str to (str or None, bytes)
        Field name to (filename if the part is a file, content).

    Raises
    ------
    ValueError
        If the content type is not multipart/form-data with a boundary, or the body is malformed.
    """
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise ValueError("the body must be multipart/form-data")
    boundary = _params(";" + params).get("boundary")
    if not boundary:
        raise ValueError("the multipart/form-data content type has no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    # Find the parts by index rather than split, so a large file is copied once, not twice.
    start = body.find(delimiter)
    if start < 0:
        raise ValueError("the multipart body has no boundary")
    while True:
        start += len(delimiter)
        if body[start : start + 2] == b"--":
            return fields
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise ValueError("the multipart body is not terminated")
        head_end = body.find(b"\r\n\r\n", start, end + 2)
        if head_end < 0:
            raise ValueError("a multipart part has no headers")
        name, filename = _disposition(body[start:head_end].decode("utf-8", "replace"))
        fields[name] = (filename, body[head_end + 4 : end])
        start = end + 2


def _disposition(head: str) -> tuple[str, str | None]:
    for line in head.split("\r\n"):
        header, _, value = line.partition(":")
        if header.strip().lower() == "content-disposition":
            params = _params(value[value.find(";") :] if ";" in value else "")
            if "name" in params:
                return params["name"], params.get("filename")
    raise ValueError("a multipart part has no Content-Disposition name")


def _params(text: str) -> dict[str, str]:
    params = {}
    for match in _PARAM.finditer(text):
        if match.group(1) is not None:
            params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", match.group(2))
        else:
            params[match.group(3).lower()] = match.group(4)
    return params
