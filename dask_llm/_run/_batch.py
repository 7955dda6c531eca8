"""A batch of rows through the OpenAI Batch API, in two phases.

``enrich(..., batch=True)`` sends every partition's rows as batch input
files and collects the answers hours later, at half the price. An engine
runs the two phases so that no partition waits before every partition has
submitted (on Dask: every collect task depends on every submit task):

1. :func:`submit_rows` decides which rows to call (a checkpoint's rows are
   restored, as in the synchronous path), renders their requests, and
   creates their batches, unless batches for them exist already: the
   checkpoint records every batch the moment it exists
   (``_dask_llm/batches/``), and without a checkpoint the provider's own
   list of batches is searched by their metadata (the run's fingerprint and
   the partition's content key). So a re-run after a killed driver
   re-attaches to its batches instead of paying for them again.
2. :func:`collect_rows` polls the partition's batches until they end,
   turns their output lines into answers and their error lines into
   errors, sends what failed transiently or did not run (an expired or
   cancelled batch keeps what it finished) in a follow-up batch or
   synchronously (``BatchAPI(retry=...)``), and journals and commits the
   rows as the synchronous path does.

The custom id of a request is its row's identity, so results map back to
rows whatever the partitioning of the run that collects them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd

from .._batchapi import BatchAPI, BatchRef, BatchState, LineResult, cancel, find, poll, resubmit, results, submit
from .._checkpoint import PartitionCheckpoint
from .._checkpoint._identity import RowIds, row_ids
from .._checkpoint._ledger import INTERNAL_DIR
from .._config import Endpoint
from .._coordination import Coordinator
from .._coordination import current as current_coordinator
from .._coordination._client import connect
from .._core._dedup import DedupPlan, plan, reused
from .._core._prompt import RenderError
from .._core._store import Store
from ._job import Job, Outcome
from ._progress import Cancelled, partition_progress
from ._stopping import Stoppable, running

__all__ = ["BATCHES_DIR", "Submitted", "cancel_run", "collect_rows", "recorded", "run_batches", "submit_rows"]

#: Where a checkpoint records the batches of a run, one file per batch.
BATCHES_DIR = f"{INTERNAL_DIR}/batches"


@dataclass(frozen=True)
class Submitted:
    """What phase 1 hands phase 2: the partition's batches (as dicts: they
    travel between tasks) and its leader rows' custom ids."""

    refs: tuple[dict[str, Any], ...] = ()
    custom_ids: dict[str, int] = field(default_factory=dict)  # custom id -> leader row position


def _custom_id(ids: RowIds, row: int) -> str:
    return f"{int(ids.hi[row]):016x}{int(ids.lo[row]):016x}"


def _coordinator(job: Job, coordinator: Coordinator | None) -> Coordinator:
    if coordinator is not None:
        return coordinator
    return connect(job.coordinator) if job.coordinator is not None else current_coordinator()


def _metadata(job: Job, partition_key: str) -> dict[str, str]:
    return {**_run_metadata(job.run_spec), "dask_llm_part": partition_key[:16]}


def _run_metadata(run_spec: str) -> dict[str, str]:
    return {"dask_llm_run": run_spec[:16]}


def _plan_rows(
    frame: pd.DataFrame, job: Job, number: int, coordinator: Coordinator | None = None
) -> tuple[PartitionCheckpoint | None, RowIds, list[int]]:
    """The checkpoint of the batch (if any), its row identities, the rows to
    call; with ``coordinator``, the one that answers the run's claims on
    dataset files (the phase that commits)."""
    from ._runner import claims_of

    if job.checkpoint is not None:
        claims = claims_of(coordinator, job.checkpoint.epoch) if coordinator is not None else None
        saved = job.checkpoint.partition(frame, job.prompt.columns, key=job.key, share_content=job.dedup,
                                         partition_info={"number": number}, claims=claims)  # fmt: skip
        return saved, saved.ids, saved.todo
    return None, row_ids(frame, job.prompt.columns, job.key), list(range(len(frame)))


def submit_rows(frame: pd.DataFrame, job: Job, number: int = 0, coordinator: Coordinator | None = None) -> Submitted:
    """Phase 1: create the batches of the rows still to answer (see the module docstring)."""
    assert job.batch is not None
    options: BatchAPI = job.batch
    _, ids, todo = _plan_rows(frame, job, number)
    if not todo:
        return Submitted()
    rendered = job.prompt.render(frame.iloc[todo])
    leaders: dict[str, int] = {}
    items: list[tuple[str, dict[str, Any]]] = []
    requests = [job.request(m) if not isinstance(m, RenderError) else {} for m in rendered]
    callable_rows = [k for k, m in enumerate(rendered) if not isinstance(m, RenderError)]
    dedup = plan(requests, callable_rows) if job.dedup else DedupPlan(tuple(callable_rows), {}, {})
    for k in dedup.leaders:
        custom_id = _custom_id(ids, todo[k])
        leaders[custom_id] = todo[k]
        items.append((custom_id, requests[k]))
    if not items:
        return Submitted(custom_ids=leaders)
    partition_key = ids.digest
    existing = _existing(job, partition_key, set(leaders))
    covered = {c for ref in existing for c in (ref.custom_ids or leaders)}
    fresh = [(c, body) for c, body in items if c not in covered]
    refs = list(existing)
    if fresh:
        new = submit(job.endpoint, fresh, metadata=_metadata(job, partition_key), options=options)
        _record(job, new)
        refs += new
    if job.progress is not None:
        # Every batch the run follows, re-attached ones included: the progress shows them all.
        _coordinator(job, coordinator).publish(
            job.progress.topic, {"batches": len(refs), "batch_requests": sum(r.rows for r in refs)}
        )
    return Submitted(refs=tuple(_ref_dict(r) for r in refs), custom_ids=leaders)


def _existing(job: Job, partition_key: str, wanted: set[str]) -> list[BatchRef]:
    """Batches created earlier for any of ``wanted`` (by the checkpoint's
    records, else by the provider's list and the batches' metadata)."""
    if job.checkpoint is not None:
        found = [_ref_from(d) for d in recorded(job.checkpoint.store())]
        return [ref for ref in found if ref.custom_ids is not None and wanted.intersection(ref.custom_ids)]
    # Without a checkpoint: the provider's list. A batch that expired or was
    # cancelled still holds what it finished; one that failed holds nothing.
    states = find(job.endpoint, _metadata(job, partition_key))
    return [s.ref for s in states if s.status != "failed"]


def _record(job: Job, refs: list[BatchRef], state: BatchState | None = None) -> None:
    """Write each batch into the checkpoint the moment it exists, and what
    the last look at it saw (for ``dask-llm status``)."""
    if job.checkpoint is None:
        return
    store = job.checkpoint.store()
    for ref in refs:
        record = _ref_dict(ref)
        if state is not None:
            record["seen"] = {"status": state.status, "total": state.total, "completed": state.completed,
                              "failed": state.failed, "at": time.time()}  # fmt: skip
        store.write(f"{BATCHES_DIR}/{ref.batch_id}.json", json.dumps(record).encode())


def recorded(store: Store) -> list[dict[str, Any]]:
    """The batch records of the checkpoint in ``store``: each
    a :class:`~dask_llm._batchapi.BatchRef` as a dict, plus ``seen`` (the
    last state a run saw) once a run has polled it."""
    names = [n for n in store.list(BATCHES_DIR) if n.endswith(".json")]
    records = [json.loads(raw) for raw in store.read_many(f"{BATCHES_DIR}/{n}" for n in names).values()]
    return sorted(records, key=lambda r: str(r.get("batch_id")))


def run_batches(endpoint: Endpoint, run_spec: str, store: Store | None = None) -> list[BatchRef]:
    """The batches of the run: the checkpoint's records, else the provider's
    batches whose metadata names the run."""
    if store is not None:
        return [_ref_from(d) for d in recorded(store)]
    return [state.ref for state in find(endpoint, _run_metadata(run_spec))]


def cancel_run(endpoint: Endpoint, run_spec: str, store: Store | None = None) -> list[BatchState]:
    """Cancel the run's batches that have not ended (see :func:`run_batches`).

    A cancelled batch keeps what it answered: a later run with the same
    checkpoint collects those rows and sends only the rest again.
    """
    return cancel(endpoint, run_batches(endpoint, run_spec, store))


def _ref_dict(ref: BatchRef) -> dict[str, Any]:
    d = asdict(ref)
    d["custom_ids"] = list(ref.custom_ids) if ref.custom_ids is not None else None
    d["metadata"] = dict(ref.metadata)
    return d


def _ref_from(d: Mapping[str, Any]) -> BatchRef:
    ids = d.get("custom_ids")
    return BatchRef(
        batch_id=d["batch_id"], input_file_id=d["input_file_id"], model=d["model"], rows=int(d["rows"]),
        tokens=int(d.get("tokens") or 0), metadata=dict(d.get("metadata") or {}),
        custom_ids=tuple(ids) if ids is not None else None,
    )  # fmt: skip


def collect_rows(
    frame: pd.DataFrame,
    submitted: Submitted,
    job: Job,
    number: int = 0,
    coordinator: Coordinator | None = None,
) -> pd.DataFrame:
    """Phase 2: wait for the partition's batches and return the enriched rows."""
    from ._runner import _fields, _result

    coord = _coordinator(job, coordinator)
    saved, ids, todo = _plan_rows(frame, job, number, coord)
    n = len(frame)
    outcomes: dict[int, Outcome] = {}
    earlier, resumed, resumed_errors = saved.restored_by_run() if saved is not None else (n - len(todo), 0, 0)
    report = partition_progress(job.progress, coord, restored=earlier, part=str(number), size=n,
                                resumed=(resumed, resumed_errors))  # fmt: skip
    # As in the synchronous path, the rows are journaled before the partition
    # stops counting as running (a stop that waits for it finds them saved).
    with running(job.progress.topic if job.progress is not None else None) as handle, report:
        try:
            if todo:
                _answer(frame, submitted, job, coord, handle, ids, todo, outcomes)
        finally:
            if saved is not None and outcomes:
                with saved.journal() as journal:
                    for row, outcome in outcomes.items():
                        journal.add(row, outcome)
        if handle.draining.is_set():
            raise Cancelled(f"run stopped: {handle.reason}")
        for k in todo:
            if k in outcomes:
                report.row(outcomes[k])
    fields = _fields(saved.records if saved is not None else None, outcomes, n)
    result = _result(frame, job.outputs, fields)
    if saved is not None:
        saved.commit(result, fields)
        saved.finish()
    return result


def _answer(
    frame: pd.DataFrame,
    submitted: Submitted,
    job: Job,
    coord: Coordinator,
    handle: Stoppable,
    ids: RowIds,
    todo: list[int],
    outcomes: dict[int, Outcome],
) -> None:
    """Fill ``outcomes`` for the rows ``todo``: from the batches' lines, and
    the synchronous retries of what they could not answer."""
    from .._budget._process import limiter_for
    from ._runner import run_rows

    assert job.batch is not None
    options = job.batch
    rendered = job.prompt.render(frame.iloc[todo])
    requests = [job.request(m) if not isinstance(m, RenderError) else {} for m in rendered]
    for k, m in enumerate(rendered):
        if isinstance(m, RenderError):
            outcomes[todo[k]] = Outcome(error=str(m), finished_at=time.time())
    callable_rows = [k for k, m in enumerate(rendered) if not isinstance(m, RenderError)]
    dedup = plan(requests, callable_rows) if job.dedup else DedupPlan(tuple(callable_rows), {}, {})
    refs = [_ref_from(d) for d in submitted.refs]
    lines = _wait_and_read(job, refs, options, coord, handle.draining, ids.digest)
    retry_sync: list[int] = []
    for k in dedup.leaders:
        line = lines.get(_custom_id(ids, todo[k]))
        if line is None or (line.resubmit and options.retry == "sync"):
            retry_sync.append(k)
        else:
            _store(outcomes, todo, dedup, k, _outcome(line))
    if retry_sync and not handle.draining.is_set():
        run_rows(requests, retry_sync, job, lambda k, outcome: _store(outcomes, todo, dedup, k, outcome),
                 limiter_for(job.budget, coord), handle=handle)  # fmt: skip


def _store(outcomes: dict[int, Outcome], todo: list[int], dedup: DedupPlan, k: int, outcome: Outcome) -> None:
    outcomes[todo[k]] = outcome
    for j in dedup.followers.get(k, ()):
        outcomes[todo[j]] = reused(outcome)


def _outcome(line: LineResult) -> Outcome:
    return Outcome(
        text=line.text if line.ok else None,
        error=None if line.ok else (line.error or "the batch did not answer this row"),
        prompt_tokens=line.prompt_tokens,
        completion_tokens=line.completion_tokens,
        attempts=line.attempts,
        finished_at=time.time(),
    )


def _wait_and_read(
    job: Job, refs: list[BatchRef], options: BatchAPI, coord: Coordinator, stop: threading.Event, partition_key: str
) -> dict[str, LineResult]:
    """Poll until every batch ended (follow-ups included), then read the lines."""
    out: dict[str, LineResult] = {}
    channel = job.progress
    rounds = 1 + (options.max_follow_ups if options.retry == "batch" else 0)
    current = refs
    for round_ in range(rounds):
        states = _poll_until_done(job, current, options, coord, stop)
        if stop.is_set():
            return out
        again: list[tuple[str, dict[str, Any]]] = []
        for state in states:
            for custom_id, line in results(job.endpoint, state, options).items():
                before = out.get(custom_id)
                if before is not None and before.ok:
                    continue  # answered by an earlier batch of a re-attached run: it stands
                out[custom_id] = replace(line, attempts=line.attempts + (before.attempts if before else 0))
        if options.retry != "batch" or round_ == rounds - 1:
            break
        bodies = _bodies_of(job, states)
        again = [(c, bodies[c]) for c, line in out.items() if line.resubmit and c in bodies]
        if not again:
            break
        meta = {**_metadata(job, partition_key), "dask_llm_follow_up": str(round_ + 1)}
        current = submit(job.endpoint, again, metadata=meta, options=options)
        _record(job, current)
        if channel is not None:
            coord.publish(channel.topic, {"batches": len(current), "batch_requests": sum(r.rows for r in current)})
    return out


def _bodies_of(job: Job, states: list[BatchState]) -> dict[str, dict[str, Any]]:
    """The request bodies of the batches' lines, for a follow-up: from
    their input files (the provider keeps them)."""
    from .._batchapi._results import _read

    bodies: dict[str, dict[str, Any]] = {}
    for state in states:
        for record in _read(job.endpoint, state.ref.input_file_id, job.batch or BatchAPI(), lambda r: r):
            if isinstance(record, dict) and "custom_id" in record:
                bodies[record["custom_id"]] = record.get("body") or {}
    return bodies


def _poll_until_done(
    job: Job, refs: list[BatchRef], options: BatchAPI, coord: Coordinator, stop: threading.Event
) -> list[BatchState]:
    channel = job.progress
    current = list(refs)
    done: dict[int, BatchState] = {}
    completed = [0] * len(current)
    while True:
        for i, ref in enumerate(current):
            if i in done:
                continue
            state = poll(job.endpoint, ref)
            state.raise_if_invalid()
            if state.token_limited:
                new = resubmit(job.endpoint, ref, options=options, should_stop=stop.is_set)
                if new is None:
                    return list(done.values())
                current[i] = new
                _record(job, [new])
                continue
            if state.completed > completed[i] or state.terminal:
                _record(job, [current[i]], state)
                if channel is not None:
                    coord.publish(channel.topic, {"batch_completed": state.completed - completed[i]})
                completed[i] = state.completed
            if state.terminal:
                done[i] = state
                if channel is not None:
                    coord.publish(channel.topic, {"batches_done": 1})
        if len(done) == len(current) or stop.wait(options.poll_interval):
            return [done[i] for i in sorted(done)]
