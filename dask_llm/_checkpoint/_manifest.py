"""The run manifest: which enrichment a checkpoint holds.

Answers stored in a checkpoint are only reusable by the same enrichment: the
same prompt, model, parameters and output schema. ``_dask_llm/manifest.json``
records those and their fingerprint; ``enrich()`` compares them with the job
at hand before any call and refuses a mismatch, because silently mixing the
answers of two prompts in one dataset is worse than failing.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._checkpoint_store import Store
from ._errors import CheckpointError

__all__ = ["INTERNAL_DIR", "RunSpec", "claim"]

#: Everything that is not output data lives here; readers skip ``_`` names.
INTERNAL_DIR = "_dask_llm"
MANIFEST = f"{INTERNAL_DIR}/manifest.json"
#: Layout version; a checkpoint of another version is not read.
FORMAT = 1
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


def claim(store: Store, spec: RunSpec, overwrite: bool) -> None:
    """Make ``store`` the checkpoint of ``spec``'s run, or refuse.

    An empty or new path gets a manifest. A path holding the same run is
    resumed as it is. A path holding another run is refused, unless
    ``overwrite``: then the files of that run are deleted first (only names
    dask-llm writes; anything else in the directory is left alone).

    Raises
    ------
    CheckpointError
        Another run is stored there, or the directory holds files that are
        not a dask-llm checkpoint.
    """
    raw = store.read(MANIFEST)
    if raw is None:
        foreign = [n for n in store.list() if not _owned(n)]
        if foreign:
            shown = ", ".join(map(repr, foreign[:5])) + (", ..." if len(foreign) > 5 else "")
            raise CheckpointError(
                f"checkpoint path {store.url} is not empty and is not a dask-llm "
                f"checkpoint (it holds {shown}); choose an empty or new path"
            )
    else:
        stored = _parse(raw, store)
        if stored.get("run") == spec.fingerprint and not overwrite:
            return
        if not overwrite:
            raise CheckpointError(
                f"checkpoint {store.url} holds another run ({_difference(stored, spec)}); "
                f"pass overwrite=True to discard it and start a new run there, or choose "
                f"another path"
            )
    if overwrite:
        for name in store.list():
            if _owned(name):
                store.remove(name)
    manifest = {
        "format": FORMAT,
        "run": spec.fingerprint,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **spec.describe(),
    }
    store.write(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())


def _owned(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _OWNED)


def _parse(raw: bytes, store: Store) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{store.url}/{MANIFEST} is not a dask-llm manifest of format {FORMAT}; "
            f"pass overwrite=True to start a new run there, or choose another path"
        )
    return manifest


def _difference(stored: Mapping[str, Any], spec: RunSpec) -> str:
    """Which of prompt, model, ... differ, for the error message."""
    now = spec.describe()
    changed = [
        f"{key} was {stored.get(key)!r}, now {now[key]!r}"
        for key in ("model", "prompt", "system", "params", "columns")
        if stored.get(key) != now[key]
    ]
    return "; ".join(changed) or "stored by another version of dask-llm"
