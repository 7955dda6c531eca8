"""A run's claims on earlier runs' dataset files, answered by its coordinator.

Partitions of one run stand on rows of earlier runs' files (they do not
write those rows again) or take a file away (it holds a stale row of
theirs). Both decisions are one run's, whatever process makes them, so the
coordinator keeps them (``dataset_keep``, ``dataset_close``,
``dataset_done``: see :mod:`dask_llm._coordination._protocol`); this is the
partition's side, with row positions sent as bytes (every transport carries
bytes, not every one carries arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DatasetClaims"]


class DatasetClaims:
    """The claims of run ``epoch``, through ``call(op, **fields)``.

    Parameters
    ----------
    call : callable
        A coordinator's ``call``; default: this process's local coordinator
        (one process, as the synchronous and threaded schedulers run).
    epoch : str
        The run.
    """

    def __init__(self, epoch: str, call: Callable[..., Any] | None = None) -> None:
        if call is None:
            from .._coordination import local_coordinator

            call = local_coordinator().call
        self._call = call
        self.epoch = epoch

    def keep(self, name: str, part: str, size: int, positions: np.ndarray | None = None) -> np.ndarray:
        """Stand on the rows at ``positions`` of file ``name`` (default:
        all ``size`` rows); which of them this partition may stand on."""
        raw = None if positions is None else np.asarray(positions, dtype=np.int32).tobytes()
        answer = self._call("dataset_keep", epoch=self.epoch, name=name, part=part, size=size, positions=raw)
        return np.frombuffer(answer, dtype=np.uint8).astype(bool)

    def close(self, name: str, part: str, size: int, into: str, *, unless_kept: bool = False) -> np.ndarray | None:
        """Take file ``name`` away; the positions of the rows other
        partitions stand on, to be written into ``into`` (``None``: nothing
        for this partition to do)."""
        answer = self._call("dataset_close", epoch=self.epoch, name=name, part=part, size=size, into=into,
                            unless_kept=unless_kept)  # fmt: skip
        return None if answer is None else np.frombuffer(answer, dtype=np.int32)

    def done(self, number: int, total: int) -> bool:
        """Partition ``number`` committed; whether it completes the run."""
        return bool(self._call("dataset_done", epoch=self.epoch, number=number, total=total))
