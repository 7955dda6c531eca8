"""Run one partition: rows -> budgeted, retried calls -> result columns.

A partition is served by a pool of ``threads`` threads that pull row numbers
from a shared iterator, so at most ``threads`` requests exist at any time
whatever the partition's size. Each thread holds one budget lease for its
whole run of rows.

What stops a partition early:

- an endpoint-wide failure (bad credentials, unknown model, nothing
  answering for several consecutive rows): one clear :class:`EndpointError`
  instead of a column full of identical errors;
- with ``on_error="raise"``, the first row that fails after its retries
  (the calls in flight get a grace to finish: they are paid for either way).

Every other failure is data: the row's error column says what happened.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from .._budget._limiter import Limiter
from .._budget._process import limiter_for
from .._calls._breaker import breaker_for
from .._calls._client import Failure, Kind, classify, complete
from .._checkpoint import FIELDS, DatasetClaims, PartitionCheckpoint
from .._coordination import Coordinator
from .._coordination import current as current_coordinator
from .._coordination._client import connect
from .._core._dedup import DedupPlan, call_once, plan, request_key, reused
from .._core._prompt import RenderError
from .._core._schema import OutputColumns
from .._core._structured import InvalidAnswer
from .._core._tokens import DEFAULT_COMPLETION_ESTIMATE, estimate_prompt_tokens, estimate_request_tokens
from .._cost._cache import CachedAnswer
from .._cost._spend import SpendCounter, SpendGate, counter_for
from .._errors import (
    AuthenticationError,
    EndpointError,
    EndpointUnreachableError,
    ModelNotFoundError,
    RowError,
)
from ._job import Job, Outcome
from ._progress import Cancelled, calling, partition_progress
from ._stopping import STOP_GRACE, Stoppable, running, task_released

__all__ = ["Batch", "enrich_batch", "run_rows", "to_columns"]

#: What an engine hands over: a pandas frame, or Arrow (Spark's mapInArrow).
Batch = TypeVar("Batch", pd.DataFrame, pa.Table, pa.RecordBatch)

#: Consecutive rows that failed to connect at all before the endpoint is
#: declared unreachable (fewer when the partition is smaller).
UNREACHABLE_AFTER = 5


def enrich_batch(
    batch: Batch,
    job: Job,
    coordinator: Coordinator | None = None,
    number: int = 0,
    limiter: Limiter | None = None,
    part: str | None = None,
) -> Batch:
    """A batch of rows with the output columns of ``job`` appended: the one
    engine-free step every engine maps over its partitions.

    Parameters
    ----------
    batch : pandas.DataFrame or pyarrow.Table or pyarrow.RecordBatch
        The rows; the result is of the same kind, every row and column kept,
        in order, with the output columns after them.
    job : Job
        What to ask, and how (travels to the workers by value).
    coordinator : Coordinator, optional
        The job's coordinator (budget, spend cap, progress); default: the
        one of the calling thread (the scheduler in a Dask worker's task,
        this process otherwise).
    number : int
        The partition's number, to name its checkpoint file (never to key it).
    part : str, optional
        The batch's label in the run's progress (default: ``number``): a
        batch run again (a restarted task) replaces its earlier counts.
    limiter : Limiter, optional
        A request limiter instead of the budget's (tests, benchmarks).

    Notes
    -----
    With a checkpoint, rows it already holds (by row identity, whatever the
    partitioning) are not called again, finished rows are journaled as they
    come, and the result is committed at the end.
    """
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        return pa.Table.from_pandas(
            enrich_batch(batch.to_pandas(), job, coordinator, number, limiter, part), preserve_index=False
        )
    frame = batch
    if coordinator is None:
        coordinator = connect(job.coordinator) if job.coordinator is not None else current_coordinator()
    label = part if part is not None else str(number)
    # Registered as running before anything else: a stop that comes while
    # the partition reads the ledger or renders its prompts reaches it too
    # (a partition that missed it would go on calling after the run ended).
    with running(job.progress.topic if job.progress is not None else None) as handle:
        # Checkpoint: rows already paid for are restored, not called.
        ckpt = job.checkpoint
        if ckpt is None:
            return _enrich(frame, job, coordinator, None, limiter, label, handle)
        claims = claims_of(coordinator, ckpt.epoch)
        saved = ckpt.partition(frame, job.prompt.columns, key=job.key, share_content=job.dedup,
                               partition_info={"number": number}, claims=claims, part=label,
                               outputs=job.outputs.by_field, output_columns=list(job.outputs.dtypes))  # fmt: skip
        if not saved.todo:
            return _enrich(frame, job, coordinator, saved, limiter, label, handle)
        if _wait_for_lease(coordinator, saved.key, handle):
            # Another copy of these rows (a speculative task, a second action)
            # ran meanwhile: what it paid for is in the ledger now.
            saved = ckpt.partition(frame, job.prompt.columns, key=job.key, share_content=job.dedup,
                                   partition_info={"number": number}, claims=claims, part=label)  # fmt: skip
        try:
            return _enrich(frame, job, coordinator, saved, limiter, label, handle)
        finally:
            coordinator.call("partition_release", key=saved.key)


def claims_of(coordinator: Coordinator, epoch: str) -> DatasetClaims:
    """The run's claims on earlier runs' dataset files, answered by its coordinator."""
    return DatasetClaims(epoch, coordinator.call)


#: Seconds between two asks for a partition another copy is running.
LEASE_POLL = 0.5


def _wait_for_lease(coordinator: Coordinator, key: str, handle: Stoppable) -> bool:
    """Take the partition's lease on the coordinator, waiting while another
    process runs the same rows; whether it had to wait."""
    waited = False
    while not coordinator.call("partition_lease", key=key):
        waited = True
        if handle.draining.wait(LEASE_POLL):
            raise Cancelled(f"run stopped: {handle.reason}")
    return waited


def _enrich(
    frame: pd.DataFrame,
    job: Job,
    coordinator: Coordinator,
    saved: PartitionCheckpoint | None,
    limiter: Limiter | None,
    part: str,
    handle: Stoppable,
) -> pd.DataFrame:
    n = len(frame)
    todo = saved.todo if saved is not None else list(range(n))
    # A no-op without a progress channel.
    earlier, resumed, resumed_errors = saved.restored_by_run() if saved is not None else (0, 0, 0)
    report = partition_progress(job.progress, coordinator, restored=earlier, part=part, size=n,
                                resumed=(resumed, resumed_errors))  # fmt: skip
    if saved is not None and saved.complete:
        with report:
            result = _result(frame, job.outputs, saved.records, saved.stored_outputs)
        saved.finish()
        return result

    # Prompts only for the rows to call: a resume renders nothing else. A row
    # whose prompt cannot be rendered gets that as its error, without a call.
    rendered = job.prompt.render(frame.iloc[todo]) if len(todo) < n else job.prompt.render(frame)
    outcomes: dict[int, Outcome] = {}  # by position in the partition
    unrenderable = [k for k, m in enumerate(rendered) if isinstance(m, RenderError)]
    for k in unrenderable:
        outcomes[todo[k]] = Outcome(error=str(rendered[k]), finished_at=time.time())
    if unrenderable and job.on_error == "raise":
        label = frame.index[todo[unrenderable[0]]]
        raise RowError(f"row {label!r} failed: {rendered[unrenderable[0]]}", row=label)
    callable_rows = [k for k, m in enumerate(rendered) if not isinstance(m, RenderError)]
    requests = [job.request(m) if not isinstance(m, RenderError) else {} for m in rendered]

    # De-duplication: one leader per distinct request is called; its
    # followers get its outcome as it arrives.
    dedup: DedupPlan = plan(requests, callable_rows) if job.dedup else DedupPlan(tuple(callable_rows), {}, {})
    spend = counter_for(job.spend_cap, coordinator) if job.spend_cap is not None else None

    # The journal closes (saving finished rows) before the report and the
    # stop handle (the caller's) do, so a partition that no longer counts as
    # running (for progress, or for a stop that waits) has nothing left unsaved.
    with (
        report,
        saved.journal() if saved is not None else contextlib.nullcontext() as journal,
    ):
        for k in unrenderable:
            if journal is not None:
                journal.add(todo[k], outcomes[todo[k]])
            report.row(outcomes[todo[k]])

        def store(k: int, outcome: Outcome) -> None:
            for j in (k, *dedup.followers.get(k, ())):
                row = todo[j]
                outcomes[row] = outcome if j == k else reused(outcome)
                if journal is not None and not outcome.not_called:
                    journal.add(row, outcomes[row])
            # Counted once every row of the call is stored: after Ctrl+C this
            # raises Cancelled, which stops the pool like any error.
            for j in (k, *dedup.followers.get(k, ())):
                report.row(outcomes[todo[j]])

        labels = frame.index[todo].tolist() if len(todo) < n else frame.index.tolist()
        limiter = limiter or limiter_for(job.budget, coordinator)
        run_rows(requests, dedup.leaders, job, store, limiter, labels=labels, spend=spend, handle=handle)
    fields = _fields(saved.records if saved is not None else None, outcomes, n)
    result = _result(frame, job.outputs, fields)
    # A partition with rows left by the spend cap stays uncommitted (its
    # finished rows are journaled), so that a later run calls the rest.
    if saved is not None and not any(o.not_called for o in outcomes.values()):
        saved.commit(result, fields)
        saved.finish()
    return result


def _fields(restored: pd.DataFrame | None, outcomes: Mapping[int, Outcome], n: int) -> pd.DataFrame:
    """The stored fields of every row, by position: restored ones, with the
    outcomes of the rows called laid over them."""
    if restored is None:
        restored = pd.DataFrame({name: pd.array([None] * n, dtype=_NULLABLE[dtype]) for name, dtype in FIELDS.items()})
    else:
        restored = restored.copy()
    if outcomes:
        rows = np.fromiter(outcomes, dtype=np.int64, count=len(outcomes))
        values = list(outcomes.values())
        for name in FIELDS:
            column = restored[name].copy()
            column.iloc[rows] = pd.array([getattr(o, name) for o in values], dtype=column.dtype)
            restored[name] = column
    return restored


#: Nullable dtype of each stored field while rows are being filled in.
_NULLABLE = {"string": "string", "Int64": "Int64", "int64": "Int64", "float64": "Float64"}


def _result(
    frame: pd.DataFrame, cols: OutputColumns, fields: pd.DataFrame, stored: pa.Table | None = None
) -> pd.DataFrame:
    """``frame`` with the output columns made from ``fields``, fixed dtypes
    (the typed columns of ``output=`` from ``stored``, the output columns
    as a checkpoint's dataset files hold them, when given)."""
    out = {}
    for name, column in cols.by_field.items():
        values = fields[name]
        dtype = cols.dtypes[column]
        if dtype in ("int64", "float64"):
            values = values.to_numpy(dtype=dtype, na_value=np.nan if dtype == "float64" else 0)
        out[column] = pd.array(values, dtype=dtype)
    outputs = pd.DataFrame(out, index=frame.index)
    if cols.structured is not None:
        typed = cols.structured.from_arrow(stored, frame.index) if stored is not None else None
        if typed is None:
            # Typed columns are parsed from the raw answer of each successful row.
            ok = fields["error"].isna().to_numpy()
            texts = [t if good else None for t, good in zip(fields["text"].tolist(), ok, strict=False)]
            typed = cols.structured.to_columns(texts, frame.index)
        outputs = pd.concat([outputs, typed], axis=1)
    return pd.concat([frame, outputs], axis=1)


def to_columns(outcomes: Sequence[Outcome], cols: OutputColumns, index: pd.Index) -> pd.DataFrame:
    """Outcomes as the output columns, with the fixed dtypes."""
    fields = _fields(None, dict(enumerate(outcomes)), len(outcomes))
    return _result(pd.DataFrame(index=index), cols, fields)


def run_rows(
    requests: Sequence[dict[str, Any]],
    rows: Sequence[int],
    job: Job,
    on_outcome: Callable[[int, Outcome], None],
    limiter: Limiter,
    labels: Sequence[Any] | None = None,
    spend: SpendCounter | None = None,
    handle: Stoppable | None = None,
) -> None:
    """Call the model for ``requests[i]`` for each ``i`` in ``rows``, with
    ``job.threads`` threads, and hand every outcome to ``on_outcome(i, outcome)``
    (from the thread that made the call) as soon as it is known.

    ``handle`` is how the pool is stopped (see :func:`~._stopping.running`):
    the caller's, when it must count as running until it has saved the
    outcomes too; by default one of the pool's own.

    Raises the first endpoint-wide error, or with ``on_error="raise"`` the
    first :class:`RowError`; the outcomes handed over before it stand.
    """
    if not rows:
        return
    pool = _Pool(requests, rows, job, on_outcome, limiter, labels, spend)
    if handle is not None:
        pool.run(handle)
        return
    with running(job.progress.topic if job.progress is not None else None) as own:
        pool.run(own)


class _Pool:
    """The threads of one partition and what they share: the row iterator,
    the stop event, the first error, and the endpoint's breaker."""

    def __init__(
        self,
        requests: Sequence[dict[str, Any]],
        rows: Sequence[int],
        job: Job,
        on_outcome: Callable[[int, Outcome], None],
        limiter: Limiter,
        labels: Sequence[Any] | None,
        spend: SpendCounter | None = None,
    ) -> None:
        self.requests = requests
        self.job = job
        self.on_outcome = on_outcome
        self.limiter = limiter
        self.labels = labels
        self.n_threads = max(1, min(job.threads, len(rows)))
        self.topic = job.progress.topic if job.progress is not None else None
        self.unreachable_after = min(UNREACHABLE_AFTER, len(rows))
        self._rows = iter(rows)
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._connect_streak = 0
        self.breaker = breaker_for(job.endpoint, job.run_id)
        self._handle: Stoppable | None = None
        # Set when the pool stops: _draining at once (no new call or wait),
        # _stop after a grace (cuts the calls in flight); see _stopping.
        self._draining = threading.Event()
        self._stop = threading.Event()
        self.spend = SpendGate(job.spend_cap, spend, job.price, self._draining)

    def run(self, handle: Stoppable) -> None:
        self._handle = handle
        self._draining, self._stop = handle.draining, handle.stop
        self.spend.stop = handle.draining
        threads = [
            threading.Thread(target=self._work, name=f"dask-llm-{k}", daemon=True) for k in range(self.n_threads)
        ]
        for t in threads:
            t.start()
        try:
            # Short joins keep the calling thread responsive to Ctrl+C
            # and to a task that the cluster no longer wants.
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
                    if task_released():
                        handle.request_stop("the task was cancelled")
        except BaseException:
            handle.request_stop("interrupted")
            _join_briefly(threads, STOP_GRACE + 1.0)
            raise
        if self._error is not None:
            raise self._error
        if handle.reason is not None:
            # Stopped from outside: the rows not called are left for the next run.
            raise Cancelled(f"run stopped: {handle.reason}")

    def _next_row(self) -> int | None:
        with self._lock:
            if self._draining.is_set():
                return None
            return next(self._rows, None)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        # An endpoint-wide error: every call in flight would fail alike, cut
        # them now. Anything else (a failed row with fail-fast, a cancelled
        # run): they may finish and be kept, since the provider bills them
        # either way.
        grace = 0.0 if isinstance(exc, EndpointError) else STOP_GRACE
        if self._handle is not None:
            self._handle.request_stop(type(exc).__name__, grace)
        else:
            self._draining.set()
            self._stop.set()

    def _work(self) -> None:
        rng = random.Random()
        try:
            with self.limiter.lease(self.n_threads):
                while (i := self._next_row()) is not None:
                    outcome = self._reuse_or_call(self.requests[i], rng)
                    if outcome is None:
                        return  # stopped while calling: the row is left for the next run
                    self._settle_row(i, outcome)
        except BaseException as exc:  # handed to the calling thread by run()
            self._fail(exc)

    def _reuse_or_call(self, request: dict[str, Any], rng: random.Random) -> Outcome | None:
        """The row's outcome from the response cache, an identical call of
        another partition in this process, or a call of its own (``None``:
        the pool stopped first)."""
        job = self.job
        if job.cache is None and not job.dedup:
            return self._call(request, rng)
        return call_once(
            request_key(request),
            lambda: self._call(request, rng),
            ok=lambda o: o is not None and o.ok,
            share=job.run_id if job.dedup else None,
            cache=job.cache,
            from_cache=lambda hit: Outcome(
                text=hit.text, prompt_tokens=0, completion_tokens=0, attempts=0, latency=0.0, finished_at=time.time()
            ),
            to_cache=_cached,
            stop=self._draining,
        )

    def _call(self, request: dict[str, Any], rng: random.Random) -> Outcome | None:
        job, limiter, retry = self.job, self.limiter, self.job.retry
        reserve = estimate_request_tokens(request)
        # The spend cap counts what is billed: the prompt, and at most
        # max_tokens (or the default guess) of answer.
        cap = request.get("max_completion_tokens") or request.get("max_tokens")
        spend_estimate = (estimate_prompt_tokens(request["messages"]), int(cap or DEFAULT_COMPLETION_ESTIMATE))
        structured = job.outputs.structured
        start = time.monotonic()
        calls = 0  # attempts made, 429s included
        failures = 0  # attempts that count toward max_attempts (not 429s)
        # Billed over every answered attempt: an invalid answer costs as much as a good one.
        billed_prompt = billed_completion = 0
        usage_seen = False
        rate_limited = 0
        limited_streak = 0
        waited_for_limits = 0.0

        def outcome(**fields: Any) -> Outcome:
            billed = (
                {"prompt_tokens": billed_prompt, "completion_tokens": billed_completion}
                if usage_seen else {"prompt_tokens": None, "completion_tokens": None}
            )  # fmt: skip
            latency = time.monotonic() - start if calls else math.nan
            return Outcome(**billed, attempts=calls, latency=latency, rate_limited=rate_limited,
                           finished_at=time.time(), **fields)  # fmt: skip

        while True:
            self.breaker.check()
            if self._draining.is_set():
                return None
            charge = self.spend.reserve(*spend_estimate)
            if charge is None:
                return None if self._draining.is_set() else outcome(error=self.spend.exhausted_message())
            if not limiter.acquire(reserve, self._draining):
                self.spend.settle(charge, None, None)
                return None
            calls += 1
            try:
                with calling(self.topic):
                    answer = complete(job.endpoint, request, self._stop)
            except Exception as exc:
                self.spend.settle(charge, None, None)
                failure = classify(exc, job.endpoint.timeout)
            else:
                self.spend.settle(charge, answer.prompt_tokens, answer.completion_tokens)
                counted = _counted_tokens(request, answer.prompt_tokens, answer.completion_tokens, reserve)
                limiter.settle(reserve, counted)
                limiter.observe(answer.headers)
                self.breaker.success()
                billed_prompt += answer.prompt_tokens or 0
                billed_completion += answer.completion_tokens or 0
                usage_seen = usage_seen or answer.prompt_tokens is not None or answer.completion_tokens is not None
                problem = None
                if structured is not None:
                    try:
                        structured.parse(answer.text)
                    except InvalidAnswer as exc:
                        problem = f"invalid structured answer: {exc}"
                if problem is not None:
                    failures += 1
                    if failures < retry.max_attempts and not self._draining.is_set():
                        continue  # the model misspoke: ask again at once, no back-off needed
                tries = f" (after {calls} attempts)" if calls > 1 else ""
                # The raw answer is kept when invalid: it explains the error.
                return outcome(text=answer.text, error=None if problem is None else problem + tries)
            limiter.settle(reserve, None)
            if failure.headers is not None:
                limiter.observe(failure.headers)
            if failure.kind is Kind.STOPPED:
                return None
            self._raise_if_endpoint_wide(failure)
            self.breaker.failure(failure)
            if failure.kind is Kind.RATE_LIMITED:
                # A wait, not a failure: every thread of the budget pauses, and
                # this row waits at least the provider's hint.
                rate_limited += 1
                limited_streak += 1
                hint = failure.retry_after
                # The pause every thread of the budget takes obeys the same cap as the row's own wait.
                limiter.penalize(None if hint is None else min(hint, retry.max_retry_after))
                wait = retry.rate_limit_delay(limited_streak, failure.retry_after, rng)
                if waited_for_limits + wait > retry.max_rate_limit_wait:
                    return outcome(
                        error=f"rate limited for {waited_for_limits:,.0f} s (RetryPolicy.max_rate_limit_wait "
                        f"{retry.max_rate_limit_wait:g} s), {rate_limited} answers 429; last: {failure.message}"
                    )
                waited_for_limits += wait
                if self._draining.wait(wait):
                    return None
                continue
            limited_streak = 0
            failures += 1
            give_up = not failure.retryable or failures >= retry.max_attempts
            if give_up or self._draining.wait(retry.delay(failures, failure.retry_after, rng)):
                if not give_up:
                    return None  # stopped while backing off
                tries = f" (after {calls} attempts)" if calls > 1 else ""
                return outcome(error=failure.message + tries, could_not_connect=failure.kind is Kind.CONNECTION)

    def _raise_if_endpoint_wide(self, failure: Failure) -> None:
        where = self.job.endpoint.display_url
        if failure.kind is Kind.AUTH:
            raise AuthenticationError(
                f"{where} refused the request: {failure.message.rstrip('.')}. Check the API key "
                f"(the one passed, else OPENAI_API_KEY) and the account's quota."
            )
        if failure.kind is Kind.NOT_FOUND:
            raise ModelNotFoundError(
                f"{where} answered 404 for model {self.job.model!r}: {failure.message.rstrip('.')}. "
                f"Check the model (or Azure deployment) name and the base URL."
            )

    def _settle_row(self, i: int, outcome: Outcome) -> None:
        if self._draining.is_set() and not outcome.ok:
            return  # cut short because the pool is stopping
        with self._lock:
            self._connect_streak = self._connect_streak + 1 if outcome.could_not_connect else 0
            unreachable = self._connect_streak >= self.unreachable_after
        if unreachable:
            raise EndpointUnreachableError(
                f"cannot reach {self.job.endpoint.display_url}: {self._connect_streak} "
                f"consecutive rows failed to connect, {self.job.retry.max_attempts} attempts "
                f"each; last error: {outcome.error}"
            )
        self.on_outcome(i, outcome)
        if not outcome.ok and self.job.on_error == "raise":
            label = self.labels[i] if self.labels is not None else i
            raise RowError(f"row {label!r} failed: {outcome.error}", row=label)


def _cached(outcome: Outcome | None) -> CachedAnswer:
    """What the response cache keeps of a (successful) outcome."""
    assert outcome is not None and outcome.text is not None
    return CachedAnswer(outcome.text, outcome.prompt_tokens, outcome.completion_tokens)


def _join_briefly(threads: Sequence[threading.Thread], timeout: float) -> None:
    """Wait, at most ``timeout`` seconds, for stopped threads to hand over
    their last outcomes (calls in flight are cut short after the stop's
    grace; a thread still waiting on the cluster is left to end alone)."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def _counted_tokens(request: Mapping[str, Any], prompt: int | None, completion: int | None, reserved: int) -> int:
    """Tokens the provider counted against its TPM limit for an answer.

    Providers reserve ``max_tokens`` at admission and do not give back what
    the answer left unused (the simulator does the same), so a budget that
    refunded it would overrun the limit. Without ``usage``, the reservation
    stands.
    """
    if prompt is None and completion is None:
        return reserved
    cap = request.get("max_completion_tokens") or request.get("max_tokens")
    return (prompt or 0) + max(completion or 0, int(cap or 0))
