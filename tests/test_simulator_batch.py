"""The simulator's OpenAI Batch API, driven by the real openai client over real HTTP."""

from __future__ import annotations

import argparse
import http.client
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from dask_llm.simulator import Simulator, SimulatorConfig, expected_answer, prompt_tokens
from dask_llm.simulator._cli import add_arguments, config_from_args, config_to_argv

MakeSim = Callable[..., Simulator]

FINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def make_sim() -> Iterator[MakeSim]:
    """Start in-process simulators with the given config fields; all are stopped after the test."""
    started: list[Simulator] = []

    def make(**fields: Any) -> Simulator:
        sim = Simulator(SimulatorConfig(**fields)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def client_for(sim: Simulator, **options: Any) -> openai.OpenAI:
    options.setdefault("api_key", "k")
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=sim.url, **options)


def messages(index: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Classify the ticket into one cloud service."},
        {"role": "user", "content": f"Batch ticket {index}: the bucket is gone!"},
    ]


def line(index: int, model: str = "m", url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"row-{index}",
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": messages(index), **body},
    }


def jsonl(lines: Sequence[dict[str, Any] | str]) -> bytes:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines).encode()


def upload(client: openai.OpenAI, lines: Sequence[dict[str, Any] | str]) -> FileObject:
    return client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")


def start_batch(client: openai.OpenAI, lines: Sequence[dict[str, Any] | str], **options: Any) -> Batch:
    options.setdefault("endpoint", "/v1/chat/completions")
    return client.batches.create(input_file_id=upload(client, lines).id, completion_window="24h", **options)


def finished(batch: Batch) -> bool:
    return batch.status in FINAL


def wait_for(
    client: openai.OpenAI, batch_id: str, done: Callable[[Batch], bool] = finished, timeout: float = 5
) -> tuple[Batch, list[Batch]]:
    """Poll the batch until `done`; return it and every state seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        seen.append(batch)
        if done(batch):
            return batch, seen
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} still {seen[-1].status} after {timeout} s")


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(text) for text in client.files.content(file_id).text.splitlines()]


# --- files -------------------------------------------------------------------------------------


def test_files_upload_retrieve_download_list_and_delete(make_sim: MakeSim, tmp_path: Path) -> None:
    client = client_for(make_sim())
    data = jsonl([line(i) for i in range(3)])
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.filename == "in.jsonl"
    assert uploaded.bytes == len(data) and uploaded.status == "processed"
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).content == data

    # A path and an open file upload the same way; so does a stream of unknown length (sent chunked).
    path = tmp_path / "from-disk.jsonl"
    path.write_bytes(data)
    from_path = client.files.create(file=path, purpose="batch")
    with path.open("rb") as handle:
        from_handle = client.files.create(file=handle, purpose="batch")

    class Unsized(io.RawIOBase):
        """A stream with neither fileno nor seek: httpx cannot size it and sends it chunked."""

        def __init__(self, payload: bytes) -> None:
            super().__init__()
            self.payload, self.name = payload, "unsized.jsonl"

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            size = min(len(buffer), len(self.payload))
            buffer[:size], self.payload = self.payload[:size], self.payload[size:]
            return size

    chunked = client.files.create(file=Unsized(data), purpose="batch")
    assert (from_path.filename, from_handle.filename, chunked.filename) == (
        "from-disk.jsonl",
        "from-disk.jsonl",
        "unsized.jsonl",
    )
    for file in (from_path, from_handle, chunked):
        assert client.files.content(file.id).content == data

    assert [f.id for f in client.files.list()] == [chunked.id, from_handle.id, from_path.id, uploaded.id]
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", data), purpose="homework")  # type: ignore[arg-type]


def test_uploads_may_exceed_the_chat_body_cap(make_sim: MakeSim) -> None:
    sim = make_sim()
    client = client_for(sim, timeout=30)
    big = jsonl([line(0)]) + b" " * (40 * 1024 * 1024)  # 40 MB: more than a chat request may send
    uploaded = client.files.create(file=("big.jsonl", big), purpose="batch")
    assert uploaded.bytes == len(big)
    # A chat request announcing as much is refused from its headers, before its body is read.
    connection = http.client.HTTPConnection(sim.host, sim.port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/chat/completions")
        connection.putheader("content-length", str(len(big)))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()


# --- the lifecycle -----------------------------------------------------------------------------


def test_batch_runs_to_completion_with_the_chat_answers(make_sim: MakeSim) -> None:
    sim = make_sim(batch_turnaround=0.6)
    client = client_for(sim)
    created = start_batch(client, [line(i) for i in range(40)], metadata={"job": "nightly"})
    assert created.status == "validating" and created.object == "batch"
    assert created.request_counts is not None and created.request_counts.total == 0
    assert created.metadata == {"job": "nightly"} and created.endpoint == "/v1/chat/completions"

    batch, seen = wait_for(client, created.id)
    assert batch.status == "completed"
    statuses = [b.status for b in seen]
    order = ["validating", "in_progress", "finalizing", "completed"]
    assert [s for s in order if s in statuses] == sorted(set(statuses), key=order.index)
    # Lines complete progressively while in progress.
    progress = {b.request_counts.completed for b in seen if b.status == "in_progress" and b.request_counts}
    assert any(0 < done < 40 for done in progress), progress
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (40, 40, 0)
    times = (batch.created_at, batch.in_progress_at, batch.finalizing_at, batch.completed_at)
    assert times == tuple(sorted(times))  # type: ignore[type-var]
    assert batch.completed_at - batch.created_at <= 2  # type: ignore[operator]
    assert batch.error_file_id is None and batch.model == "m"
    assert batch.usage is not None and batch.usage.input_tokens == 40 * prompt_tokens(messages(0))

    output = read_jsonl(client, batch.output_file_id)
    assert sorted(record["custom_id"] for record in output) == sorted(f"row-{i}" for i in range(40))
    for record in output:
        index = int(record["custom_id"].removeprefix("row-"))
        assert record["id"].startswith("batch_req_") and record["error"] is None
        assert record["response"]["status_code"] == 200 and record["response"]["request_id"]
        completion = ChatCompletion.model_validate(record["response"]["body"])
        assert completion.choices[0].message.content == expected_answer(messages(index))
        assert completion.usage is not None and completion.usage.prompt_tokens == prompt_tokens(messages(index))
    output_file = client.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert output_file.purpose == "batch_output" and output_file.filename == f"{batch.id}_output.jsonl"

    # Batch answers count as successes of their prompt, so a row paid again synchronously shows.
    client.chat.completions.create(model="m", messages=messages(7))
    stats = sim.stats()
    assert stats["success_by_prompt"][messages(7)[-1]["content"]] == 2
    assert sum(stats["success_by_prompt"].values()) == stats["successes"] == 41
    assert stats["batch"] == {
        "files": 1,
        "batches": 1,
        "by_status": {"completed": 1},
        "lines": 40,
        "line_failures": 0,
    }


def test_batch_list_is_newest_first_with_a_cursor(make_sim: MakeSim) -> None:
    sim = make_sim()
    client = client_for(sim)
    file_id = upload(client, [line(0)]).id
    ids = [
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(5)
    ]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == [ids[4], ids[3]] and page.has_more
    page = client.batches.list(limit=2, after=ids[3])
    assert [b.id for b in page.data] == [ids[2], ids[1]] and page.has_more
    page = client.batches.list(limit=2, after=ids[1])
    assert [b.id for b in page.data] == [ids[0]] and not page.has_more
    # The client's auto-pagination follows `after` to the end.
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]

    connection = http.client.HTTPConnection(sim.host, sim.port, timeout=5)
    try:
        connection.request("GET", f"/v1/batches?limit=3&after={ids[4]}")
        raw = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert raw["object"] == "list" and raw["has_more"] is True
    assert (raw["first_id"], raw["last_id"]) == (ids[3], ids[1])
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


def test_cancel_keeps_the_finished_lines(make_sim: MakeSim) -> None:
    sim = make_sim(batch_turnaround=3.0)
    client = client_for(sim)
    created = start_batch(client, [line(i) for i in range(100)])
    running, _ = wait_for(client, created.id, lambda b: b.request_counts.completed >= 5)  # type: ignore[union-attr]
    assert running.status == "in_progress"
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = cancelling.request_counts.completed  # type: ignore[union-attr]
    assert 5 <= done < 100

    batch, _ = wait_for(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None and batch.completed_at is None
    assert batch.request_counts is not None and batch.request_counts.completed == done
    output = read_jsonl(client, batch.output_file_id)
    # The lines answered before the cancel, in order; the others were never run.
    assert [record["custom_id"] for record in output] == [f"row-{i}" for i in range(done)]
    assert batch.error_file_id is None
    assert sim.stats()["successes"] == done
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)


def test_unfinished_batch_expires(make_sim: MakeSim) -> None:
    # Validating for 0.4 s, then 3.2 s to answer 50 lines; it expires 1.5 s after creation.
    sim = make_sim(batch_turnaround=4.0, batch_expire_after=1.5)
    client = client_for(sim)
    created = start_batch(client, [line(i) for i in range(50)])
    assert created.expires_at is not None and 1 <= created.expires_at - created.created_at <= 2
    batch, _ = wait_for(client, created.id)
    assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
    answered = 50 * (1.5 - 0.4) // 3.2
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (answered, 50 - answered)

    output = read_jsonl(client, batch.output_file_id)
    errors = read_jsonl(client, batch.error_file_id)
    assert [r["custom_id"] for r in output] == [f"row-{i}" for i in range(int(answered))]
    assert [r["custom_id"] for r in errors] == [f"row-{i}" for i in range(int(answered), 50)]
    assert all(r["response"] is None and r["error"]["code"] == "batch_expired" for r in errors)
    assert sim.stats()["batch"]["by_status"] == {"expired": 1}


def test_invalid_input_fails_validation_with_line_numbers(make_sim: MakeSim) -> None:
    client = client_for(make_sim(batch_turnaround=0.2))
    bad = [
        line(0),
        "{not json",
        {**line(2), "url": "/v1/embeddings"},
        {**line(3), "method": "GET"},
        line(0),  # duplicate custom_id
        {key: value for key, value in line(5).items() if key != "custom_id"},
        line(6, model="other"),
        "",  # blank lines are skipped, but counted
        line(8),
    ]
    created = start_batch(client, bad)
    assert created.status == "validating"
    batch, _ = wait_for(client, created.id)
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(error.line, error.code) for error in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"),
        (3, "url_mismatch"),
        (4, "invalid_method"),
        (5, "duplicate_custom_id"),
        (6, "missing_required_parameter"),
        (7, "model_mismatch"),
    ]
    assert all(error.message for error in batch.errors.data)
    assert batch.output_file_id is None and batch.error_file_id is None

    empty = client.batches.create(
        input_file_id=client.files.create(file=("empty.jsonl", b"\n"), purpose="batch").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    failed, _ = wait_for(client, empty.id)
    assert failed.status == "failed" and failed.errors.data[0].code == "empty_file"  # type: ignore[union-attr,index]


def test_enqueued_token_limit_fails_the_batch_that_would_exceed_it(make_sim: MakeSim) -> None:
    tokens = 10 * prompt_tokens(messages(0))  # the prompts of ten lines
    sim = make_sim(batch_turnaround=1.0, batch_enqueued_token_limit=int(tokens * 1.5))
    client = client_for(sim)
    first = start_batch(client, [line(i) for i in range(10)])
    second = start_batch(client, [line(i) for i in range(10, 20)])  # 2 x tokens > 1.5 x tokens
    other_model = start_batch(client, [line(i, model="n") for i in range(10)])
    failed, _ = wait_for(client, second.id)
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data is not None
    assert failed.errors.data[0].code == "token_limit_exceeded" and "m" in (failed.errors.data[0].message or "")
    assert wait_for(client, first.id)[0].status == "completed"
    assert wait_for(client, other_model.id)[0].status == "completed"
    # Once the first has finished, its tokens have left the queue.
    third = start_batch(client, [line(i) for i in range(10, 20)])
    assert wait_for(client, third.id)[0].status == "completed"
    assert sim.stats()["batch"]["by_status"] == {"completed": 3, "failed": 1}


def test_failed_lines_go_to_the_error_file(make_sim: MakeSim) -> None:
    sim = make_sim(batch_turnaround=0.2, batch_line_fail_rate=0.3, models=("m",), seed=5)
    client = client_for(sim)
    created = start_batch(client, [line(i) for i in range(60)] + [line(60, messages=[])])
    batch, _ = wait_for(client, created.id)
    assert batch.status == "completed" and batch.request_counts is not None
    output = read_jsonl(client, batch.output_file_id)
    errors = read_jsonl(client, batch.error_file_id)
    assert batch.request_counts.completed == len(output) and batch.request_counts.failed == len(errors)
    assert len(output) + len(errors) == 61 and 8 <= len(errors) <= 30
    statuses = {r["custom_id"]: r["response"]["status_code"] for r in errors}
    assert statuses.pop("row-60") == 400  # the line's own request is invalid, as a 400 would say
    assert set(statuses.values()) == {500}
    for record in errors:
        assert record["error"] is None and record["response"]["body"]["error"]["message"]
    stats = sim.stats()
    assert stats["batch"]["line_failures"] == len(errors) and stats["successes"] == len(output)

    # The batch's draws are seeded by the seed and its id: after a reset, the same lines fail.
    sim.reset()
    again, _ = wait_for(client, start_batch(client, [line(i) for i in range(60)] + [line(60, messages=[])]).id)
    assert again.id == batch.id
    assert {r["custom_id"] for r in read_jsonl(client, again.error_file_id)} == {r["custom_id"] for r in errors}


def test_lines_for_an_unknown_model_are_404_lines(make_sim: MakeSim) -> None:
    client = client_for(make_sim(batch_turnaround=0.1, models=("m",)))
    batch, _ = wait_for(client, start_batch(client, [line(i, model="ghost") for i in range(3)]).id)
    assert batch.status == "completed" and batch.output_file_id is None
    errors = read_jsonl(client, batch.error_file_id)
    assert [r["response"]["status_code"] for r in errors] == [404] * 3
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"


def test_create_errors(make_sim: MakeSim) -> None:
    client = client_for(make_sim())
    file_id = upload(client, [line(0)]).id
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"n": 1},  # type: ignore[dict-item]
        )
    not_batch = client.files.create(file=("x.jsonl", jsonl([line(0)])), purpose="user_data").id
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=not_batch, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_batch_routes_need_the_api_key(make_sim: MakeSim) -> None:
    sim = make_sim(api_key="secret")
    with pytest.raises(openai.AuthenticationError):
        client_for(sim, api_key="wrong").files.create(file=("x.jsonl", jsonl([line(0)])), purpose="batch")
    with pytest.raises(openai.AuthenticationError):
        client_for(sim, api_key="wrong").batches.list()
    assert client_for(sim, api_key="secret").batches.list().data == []


def test_azure_files_and_batches(make_sim: MakeSim) -> None:
    sim = make_sim(batch_turnaround=0.2, api_key="secret")
    azure = openai.AzureOpenAI(
        azure_endpoint=sim.azure_endpoint, api_key="secret", api_version="2024-10-21", max_retries=0
    )
    # Azure's lines name the deployment as the model and use the endpoint without /v1.
    lines = [line(i, model="gpt-sim", url="/chat/completions") for i in range(5)]
    uploaded = azure.files.create(file=("azure.jsonl", jsonl(lines)), purpose="batch")
    created = azure.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h")
    batch = created
    deadline = time.monotonic() + 5
    while batch.status not in FINAL and time.monotonic() < deadline:
        time.sleep(0.02)
        batch = azure.batches.retrieve(created.id)
    assert batch.status == "completed" and batch.endpoint == "/chat/completions"
    assert batch.output_file_id is not None
    output = [json.loads(text) for text in azure.files.content(batch.output_file_id).text.splitlines()]
    assert [r["response"]["body"]["choices"][0]["message"]["content"] for r in output] == [
        expected_answer(messages(i)) for i in range(5)
    ]
    assert [b.id for b in azure.batches.list()] == [created.id]

    # The raw Azure routes, api-version and all.
    connection = http.client.HTTPConnection(sim.host, sim.port, timeout=5)
    try:
        connection.request("GET", f"/openai/batches/{created.id}?api-version=2024-10-21", headers={"api-key": "secret"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "completed"
    finally:
        connection.close()


def test_reset_forgets_files_and_batches(make_sim: MakeSim) -> None:
    sim = make_sim(batch_turnaround=0.1)
    client = client_for(sim)
    batch, _ = wait_for(client, start_batch(client, [line(0)]).id)
    assert sim.stats()["batch"]["by_status"] == {"completed": 1}
    sim.reset()
    stats = sim.stats()
    assert stats["batch"] == {"files": 0, "batches": 0, "by_status": {}, "lines": 0, "line_failures": 0}
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(batch.id)
    assert client.files.list().data == []


def test_zero_turnaround_completes_at_the_first_poll(make_sim: MakeSim) -> None:
    client = client_for(make_sim(batch_turnaround=0.0))
    created = start_batch(client, [line(i) for i in range(3)])
    assert created.status == "validating"  # as created, like OpenAI's
    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3  # type: ignore[union-attr]


def test_batch_config_is_validated_and_round_trips_the_command_line() -> None:
    with pytest.raises(ValueError, match="batch_turnaround"):
        SimulatorConfig(batch_turnaround=-1.0)
    with pytest.raises(ValueError, match="batch_expire_after"):
        SimulatorConfig(batch_expire_after=0.0)
    with pytest.raises(ValueError, match="batch_line_fail_rate"):
        SimulatorConfig(batch_line_fail_rate=2.0)
    with pytest.raises(ValueError, match="batch_enqueued_token_limit"):
        SimulatorConfig(batch_enqueued_token_limit=0)
    # The line failure rate is its own draw: it does not count against the fault rates.
    assert SimulatorConfig(fail_rate=1.0, batch_line_fail_rate=1.0).fault_rate == 1.0
    config = SimulatorConfig(
        batch_turnaround=2.5, batch_line_fail_rate=0.1, batch_expire_after=60.0, batch_enqueued_token_limit=90_000
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(config_to_argv(config))) == config
