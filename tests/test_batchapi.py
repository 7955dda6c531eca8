"""The engine-free Batch API core against the simulator, over real HTTP with the real openai client.

Every test starts its own simulator on a free port; batches turn around in
well under two seconds and every wait is bounded by ``deadline()``.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from dask_llm._batchapi import (
    BatchAPI,
    BatchRef,
    BatchValidationError,
    LineStatus,
    build_files,
    cancel,
    find,
    poll,
    results,
    run,
    submit,
    wait,
)
from dask_llm._batchapi import _capacity as capacity
from dask_llm._batchapi._files import prompt_tokens as estimated_tokens
from dask_llm._batchapi._results import parse_line
from dask_llm._config import Endpoint
from dask_llm._errors import AuthenticationError, ConfigError, EndpointError, ModelNotFoundError
from dask_llm.simulator import Simulator, SimulatorConfig, expected_answer, prompt_tokens

KEY = "batch-key"
FAST = BatchAPI(poll_interval=0.1)
Start = Callable[..., Simulator]


@pytest.fixture(autouse=True)
def fresh_ledger() -> Iterator[None]:
    """The enqueued-token ledger is per process and keyed by URL: a port used again must start clean."""
    yield
    with capacity._lock:
        capacity._pools.clear()


@pytest.fixture
def start() -> Iterator[Start]:
    """Start simulators (API key required) on free ports; all stop at teardown."""
    started: list[Simulator] = []

    def make(**fields: Any) -> Simulator:
        fields.setdefault("api_key", KEY)
        fields.setdefault("batch_turnaround", 0.5)
        sim = Simulator(SimulatorConfig(**fields)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def endpoint(sim: Simulator) -> Endpoint:
    return Endpoint(base_url=sim.url, api_key=KEY, timeout=10.0)


def deadline(seconds: float) -> Callable[[], bool]:
    """A ``should_stop`` that says stop after ``seconds``: no test waits longer."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Classify the ticket into one cloud service."},
        {"role": "user", "content": f"Batch ticket {i}: the bucket is gone!"},
    ]


def items(n: int, start: int = 0, model: str = "m", **params: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(f"row-{i}", {"model": model, "messages": messages(i), **params}) for i in range(start, start + n)]


def collect(ep: Endpoint, states: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for state in states:
        out.update(results(ep, state, FAST))
    return out


def sim_batch(sim: Simulator, batch_id: str) -> Any:
    client = openai.OpenAI(base_url=sim.url, api_key=KEY, max_retries=0)
    return client.batches.retrieve(batch_id)


def test_public_names() -> None:
    import dask_llm._batchapi as package

    assert sorted(package.__all__) == sorted(
        name
        for name in vars(package)
        if not name.startswith("_") and not isinstance(vars(package)[name], type(package))
    )
    assert all(getattr(package, name) is not None for name in package.__all__)


# --- options and input files, no server ----------------------------------------------------------


def test_options_are_validated_and_picklable() -> None:
    options = BatchAPI(poll_interval=0.5, enqueued_token_limit=90_000, retry="sync")
    assert pickle.loads(pickle.dumps(options)) == options and hash(options) == hash(options)
    assert (BatchAPI().completion_window, BatchAPI().poll_interval, BatchAPI().max_follow_ups) == ("24h", 30.0, 2)
    bad: list[dict[str, Any]] = [
        {"completion_window": "1d"},
        {"poll_interval": 0},
        {"poll_interval": float("nan")},
        {"max_requests_per_file": 0},
        {"max_bytes_per_file": True},
        {"retry": "later"},
        {"max_follow_ups": -1},
        {"enqueued_token_limit": 0},
        {"transfer_timeout": -1.0},
    ]
    for fields in bad:
        with pytest.raises(ConfigError, match=next(iter(fields))):
            BatchAPI(**fields)


def test_files_split_by_lines_bytes_and_tokens_and_group_by_model() -> None:
    requests = items(7) + items(2, start=7, model="other") + items(3, start=9)
    files = build_files(requests, BatchAPI(max_requests_per_file=4))
    assert [(f.model, f.rows) for f in files] == [("m", 4), ("m", 4), ("m", 2), ("other", 2)]
    order = [f"row-{i}" for i in (*range(7), *range(9, 12), 7, 8)]
    assert [cid for f in files for cid in f.custom_ids] == order
    first = [json.loads(line) for line in files[0].content.splitlines()]
    assert first[0] == {
        "custom_id": "row-0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": messages(0)},
    }
    assert files[0].tokens == sum(estimated_tokens(body) for _, body in requests[:4])

    # Bytes: never more than the limit, a line never split.
    line_bytes = len(build_files(items(1), BatchAPI())[0].content)
    by_bytes = build_files(items(10), BatchAPI(max_bytes_per_file=3 * line_bytes + 5))
    assert [f.rows for f in by_bytes] == [3, 3, 3, 1]
    assert all(len(f.content) <= 3 * line_bytes + 5 for f in by_bytes)
    # Tokens: a file fits the enqueued-token limit alone.
    per_line = estimated_tokens(items(1)[0][1])
    by_tokens = build_files(items(10), BatchAPI(), max_tokens=lambda model: 4 * per_line + 1)
    assert [f.rows for f in by_tokens] == [4, 4, 2]

    # Azure: no /v1, and the deployment is the model.
    azure = build_files(items(2), BatchAPI(), url="/chat/completions", deployment="gpt-batch")
    line = json.loads(azure[0].content.splitlines()[0])
    assert line["url"] == "/chat/completions" and line["body"]["model"] == "gpt-batch"

    with pytest.raises(ConfigError, match="twice"):
        build_files(items(2) + items(1), BatchAPI())
    with pytest.raises(ConfigError, match="max_bytes_per_file"):
        build_files(items(1), BatchAPI(max_bytes_per_file=50))
    with pytest.raises(ConfigError, match="no model"):
        build_files([("a", {"messages": []})], BatchAPI())


def test_lines_are_sorted_into_outcomes() -> None:
    ok = parse_line(
        {
            "custom_id": "a",
            "response": {
                "status_code": 200,
                "body": {
                    "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1},
                },
            },
            "error": None,
        }
    )
    assert ok is not None and ok.ok and (ok.text, ok.prompt_tokens, ok.completion_tokens) == ("hi", 5, 1)

    def failed(status: int) -> Any:
        body = {"error": {"message": f"status {status}", "code": None}}
        return parse_line({"custom_id": "b", "response": {"status_code": status, "body": body}, "error": None})

    assert [failed(s).status for s in (500, 503, 429, 408)] == [LineStatus.RETRYABLE] * 4
    assert [failed(s).status for s in (400, 404, 422)] == [LineStatus.FINAL] * 3
    assert failed(400).error == "HTTP 400: status 400" and not failed(400).resubmit
    expired = parse_line({"custom_id": "c", "response": None, "error": {"code": "batch_expired", "message": "late"}})
    assert expired is not None and expired.status is LineStatus.NOT_RUN and expired.resubmit and expired.attempts == 0
    empty = parse_line({"custom_id": "d", "response": {"status_code": 200, "body": {}}, "error": None})
    assert empty is not None and empty.status is LineStatus.RETRYABLE
    assert parse_line({"no": "id"}) is None


def test_metadata_is_checked_before_anything_is_sent(start: Start) -> None:
    sim = start()
    with pytest.raises(ConfigError, match="at most 11"):
        submit(endpoint(sim), items(1), metadata={f"k{i}": "v" for i in range(12)}, options=FAST)
    with pytest.raises(ConfigError, match="too long"):
        submit(endpoint(sim), items(1), metadata={"k": "v" * 513}, options=FAST)
    with pytest.raises(ConfigError, match="dask-llm's own"):
        submit(endpoint(sim), items(1), metadata={"dask_llm_rows": "1"}, options=FAST)
    assert sim.stats()["batch"]["files"] == 0


# --- against the simulator -----------------------------------------------------------------------


def test_round_trip_of_120_requests_across_files(start: Start) -> None:
    sim = start(batch_turnaround=0.5)
    ep = endpoint(sim)
    options = BatchAPI(poll_interval=0.1, max_requests_per_file=50)
    refs = submit(ep, items(120), metadata={"dask_llm_run": "r1", "dask_llm_part": "p1"}, options=options)
    assert [ref.rows for ref in refs] == [50, 50, 20]
    assert [ref.metadata["dask_llm_file"] for ref in refs] == ["1/3", "2/3", "3/3"]
    assert all(ref.metadata["dask_llm_run"] == "r1" and ref.metadata["dask_llm_rows"] == str(ref.rows) for ref in refs)
    assert pickle.loads(pickle.dumps(refs)) == refs

    states = wait(ep, refs, options=options, should_stop=deadline(10))
    assert [s.status for s in states] == ["completed"] * 3
    assert all(s.created_at is not None and s.ended_at is not None for s in states)
    lines = collect(ep, states)
    assert len(lines) == 120 and all(line.ok and line.attempts == 1 for line in lines.values())
    for i in (0, 57, 119):
        line = lines[f"row-{i}"]
        assert line.text == expected_answer(messages(i)) and line.prompt_tokens == prompt_tokens(messages(i))
        assert line.completion_tokens and line.finish_reason
    assert sim.stats()["batch"] == {
        "files": 3,
        "batches": 3,
        "by_status": {"completed": 3},
        "lines": 120,
        "line_failures": 0,
    }
    # The ended batches no longer hold room; their billed tokens calibrated the estimate.
    assert capacity.pending(ep, "m") == {}
    ratio = capacity.learned(ep, "m")[1]
    assert ratio == pytest.approx(prompt_tokens(messages(119)) / estimated_tokens(items(1, 119)[0][1]), rel=0.1)


def test_find_reattaches_by_metadata(start: Start) -> None:
    sim = start(batch_turnaround=0.5)
    ep = endpoint(sim)
    options = BatchAPI(poll_interval=0.1, max_requests_per_file=4)
    mine = submit(ep, items(10), metadata={"dask_llm_run": "run-a", "dask_llm_part": "p1"}, options=options)
    submit(ep, items(3, start=10), metadata={"dask_llm_run": "run-a", "dask_llm_part": "p2"}, options=options)
    submit(ep, items(3, start=20), metadata={"dask_llm_run": "run-b", "dask_llm_part": "p1"}, options=options)

    # A re-run without a checkpoint: a page of two at a time, so the cursor is followed.
    found = find(ep, {"dask_llm_run": "run-a", "dask_llm_part": "p1"}, page_size=2)
    assert [s.ref.batch_id for s in found] == [r.batch_id for r in reversed(mine)]
    for state, ref in zip(found, reversed(mine), strict=False):
        assert (state.ref.input_file_id, state.ref.rows, state.ref.tokens, state.ref.model) == (
            ref.input_file_id,
            ref.rows,
            ref.tokens,
            ref.model,
        )
        assert state.ref.custom_ids is None
    assert len(find(ep, {"dask_llm_run": "run-a"})) == 4
    assert find(ep, {"dask_llm_run": "run-c"}) == []
    assert find(ep, {"dask_llm_run": "run-a"}, max_age=-60) == []  # all "older" than the horizon

    # Attach: wait for the found batches and take their results; ids come from the input files.
    states = wait(ep, [s.ref for s in found], options=options, should_stop=deadline(10))
    lines = collect(ep, states)
    assert sorted(lines) == sorted(f"row-{i}" for i in range(10)) and all(v.ok for v in lines.values())
    assert sim.stats()["batch"]["batches"] == 5  # nothing was submitted again


def test_line_failures_are_retryable_and_go_to_follow_up_batches(start: Start) -> None:
    sim = start(batch_turnaround=0.3, batch_line_fail_rate=0.3, models=("m",), seed=7)
    ep = endpoint(sim)
    requests = items(60) + [("bad", {"model": "m", "messages": []})]  # a 400 line: final

    refs = submit(ep, requests, metadata={"dask_llm_run": "lines"}, options=FAST)
    lines = collect(ep, wait(ep, refs, options=FAST, should_stop=deadline(10)))
    failed = [line for line in lines.values() if line.status is LineStatus.RETRYABLE]
    assert 5 <= len(failed) <= 30
    assert all(line.resubmit and line.status_code == 500 and "HTTP 500" in (line.error or "") for line in failed)
    assert lines["bad"].status is LineStatus.FINAL and lines["bad"].status_code == 400 and not lines["bad"].resubmit

    # retry="batch": the retryable lines go again, in follow-up batches tagged as such.
    seen: list[BatchRef] = []
    out = run(
        ep,
        requests,
        metadata={"dask_llm_run": "again"},
        options=BatchAPI(poll_interval=0.1, max_follow_ups=3),
        should_stop=deadline(20),
        on_submitted=seen.extend,
    )
    assert len(out) == 61 and out["bad"].status is LineStatus.FINAL and out["bad"].attempts == 1
    retried = [line for line in out.values() if line.attempts > 1]
    assert retried and all(line.attempts <= 4 for line in out.values())
    assert sum(line.ok for line in out.values()) >= 58
    assert [ref.metadata.get("dask_llm_follow_up") for ref in seen][:2] == [None, "1"]

    # retry="sync": one batch, the retryable lines come back for the caller.
    once = run(
        ep,
        requests,
        metadata={"dask_llm_run": "sync"},
        options=BatchAPI(poll_interval=0.1, retry="sync"),
        should_stop=deadline(10),
    )
    assert any(line.resubmit for line in once.values()) and all(line.attempts == 1 for line in once.values())


def test_expiry_keeps_finished_lines_and_returns_the_rest(start: Start) -> None:
    # Validating 0.4 s, then 3.2 s to answer 50 lines; it expires 1.5 s after creation.
    sim = start(batch_turnaround=4.0, batch_expire_after=1.5)
    ep = endpoint(sim)
    refs = submit(ep, items(50), metadata={"dask_llm_run": "expiry"}, options=FAST)
    (state,) = wait(ep, refs, options=FAST, should_stop=deadline(10))
    assert state.status == "expired"
    lines = results(ep, state, FAST)
    done = [cid for cid, line in lines.items() if line.ok]
    rest = [line for line in lines.values() if not line.ok]
    assert 0 < len(done) < 50 and len(done) == state.completed
    assert done == [f"row-{i}" for i in range(len(done))]  # answered in order, all kept
    assert len(rest) == 50 - len(done)
    assert all(line.status is LineStatus.NOT_RUN and line.resubmit and line.attempts == 0 for line in rest)
    assert all("batch_expired" in (line.error or "") for line in rest)


def test_cancel_keeps_finished_lines_and_reports_the_rest_not_run(start: Start) -> None:
    sim = start(batch_turnaround=3.0)
    ep = endpoint(sim)
    refs = submit(ep, items(100), metadata={"dask_llm_run": "cancel"}, options=FAST)
    stop = deadline(10)
    state = poll(ep, refs[0])
    while state.completed < 5 and not stop():
        time.sleep(0.05)
        state = poll(ep, refs[0])
    (cancelling,) = cancel(ep, refs)
    assert cancelling.status == "cancelling"
    (state,) = wait(ep, refs, options=FAST, should_stop=deadline(10))
    assert state.status == "cancelled" and capacity.pending(ep, "m") == {}
    lines = results(ep, state, FAST)
    ok = [line for line in lines.values() if line.ok]
    not_run = [line for line in lines.values() if line.status is LineStatus.NOT_RUN]
    assert len(ok) == state.completed >= 5 and len(ok) + len(not_run) == 100
    assert all("cancelled" in (line.error or "") for line in not_run)
    # Cancelling what has ended is no error: it is left as it is.
    (again,) = cancel(ep, refs)
    assert again.status == "cancelled"


def test_wait_stops_when_asked(start: Start) -> None:
    sim = start(batch_turnaround=30.0)
    ep = endpoint(sim)
    refs = submit(ep, items(5), metadata={"dask_llm_run": "stop"}, options=FAST)
    began = time.monotonic()
    (state,) = wait(ep, refs, options=BatchAPI(poll_interval=5.0), should_stop=deadline(0.3))
    assert time.monotonic() - began < 2 and not state.terminal
    with pytest.raises(ValueError, match="still"):
        results(ep, state)
    cancel(ep, refs)


def test_validation_failure_is_one_clear_error(start: Start) -> None:
    sim = start(batch_turnaround=0.2)
    ep = endpoint(sim)
    client = openai.OpenAI(base_url=sim.url, api_key=KEY, max_retries=0)
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
    content = "\n".join(
        [json.dumps(good), "{not json", json.dumps({**good, "custom_id": "b", "method": "GET"}), json.dumps(good)]
    ).encode()
    file_id = client.files.create(file=("bad.jsonl", content), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    ref = BatchRef(batch_id=batch.id, input_file_id=file_id, model="m", rows=4, tokens=0)

    with pytest.raises(BatchValidationError) as caught:
        wait(ep, [ref], options=FAST, should_stop=deadline(10))
    error = caught.value
    assert isinstance(error, EndpointError) and error.batch_id == batch.id
    assert [(e.line, e.code) for e in error.errors] == [
        (2, "invalid_json_line"),
        (3, "invalid_method"),
        (4, "duplicate_custom_id"),
    ]
    assert str(error).startswith(f"batch {batch.id} failed validation (3 errors): line 2: ")
    assert "not parseable" in str(error) and "line 4" in str(error)
    restored = pickle.loads(pickle.dumps(error))
    assert str(restored) == str(error) and restored.errors == error.errors
    with pytest.raises(BatchValidationError):
        results(ep, poll(ep, ref))


def test_enqueued_token_limit_queues_the_second_batch(start: Start) -> None:
    one_file = items(10)
    sim_tokens = sum(prompt_tokens(body["messages"]) for _, body in one_file)
    our_tokens = sum(estimated_tokens(body) for _, body in one_file)
    # Room for one file and a half, on both sides: the simulator would refuse a second file early.
    sim = start(batch_turnaround=1.0, batch_enqueued_token_limit=int(sim_tokens * 1.5))
    ep = endpoint(sim)
    options = BatchAPI(poll_interval=0.1, max_requests_per_file=10, enqueued_token_limit=int(our_tokens * 1.5))

    began = time.monotonic()
    refs = submit(ep, items(20), metadata={"dask_llm_run": "queue"}, options=options, should_stop=deadline(10))
    assert len(refs) == 2 and time.monotonic() - began >= 0.8  # the second waited for the first
    first, second = (sim_batch(sim, ref.batch_id) for ref in refs)
    assert first.status == "completed" and second.created_at >= first.completed_at

    states = wait(ep, refs, options=options, should_stop=deadline(10))
    assert [s.status for s in states] == ["completed", "completed"]
    assert sim.stats()["batch"]["by_status"] == {"completed": 2}  # nothing was refused
    assert all(line.ok for line in collect(ep, states).values())


def test_token_limit_is_learned_and_the_refused_batch_sent_again(start: Start) -> None:
    sim_tokens = sum(prompt_tokens(body["messages"]) for _, body in items(10))
    limit = int(sim_tokens * 1.5)
    sim = start(batch_turnaround=1.0, batch_enqueued_token_limit=limit)
    ep = endpoint(sim)
    options = BatchAPI(poll_interval=0.1, max_requests_per_file=10)  # no limit given: both go at once

    refs = submit(ep, items(20), metadata={"dask_llm_run": "learn"}, options=options)
    assert len(refs) == 2
    swaps: list[tuple[BatchRef, BatchRef]] = []
    states = wait(ep, refs, options=options, should_stop=deadline(15), on_resubmit=lambda a, b: swaps.append((a, b)))
    assert [s.status for s in states] == ["completed", "completed"]
    assert capacity.learned(ep, "m")[0] == limit  # from the refusal's message
    ((old, new),) = swaps
    assert old == refs[1] and new.batch_id != old.batch_id and states[1].ref == new
    assert new.input_file_id == old.input_file_id and new.metadata["dask_llm_file"] == "2/2"  # no new upload

    first, refused, again = (sim_batch(sim, b) for b in (refs[0].batch_id, old.batch_id, new.batch_id))
    assert refused.status == "failed" and refused.errors.data[0].code == "token_limit_exceeded"
    assert again.created_at >= first.completed_at  # sent again only once the first had left the queue
    assert sim.stats()["batch"]["by_status"] == {"completed": 2, "failed": 1}
    assert sim.stats()["batch"]["files"] == 2
    lines = collect(ep, states)
    assert len(lines) == 20 and all(line.ok for line in lines.values())

    # Now known, the limit splits the next submit's files so that each fits alone.
    later = submit(
        ep,
        items(30, start=100),
        metadata={"dask_llm_run": "learn2"},
        options=BatchAPI(poll_interval=0.1),
        should_stop=deadline(15),
    )
    assert len(later) >= 2 and all(ref.tokens * capacity.learned(ep, "m")[1] <= limit for ref in later)
    cancel(ep, later)


def test_azure_round_trip(start: Start) -> None:
    sim = start(batch_turnaround=0.3)
    # With a deployment set, the openai client would route /files under /deployments/<name>:
    # the batch routes must not, and the lines name the deployment instead.
    ep = Endpoint(
        azure_endpoint=sim.azure_endpoint,
        api_key=KEY,
        api_version="2024-10-21",
        azure_deployment="gpt-sim",
        timeout=10.0,
    )
    refs = submit(
        ep,
        items(12, model="ignored"),
        metadata={"dask_llm_run": "azure"},
        options=BatchAPI(poll_interval=0.1, max_requests_per_file=5),
    )
    assert [ref.rows for ref in refs] == [5, 5, 2] and {ref.model for ref in refs} == {"gpt-sim"}
    states = wait(ep, refs, options=FAST, should_stop=deadline(10))
    assert [s.status for s in states] == ["completed"] * 3
    assert {sim_batch(sim, ref.batch_id).endpoint for ref in refs} == {"/chat/completions"}
    lines = collect(ep, states)
    assert [lines[f"row-{i}"].text for i in range(12)] == [expected_answer(messages(i)) for i in range(12)]
    assert [s.ref.batch_id for s in find(ep, {"dask_llm_run": "azure"})] == [r.batch_id for r in reversed(refs)]


def test_wrong_key_and_missing_batch_api_are_endpoint_errors(start: Start) -> None:
    sim = start()
    wrong = Endpoint(base_url=sim.url, api_key="nope", timeout=10.0)
    with pytest.raises(AuthenticationError, match="uploading a batch input file"):
        submit(wrong, items(1), metadata={}, options=FAST)
    ghost = BatchRef(batch_id="batch_ghost", input_file_id="file-x", model="m", rows=1, tokens=1)
    with pytest.raises(EndpointError, match="Batch API"):
        poll(endpoint(sim), ghost)


def test_every_line_404_is_one_error_not_a_column_of_them(start: Start) -> None:
    sim = start(batch_turnaround=0.2, models=("m",))
    ep = endpoint(sim)
    refs = submit(ep, items(3, model="ghost"), metadata={"dask_llm_run": "ghost"}, options=FAST)
    (state,) = wait(ep, refs, options=FAST, should_stop=deadline(10))
    assert state.status == "completed" and state.failed == 3
    with pytest.raises(ModelNotFoundError, match="ghost.*HTTP 404"):
        results(ep, state, FAST)


def test_run_checks_room_for_the_follow_up_key(start: Start) -> None:
    sim = start()
    with pytest.raises(ConfigError, match="at most 10"):
        run(endpoint(sim), items(1), metadata={f"k{i}": "v" for i in range(11)}, options=FAST)
    assert sim.stats()["batch"]["files"] == 0


def test_a_vanished_batch_does_not_block_the_queue(start: Start) -> None:
    sim = start(batch_turnaround=0.2)
    ep = endpoint(sim)
    # A batch the ledger holds but the account does not know (deleted, or a port used again).
    capacity.track(ep, "m", "batch_vanished", 10**6)
    options = BatchAPI(poll_interval=0.1, enqueued_token_limit=10**6)
    refs = submit(ep, items(3), metadata={"dask_llm_run": "vanished"}, options=options, should_stop=deadline(5))
    assert len(refs) == 1 and "batch_vanished" not in capacity.pending(ep, "m")
    (state,) = wait(ep, refs, options=options, should_stop=deadline(10))
    assert state.status == "completed"
