"""Batches on the provider: create them, find them again, watch them, cancel them.

``submit`` uploads input files and creates their batches, each when the
enqueued-token ledger (:mod:`._capacity`) has room for it; ``wait`` polls
until every batch has ended, sends again those refused for the token limit,
and raises :class:`BatchValidationError` for one whose input was refused;
``find`` lists the account's batches for those whose metadata matches, so a
re-run without a checkpoint attaches to its batches instead of paying twice.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import openai

from .._config import Endpoint
from .._errors import ConfigError
from . import _capacity as capacity
from ._calls import Stop, call, never, pause
from ._config import BatchAPI
from ._files import InputFile, batch_url, build_files, upload
from ._refs import FILE, MODEL, ROWS, SUBMIT, TOKENS, BatchRef, BatchState, check_metadata, state_from

__all__ = ["cancel", "find", "poll", "resubmit", "submit", "wait"]

#: How far back :func:`find` looks by default: a week of batches.
FIND_MAX_AGE = 7 * 86_400.0
#: Pages of the batch list :func:`find` reads at most (100 batches each).
FIND_MAX_PAGES = 200
#: Longest wait between two sends of a batch refused again and again for the token limit.
MAX_REFUSED_BACKOFF = 600.0
# Batches looked at for a lost create: a create is the newest batch, or nearly.
_RECOVER_LOOKBACK = 20


def submit(
    endpoint: Endpoint,
    items: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    metadata: Mapping[str, str],
    options: BatchAPI,
    should_stop: Stop = never,
) -> list[BatchRef]:
    """Upload the requests as batch input files and create a batch for each.

    Files are split by :class:`BatchAPI`'s limits (and, once it is known, so
    that one file fits the enqueued-token limit). Each batch is created only
    when this process's own unfinished batches of its model leave room for
    it under the limit: until then this waits, looking at them every
    ``poll_interval``.

    Parameters
    ----------
    endpoint : Endpoint
        A resolved endpoint (OpenAI, Azure, or a server with the Batch API).
    items : iterable of (str, dict)
        ``(custom_id, body)``: chat-completions request bodies.
    metadata : dict of str to str
        Set on every batch (at most 11 keys): identifies the run and the
        partition, for :func:`find`. dask-llm adds its own
        (``dask_llm_rows``, ``dask_llm_file`` = ``"<i>/<n>"``,
        ``dask_llm_tokens``, ``dask_llm_model``, ``dask_llm_submit``).
    options : BatchAPI
    should_stop : callable
        Ends a wait for room.

    Returns
    -------
    list of BatchRef
        One per file created. If ``should_stop`` said stop, the ones created
        so far: requests in none of them were not sent.

    Raises
    ------
    ConfigError
        Bad items or metadata, before anything is sent.
    EndpointError
        An upload or a create failed for good.
    """
    base = check_metadata(metadata)
    deployment = endpoint.azure_deployment if endpoint.is_azure else None
    files = build_files(
        items,
        options,
        url=batch_url(endpoint),
        deployment=deployment,
        max_tokens=lambda model: capacity.file_cap(endpoint, model, options.enqueued_token_limit),
    )
    refs: list[BatchRef] = []
    for number, file in enumerate(files, start=1):
        meta = {
            **base,
            ROWS: str(file.rows),
            FILE: f"{number}/{len(files)}",
            TOKENS: str(file.tokens),
            MODEL: file.model[:512],
        }
        ref = _send(endpoint, file, meta, options, should_stop)
        if ref is None:
            break
        refs.append(ref)
    return refs


def _send(
    endpoint: Endpoint, file: InputFile, meta: dict[str, str], options: BatchAPI, should_stop: Stop
) -> BatchRef | None:
    key = _reserve(endpoint, file.model, file.tokens, options, should_stop)
    if key is None:
        return None
    try:
        file_id = upload(endpoint, file, f"dask-llm-{uuid.uuid4().hex[:12]}.jsonl", options, should_stop)
        if file_id is None:
            capacity.release(endpoint, file.model, key)
            return None
        batch = _create(endpoint, file_id, meta, options, should_stop)
    except BaseException:
        capacity.release(endpoint, file.model, key)
        raise
    capacity.rename(endpoint, file.model, key, batch.id)
    return BatchRef(
        batch_id=batch.id,
        input_file_id=file_id,
        model=file.model,
        rows=file.rows,
        tokens=file.tokens,
        metadata=dict(batch.metadata or meta),
        custom_ids=file.custom_ids,
    )


def _reserve(endpoint: Endpoint, model: str, tokens: int, options: BatchAPI, should_stop: Stop) -> str | None:
    def refresh(batch_ids: list[str]) -> None:
        for batch_id in batch_ids:
            batch = call(endpoint, "polling a batch", functools.partial(_retrieve_or_none, batch_id=batch_id))
            if batch is None:
                # Gone (deleted, or another account's): it holds nothing, and must not block the queue forever.
                capacity.release(endpoint, model, batch_id)
            else:
                _account(endpoint, state_from(batch))

    return capacity.reserve(
        endpoint,
        model,
        tokens,
        options.enqueued_token_limit,
        refresh=refresh,
        interval=options.poll_interval,
        should_stop=should_stop,
    )


def _retrieve_or_none(client: Any, batch_id: str) -> Any:
    try:
        return client.batches.retrieve(batch_id)
    except openai.NotFoundError:
        return None


def _create(endpoint: Endpoint, file_id: str, meta: dict[str, str], options: BatchAPI, should_stop: Stop) -> Any:
    nonce = uuid.uuid4().hex
    meta = {**meta, SUBMIT: nonce}
    # The client's type names only the /v1 endpoints; Azure's has none.
    url = cast(Any, batch_url(endpoint))

    def create(client: Any) -> Any:
        return client.batches.create(
            input_file_id=file_id, endpoint=url, completion_window=cast(Any, options.completion_window), metadata=meta
        )

    def recover(client: Any) -> Any:
        # A create whose answer was lost may have made a batch: find it by its nonce, not make another.
        page = client.batches.list(limit=_RECOVER_LOOKBACK)
        return next((b for b in page.data if (b.metadata or {}).get(SUBMIT) == nonce), None)

    return call(endpoint, "creating a batch", create, should_stop=should_stop, recover=recover)


def resubmit(endpoint: Endpoint, ref: BatchRef, *, options: BatchAPI, should_stop: Stop = never) -> BatchRef | None:
    """Create ``ref``'s batch again from its input file (already uploaded), once there is room.

    Returns
    -------
    BatchRef or None
        The new batch (same file, rows and metadata); ``None`` if the run is stopping.
    """
    key = _reserve(endpoint, ref.model, ref.tokens, options, should_stop)
    if key is None:
        return None
    try:
        meta = {k: v for k, v in ref.metadata.items() if k != SUBMIT}
        batch = _create(endpoint, ref.input_file_id, meta, options, should_stop)
    except BaseException:
        capacity.release(endpoint, ref.model, key)
        raise
    capacity.rename(endpoint, ref.model, key, batch.id)
    return replace(ref, batch_id=batch.id, metadata=dict(batch.metadata or meta))


def poll(endpoint: Endpoint, ref: BatchRef) -> BatchState:
    """Look at a batch once.

    An unfinished batch is counted in the enqueued-token ledger (a batch
    found again, or polled from a checkpoint, holds room too); an ended one
    leaves it.
    """
    batch = call(endpoint, "polling a batch", lambda client: client.batches.retrieve(ref.batch_id))
    state = state_from(batch, ref)
    _account(endpoint, state)
    return state


def _account(endpoint: Endpoint, state: BatchState) -> None:
    ref = state.ref
    if not state.terminal:
        capacity.track(endpoint, ref.model, ref.batch_id, ref.tokens)
        return
    capacity.release(endpoint, ref.model, ref.batch_id)
    if state.status == "completed" and state.failed == 0 and state.input_tokens:
        # Every line ran, so the billed prompt tokens are the whole file's: the estimate's error.
        capacity.calibrate(endpoint, ref.model, ref.tokens, state.input_tokens)


def wait(
    endpoint: Endpoint,
    refs: Sequence[BatchRef],
    *,
    options: BatchAPI,
    should_stop: Stop = never,
    on_resubmit: Callable[[BatchRef, BatchRef], None] | None = None,
) -> list[BatchState]:
    """Poll the batches every ``poll_interval`` until each has ended, or ``should_stop()``.

    A batch refused for the enqueued-token limit is created again from the
    same input file once there is room (learning the limit when
    :class:`BatchAPI` gives none); ``on_resubmit(old, new)`` is told, so a
    checkpoint can record the new id.

    Returns
    -------
    list of BatchState
        In the order of ``refs`` (a resubmitted batch under its new ref).
        All ended, unless ``should_stop`` said stop: then the last states seen.

    Raises
    ------
    BatchValidationError
        A batch's input was refused: every line would fail alike.
    ConfigError
        A batch is larger than the enqueued-token limit allows a batch to be.
    """
    current = list(refs)
    states: list[BatchState | None] = [None] * len(current)
    refusals = [0] * len(current)
    while True:
        for i, ref in enumerate(current):
            state = states[i]
            if state is not None and state.terminal:
                continue
            state = states[i] = poll(endpoint, ref)
            state.raise_if_invalid()
            if not state.token_limited:
                continue
            refusals[i] += 1
            new = _after_refusal(endpoint, state, refusals[i], options, should_stop)
            if new is None:
                return _as_seen(states, current)
            # As created: validating. The next round of polls looks at it.
            current[i], states[i] = new, BatchState(ref=new, status="validating")
            if on_resubmit is not None:
                on_resubmit(ref, new)
        if all(state is not None and state.terminal for state in states):
            return [cast(BatchState, state) for state in states]
        if pause(options.poll_interval, should_stop):
            return _as_seen(states, current)


def _as_seen(states: list[BatchState | None], refs: list[BatchRef]) -> list[BatchState]:
    # A batch not looked at before the stop: nothing is known of it yet.
    return [s if s is not None else BatchState(ref=r, status="unknown") for s, r in zip(states, refs, strict=False)]


def _after_refusal(
    endpoint: Endpoint, state: BatchState, refusals: int, options: BatchAPI, should_stop: Stop
) -> BatchRef | None:
    ref = state.ref
    message = next((e.message for e in state.errors if e.code == "token_limit_exceeded"), "")
    # poll() has released the refused batch: what is still held is what it did not fit behind.
    queued = sum(capacity.pending(endpoint, ref.model).values())
    if options.enqueued_token_limit is None:
        capacity.learn(endpoint, ref.model, ref.tokens, queued, message)
    stated = capacity.parse_limit(message)
    ratio = capacity.learned(endpoint, ref.model)[1]
    # Only an estimate says the batch is too large: believe it once it was refused twice with nothing of ours ahead.
    if stated is not None and not queued and refusals >= 2 and ref.tokens * ratio > stated:
        raise ConfigError(
            f"batch {ref.batch_id} holds about {int(ref.tokens * ratio):,} prompt tokens, more than the "
            f"provider's enqueued-token limit for {ref.model} ({stated:,}): set "
            f"BatchAPI(enqueued_token_limit={stated}) so input files are split to fit"
        )
    if refusals > 1 or not queued:
        # Refused with nothing of ours queued (or again): other processes hold the room. Back off.
        delay = min(MAX_REFUSED_BACKOFF, options.poll_interval * 2 ** (refusals - 1))
        if pause(delay, should_stop):
            return None
    return resubmit(endpoint, ref, options=options, should_stop=should_stop)


def find(
    endpoint: Endpoint,
    metadata_match: Mapping[str, str],
    *,
    max_age: float = FIND_MAX_AGE,
    page_size: int = 100,
) -> list[BatchState]:
    """The account's batches whose metadata holds every key and value of ``metadata_match``.

    Lists batches newest first, ``page_size`` at a time, and stops at the
    first one created more than ``max_age`` seconds ago (or after
    :data:`FIND_MAX_PAGES` pages).

    Returns
    -------
    list of BatchState
        Newest first; each ``ref`` is rebuilt from the batch's metadata
        (its ``custom_ids`` are unknown: :func:`results` reads them from the input file).
    """
    if not metadata_match:
        raise ConfigError("find() needs at least one metadata key to match")
    if not 1 <= page_size <= 100:
        raise ConfigError(f"find(page_size=...) must be between 1 and 100, got {page_size}")
    horizon = time.time() - max_age
    found: list[BatchState] = []
    after: str | None = None
    for _ in range(FIND_MAX_PAGES):
        kwargs: dict[str, Any] = {"limit": page_size}
        if after is not None:
            kwargs["after"] = after
        page = call(endpoint, "listing batches", functools.partial(_list_batches, kwargs=dict(kwargs)))
        for batch in page.data:
            if batch.created_at < horizon:
                return found
            metadata = batch.metadata or {}
            if all(metadata.get(key) == value for key, value in metadata_match.items()):
                found.append(state_from(batch))
        if not page.has_more or not page.data:
            break
        after = page.data[-1].id
    return found


def cancel(endpoint: Endpoint, refs: Sequence[BatchRef]) -> list[BatchState]:
    """Ask the provider to cancel the batches; those already ended are left as they are.

    A cancelled batch keeps the lines it answered (they are billed): wait
    for it to reach ``cancelled`` and take its :func:`results`.

    Returns
    -------
    list of BatchState
        Each batch as the cancel left it (``cancelling``, or already ended).
    """
    states = []
    for ref in refs:

        def stop_it(client: Any, batch_id: str = ref.batch_id) -> Any:
            try:
                return client.batches.cancel(batch_id)
            except openai.ConflictError:
                # 409: it has already ended (or is cancelling); nothing to cancel.
                return client.batches.retrieve(batch_id)

        state = state_from(call(endpoint, "cancelling a batch", stop_it), ref)
        _account(endpoint, state)
        states.append(state)
    return states


def _list_batches(client: Any, kwargs: dict[str, Any]) -> Any:
    return client.batches.list(**kwargs)
