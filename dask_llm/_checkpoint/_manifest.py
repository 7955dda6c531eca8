"""The run manifest: which enrichment a checkpoint holds.

Answers stored in a checkpoint are only reusable by the same enrichment: the
same prompt, model, parameters and output schema. ``_dask_llm/manifest.json``
records those and their fingerprint; ``enrich()`` compares them with the job
at hand before any call and refuses a mismatch, because silently mixing the
answers of two prompts in one dataset is worse than failing.

The manifest is created with the storage's conditional create, so two runs
racing on a new path cannot both claim it. Each manifest has an id, which
scopes the per-process ledger caches: after ``overwrite=True`` nothing a
long-lived worker remembers of the old run is used.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._core._store import Store
from .._errors import CheckpointError, option
from ._ledger import INTERNAL_DIR

__all__ = ["FORMAT", "MANIFEST", "RunSpec", "claim"]

MANIFEST = f"{INTERNAL_DIR}/manifest.json"
#: Layout version. 1: partitions keyed by content (dask-llm 0.1); 2: rows
#: keyed by identity, a ledger, and per-file members. A checkpoint of
#: another version is refused with a message that says what to do.
FORMAT = 2
#: Names at the checkpoint root that dask-llm may write, and so may delete.
_OWNED = (INTERNAL_DIR, "part-*.parquet")


@dataclass(frozen=True)
class RunSpec:
    """What decides the answers of a run, and so whether stored answers apply."""

    prompt: str
    system: str | None
    model: str
    params: Mapping[str, Any]
    columns: Mapping[str, str]

    def describe(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "system": self.system,
            "model": self.model,
            # default=str: parameters such as response_format may hold objects;
            # their text is the best stable stand-in there is.
            "params": json.loads(json.dumps(dict(self.params), sort_keys=True, default=str)),
            "columns": dict(self.columns),
        }

    @property
    def fingerprint(self) -> str:
        text = json.dumps({"format": FORMAT, **self.describe()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def claim(store: Store, spec: RunSpec, overwrite: bool) -> str:
    """Make ``store`` the checkpoint of ``spec``'s run, or refuse; return the
    manifest's id (new for every manifest written).

    An empty or new path gets a manifest, created with the storage's own
    conditional create (:meth:`Store.create`): of two runs with different
    specs racing on one new path, exactly one wins and the other is refused.
    A path holding the same run is resumed as it is. A path holding another
    run is refused, unless ``overwrite``: then the files of that run are
    deleted first (only names dask-llm writes; anything else in the
    directory is left alone).

    Raises
    ------
    CheckpointError
        Another run is stored there, the directory holds files that are not
        a dask-llm checkpoint, or its manifest is of another format.
    """
    raw = store.read(MANIFEST)
    if raw is not None and not overwrite:
        return _same_run(raw, store, spec)
    if raw is None:
        # Never delete (or mix answers into) a directory dask-llm did not make.
        foreign = [n for n in store.list() if not _owned(n)]
        if foreign:
            shown = ", ".join(map(repr, foreign[:5])) + (", ..." if len(foreign) > 5 else "")
            raise CheckpointError(
                f"checkpoint path {store.url} is not empty and is not a dask-llm "
                f"checkpoint (it holds {shown}); choose an empty or new path"
            )
    if overwrite:
        for name in store.list():
            if _owned(name):
                store.remove(name)
    manifest_id = uuid.uuid4().hex
    manifest = {
        "format": FORMAT,
        "id": manifest_id,
        "run": spec.fingerprint,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **spec.describe(),
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    for _ in range(3):
        if store.create(MANIFEST, data):
            return manifest_id
        raw = store.read(MANIFEST)
        if raw is not None:  # another run created it first
            return _same_run(raw, store, spec)
    raise CheckpointError(f"could not create {store.url}/{MANIFEST}: it appears and vanishes (another run?)")


def _same_run(raw: bytes, store: Store, spec: RunSpec) -> str:
    """The stored manifest's id, if it is ``spec``'s run."""
    stored = _parse(raw, store)
    if stored.get("run") != spec.fingerprint:
        raise CheckpointError(
            f"checkpoint {store.url} holds another run ({_difference(stored, spec)}); "
            f"{option('overwrite', True)} discards it and starts a new run there; or choose another path"
        )
    return str(stored.get("id", ""))


def _owned(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _OWNED)


def _parse(raw: bytes, store: Store) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise CheckpointError(
            f"{store.url}/{MANIFEST} is not a dask-llm manifest; {option('overwrite', True)} "
            f"starts a new run there; or choose another path"
        )
    if manifest["format"] != FORMAT:
        raise CheckpointError(
            f"checkpoint {store.url} was written by another version of dask-llm (format "
            f"{manifest['format']}, this version reads format {FORMAT}); its Parquet files still read "
            f"with dd.read_parquet, but it cannot be resumed: {option('overwrite', True)} starts over "
            f"there (and pays again), or choose a new path"
        )
    return manifest


def _difference(stored: Mapping[str, Any], spec: RunSpec) -> str:
    """Which of prompt, model, ... differ, for the error message."""
    now = spec.describe()
    changed = [
        _columns_change(stored.get(key) or {}, now.get(key) or {})
        if key == "columns"
        else f"{key} was {stored.get(key)!r}, now {now.get(key)!r}"
        for key in ("model", "prompt", "system", "params", "columns", "key")
        if stored.get(key) != now.get(key)
    ]
    return "; ".join(changed) or "stored by another version of dask-llm"


def _columns_change(was: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    # The first output column is the one the user named; the rest follow it.
    before, after = next(iter(was), None), next(iter(now), None)
    if before != after:
        return f"column was {before!r}, now {after!r}"
    types = [f"{name} {was[name]} -> {now[name]}" for name in now if name in was and was[name] != now[name]]
    names = sorted(set(was) ^ set(now))
    return f"output columns changed ({', '.join(types or names)})"
