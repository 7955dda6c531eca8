"""``run``: requests in, one outcome per request out, through batches and their follow-ups.

The whole life of a set of requests in the Batch API, for a caller that
does not need the steps: submit, wait, take the results, and, with
``retry="batch"``, send what failed transiently or did not run in follow-up
batches (at most ``max_follow_ups``). With ``retry="sync"`` those lines come
back as they are, for the caller to retry with ordinary calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._config import Endpoint
from .._errors import ConfigError
from ._calls import Stop, never
from ._config import BatchAPI
from ._jobs import submit, wait
from ._refs import MAX_CALLER_KEYS, BatchRef, check_metadata
from ._results import LineResult, results

__all__ = ["FOLLOW_UP", "run"]

#: Metadata key set on follow-up batches: "1", "2", ... (round 0 has none).
FOLLOW_UP = "dask_llm_follow_up"


def run(
    endpoint: Endpoint,
    items: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    metadata: Mapping[str, str],
    options: BatchAPI,
    should_stop: Stop = never,
    on_submitted: Callable[[Sequence[BatchRef]], None] | None = None,
    on_resubmit: Callable[[BatchRef, BatchRef], None] | None = None,
) -> dict[str, LineResult]:
    """Send requests through the Batch API and return each one's outcome.

    Parameters
    ----------
    endpoint, items, metadata, options, should_stop
        As for :func:`~dask_llm._batchapi.submit`. Follow-up batches carry
        the metadata too, plus ``dask_llm_follow_up``.
    on_submitted : callable, optional
        Given the refs of each round as soon as they are created (to record
        them in a checkpoint before waiting hours).
    on_resubmit : callable, optional
        As for :func:`~dask_llm._batchapi.wait`.

    Returns
    -------
    dict of str to LineResult
        By custom_id. ``attempts`` counts the batches a request ran in. A
        request absent from it was never sent: the run stopped first. A
        request whose line is still ``resubmit`` used up the follow-ups
        (``retry="batch"``) or is the caller's to retry (``retry="sync"``).
    """
    check_metadata(metadata)
    if FOLLOW_UP in metadata or len(metadata) + 1 > MAX_CALLER_KEYS:
        # Follow-ups add a key: metadata that leaves no room for it must fail now, not hours later.
        raise ConfigError(f"run() takes at most {MAX_CALLER_KEYS - 1} metadata keys, none named {FOLLOW_UP!r}")
    todo = list(items)
    out: dict[str, LineResult] = {}
    rounds = 1 + (options.max_follow_ups if options.retry == "batch" else 0)
    for round_ in range(rounds):
        meta = dict(metadata) if round_ == 0 else {**metadata, FOLLOW_UP: str(round_)}
        refs = submit(endpoint, todo, metadata=meta, options=options, should_stop=should_stop)
        if on_submitted is not None and refs:
            on_submitted(refs)
        states = wait(endpoint, refs, options=options, should_stop=should_stop, on_resubmit=on_resubmit)
        for state in states:
            if not state.terminal:
                continue  # stopped: its lines are left for the next run, which can find() the batch
            for custom_id, line in results(endpoint, state, options).items():
                before = out.get(custom_id)
                out[custom_id] = replace(line, attempts=line.attempts + (before.attempts if before else 0))
        if should_stop():
            break
        todo = [(custom_id, body) for custom_id, body in todo if custom_id in out and out[custom_id].resubmit]
        if not todo:
            break
    return out
