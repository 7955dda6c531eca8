"""Checkpoint and resume on any fsspec storage: rows paid for are never paid again.

What lives here, bottom to top (each module imports only those above it in
this list, plus :mod:`dask_llm._errors`):

- ``_store``: whole-file atomic reads, writes and conditional creates;
- ``_identity``: row identity (request content, key, occurrence);
- ``_ledger``: records of paid rows and this process's index of them;
- ``_journal``: the continuous journal of a running partition;
- ``_manifest``: which run a checkpoint holds, claimed atomically;
- ``_claims``: the run's claims on earlier runs' dataset files, which its
  coordinator answers (default: this process's);
- ``_standing``: a partition that earlier files hold as it is, found by
  comparing its rows with theirs (no row hashes, no ledger);
- ``_partition``: one partition's resume and commit, and ``open_checkpoint``.

Nothing here knows about dask, the runner or the model: the runner hands a
partition's frame in and gets back what to call, then hands the outcomes back.
"""

from .._core._store import Store, open_store
from ._claims import DatasetClaims
from ._ledger import FIELDS, INTERNAL_DIR
from ._manifest import FORMAT, MANIFEST, RunSpec
from ._partition import Checkpoint, PartitionCheckpoint, open_checkpoint

__all__ = [
    "FIELDS",
    "FORMAT",
    "INTERNAL_DIR",
    "MANIFEST",
    "Checkpoint",
    "DatasetClaims",
    "PartitionCheckpoint",
    "RunSpec",
    "Store",
    "open_checkpoint",
    "open_store",
]
