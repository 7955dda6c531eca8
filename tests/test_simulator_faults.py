"""The simulator's transport faults and rate-limit hint styles, seen over real HTTP.

Each fault is observed the way a client meets it: through the real openai
client (what it raises, or returns) and through http.client (the bytes and
their timing).
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from dask_llm.simulator import RATE_LIMIT_STYLES, Simulator, SimulatorConfig, expected_answer
from dask_llm.simulator._behaviour import Behaviour
from dask_llm.simulator._cli import add_arguments, config_from_args, config_to_argv

MakeSim = Callable[..., Simulator]

# Every header a 429 or a 200 may use to hint at the rate limits.
HINT_HEADERS = {
    "retry-after",
    "retry-after-ms",
    "llm_provider-retry-after",
    *(f"x-ratelimit-{kind}-{what}" for kind in ("limit", "remaining", "reset") for what in ("requests", "tokens")),
}


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


def client_for(sim: Any, **options: Any) -> openai.OpenAI:
    options.setdefault("api_key", "k")
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=sim.url, **options)


def ticket(index: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Classify the ticket into one cloud service."},
        {"role": "user", "content": f"Ticket {index}: my VM can't reach the bucket!"},
    ]


def chat_body(index: int) -> bytes:
    return json.dumps({"model": "m", "messages": ticket(index)}).encode()


def post_chat(
    sim: Any, index: int, timeout: float = 5.0
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """POST a chat request with http.client; the caller reads the response and closes the connection."""
    connection = http.client.HTTPConnection(sim.host, sim.port, timeout=timeout)
    headers = {"content-type": "application/json"}
    connection.request("POST", "/v1/chat/completions", body=chat_body(index), headers=headers)
    return connection, connection.getresponse()


def hints(headers: Any) -> set[str]:
    return {name for name in HINT_HEADERS if name in headers}


# --- drip-fed bodies ---------------------------------------------------------------------------


def test_drip_feed_sends_headers_at_once_then_one_byte_per_interval(make_sim: MakeSim) -> None:
    interval = 0.005
    sim = make_sim(drip_rate=1.0, drip_interval=interval)
    # A per-read timeout 50 times the interval: it never fires, however long the whole body takes.
    started = time.monotonic()
    connection, response = post_chat(sim, 1, timeout=0.25)
    try:
        headers_after = time.monotonic() - started
        length = int(response.headers["content-length"])
        pieces = []
        while piece := response.read1(64):
            pieces.append(piece)
        body_after = time.monotonic() - started
    finally:
        connection.close()
    body = b"".join(pieces)
    assert response.status == 200 and len(body) == length > 200
    assert headers_after < 0.25
    # Each read got what had trickled in since the last: about one byte each, never the whole body.
    assert len(pieces) > length / 4
    assert body_after >= length * interval
    assert body_after > 4 * 0.25  # far longer than the read timeout
    assert json.loads(body)["choices"][0]["message"]["content"] == expected_answer(ticket(1))
    stats = sim.stats()
    assert stats["faults"] == {"drip": 1} and stats["successes"] == 1 and stats["by_status"] == {"200": 1}
    assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1


def test_drip_feed_outlasts_the_openai_timeout() -> None:
    # 0.25 s a byte: the 1 s read timeout never fires, the ~300-byte body would take over a minute.
    sim = Simulator(SimulatorConfig(drip_rate=1.0, drip_interval=0.25)).start()
    outcome: list[BaseException | object] = []

    def call() -> None:
        try:
            outcome.append(client_for(sim, timeout=1.0).chat.completions.create(model="m", messages=ticket(1)))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    try:
        thread.start()
        thread.join(3.0)
        # Three times the timeout, and the call is still reading the body: a request in flight.
        assert thread.is_alive() and outcome == []
        stats = sim.stats()
        assert stats["successes"] == 0 and stats["in_flight"] == 1
    finally:
        sim.stop()  # closes the connection mid-body
    thread.join(5.0)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], openai.APIConnectionError)


def test_drip_feed_client_that_leaves_is_not_a_success(make_sim: MakeSim) -> None:
    sim = make_sim(drip_rate=1.0, drip_interval=0.02)
    connection, response = post_chat(sim, 1)
    assert response.read(5) == b'{"id"'
    connection.close()
    deadline = time.monotonic() + 5
    while sim.stats()["disconnected"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = sim.stats()
    assert stats["disconnected"] == 1 and stats["successes"] == 0 and stats["in_flight"] == 0


# --- bodies that are not a completion ----------------------------------------------------------


def test_html_page_with_status_200(make_sim: MakeSim) -> None:
    sim = make_sim(html_rate=1.0)
    connection, response = post_chat(sim, 1)
    try:
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert body.startswith(b"<!DOCTYPE html>") and b"sign in" in body.lower()
    # The openai client does not raise: a non-JSON body is returned as a plain str.
    reply: Any = client_for(sim).chat.completions.create(model="m", messages=ticket(2))
    assert isinstance(reply, str) and reply.startswith("<!DOCTYPE html>")
    # Only with strict validation does it refuse the content type.
    with pytest.raises(openai.APIResponseValidationError, match="text/html"):
        client_for(sim, _strict_response_validation=True).chat.completions.create(model="m", messages=ticket(3))
    stats = sim.stats()
    assert stats["faults"] == {"html": 3} and stats["successes"] == 0 and stats["by_status"] == {"200": 3}


def test_empty_body_with_status_200(make_sim: MakeSim) -> None:
    sim = make_sim(empty_rate=1.0)
    connection, response = post_chat(sim, 1)
    try:
        assert response.status == 200 and response.headers["content-length"] == "0" and response.read() == b""
    finally:
        connection.close()
    # Not an openai.APIError: the JSON decoder's own error, not retried by the client.
    with pytest.raises(json.JSONDecodeError):
        client_for(sim, max_retries=2).chat.completions.create(model="m", messages=ticket(2))
    stats = sim.stats()
    assert stats["faults"] == {"empty": 2} and stats["requests"] == 2 and stats["successes"] == 0


def test_empty_object_with_status_200(make_sim: MakeSim) -> None:
    sim = make_sim(empty_object_rate=1.0)
    # The openai client builds a ChatCompletion whose every field is None.
    reply = client_for(sim).chat.completions.create(model="m", messages=ticket(1))
    assert type(reply).__name__ == "ChatCompletion"
    assert reply.choices is None and reply.usage is None and reply.id is None
    with pytest.raises(openai.APIResponseValidationError):
        client_for(sim, _strict_response_validation=True).chat.completions.create(model="m", messages=ticket(2))
    assert sim.stats()["faults"] == {"empty_object": 2} and sim.stats()["successes"] == 0


# --- huge bodies -------------------------------------------------------------------------------


def test_huge_body_is_valid_json_of_the_configured_length(make_sim: MakeSim) -> None:
    sim = make_sim(huge_rate=1.0, huge_bytes=3_000_000)
    raw = client_for(sim).chat.completions.with_raw_response.create(model="m", messages=ticket(1))
    assert raw.headers["content-length"] == "3000000"
    assert len(raw.http_response.content) == 3_000_000
    # Padding is JSON whitespace: a client that reads it all gets the right answer.
    assert raw.parse().choices[0].message.content == expected_answer(ticket(1))
    stats = sim.stats()
    assert stats["faults"] == {"huge": 1} and stats["successes"] == 1


def vm_peak_kib(pid: int) -> int:
    """Peak resident memory (VmHWM) of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_huge_body_is_streamed_without_growing_the_simulator() -> None:
    size = 100_000_000
    with Simulator.subprocess(SimulatorConfig(huge_rate=1.0, huge_bytes=size)) as sim:
        client_for(sim).models.list()  # warm the server up: a first request allocates a little
        before = vm_peak_kib(sim.pid)
        connection, response = post_chat(sim, 1, timeout=10)
        try:
            assert int(response.headers["content-length"]) == size
            total, kept = 0, []
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if chunk.strip(b" "):  # keep the JSON, drop the chunks of pure padding
                    kept.append(chunk)
        finally:
            connection.close()
        grown_kib = vm_peak_kib(sim.pid) - before
        assert total == size
        assert json.loads(b"".join(kept))["choices"][0]["message"]["content"] == expected_answer(ticket(1))
        # Built in memory, the body alone would add ~98,000 KiB to the peak.
        assert grown_kib < size // 1024 // 10, f"the simulator's peak memory grew by {grown_kib} KiB"
        deadline = time.monotonic() + 5
        while sim.stats()["successes"] != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.stats()["faults"] == {"huge": 1} and sim.stats()["successes"] == 1


# --- rate-limit hint styles --------------------------------------------------------------------

# The hint headers of a 429 in each style, for a 60 rpm bucket (only requests are limited).
BUCKET_429_HINTS = {
    "openai": {
        "retry-after",
        "retry-after-ms",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    },
    "retry-after": {"retry-after"},
    "retry-after-date": {"retry-after"},
    "retry-after-ms": {"retry-after-ms"},
    "reset": {"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"},
    "litellm": {"llm_provider-retry-after"},
    "body": set(),
    "none": set(),
}
SUCCESS_HINTS = {
    "openai": {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"},
    "litellm": {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests"},
}
# A spurious 429 (or always_429) without buckets: the same, less the bucket headers.
SIMULATED_429_HINTS = {
    style: {name for name in names if name == "retry-after" or not name.startswith("x-ratelimit-")}
    | ({"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"} if style == "reset" else set())
    for style, names in BUCKET_429_HINTS.items()
}
SIMULATED_429_HINTS["openai"] = {"retry-after"}  # as it always was: no retry-after-ms


def duration_seconds(text: str) -> float:
    """Parse a Go-style duration of OpenAI's reset headers: '150ms', '1s', '1.5s', '6m0s'."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?", text)
    assert match and text, f"not a duration: {text!r}"
    hours, minutes, seconds, millis = (float(group or 0) for group in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def check_hint_values(style: str, error: openai.RateLimitError, most_wait: float) -> None:
    headers = error.response.headers
    message = error.message
    if style in ("openai", "retry-after"):
        assert 1 <= int(headers["retry-after"]) <= max(1, most_wait)
    if style in ("openai", "retry-after-ms") and "retry-after-ms" in headers:
        assert 1 <= int(headers["retry-after-ms"]) <= most_wait * 1000
    if style == "retry-after-date":
        wait = email.utils.parsedate_to_datetime(headers["retry-after"]).timestamp() - time.time()
        assert 0 < wait <= most_wait + 1.5
    if style == "reset":
        waits = [duration_seconds(headers[f"x-ratelimit-reset-{what}"]) for what in ("requests", "tokens")]
        assert 0 < max(waits) <= most_wait
    if style == "litellm":
        assert headers["llm_provider-retry-after"] == str(max(1, round(most_wait)))
    if style == "body":
        match = re.search(r"Please try again in (\d+(?:\.\d+)?)(ms|s)\.$", message)
        assert match, message
        assert 0 < float(match.group(1)) / (1000 if match.group(2) == "ms" else 1) <= most_wait
    if style == "none":
        assert "try again" not in message and "retry" not in message.lower()
    assert error.code == "rate_limit_exceeded"


@pytest.mark.parametrize("style", RATE_LIMIT_STYLES)
def test_rate_limit_styles_on_bucket_429s_and_200s(make_sim: MakeSim, style: str) -> None:
    # 60 rpm with 1 s of burst: one request at once, the next waits about 1 s.
    sim = make_sim(rpm=60, burst_seconds=1.0, rate_limit_style=style)
    client = client_for(sim)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=ticket(1))
    assert hints(raw.headers) == SUCCESS_HINTS.get(style, set())
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=ticket(2))
    assert hints(info.value.response.headers) == BUCKET_429_HINTS[style]
    check_hint_values(style, info.value, most_wait=1.0)
    if style == "reset":
        assert info.value.response.headers["x-ratelimit-reset-tokens"] == "0s"  # no tokens bucket
    if style == "litellm":
        assert raw.headers["x-ratelimit-limit-requests"] == "60"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert sim.stats()["rate_limited"] == 1


@pytest.mark.parametrize("style", RATE_LIMIT_STYLES)
@pytest.mark.parametrize("knob", [{"rate_limit_rate": 1.0}, {"always_429": True}])
def test_rate_limit_styles_on_spurious_and_endless_429s(make_sim: MakeSim, style: str, knob: dict[str, Any]) -> None:
    sim = make_sim(rate_limit_style=style, **knob)
    with pytest.raises(openai.RateLimitError) as info:
        client_for(sim).chat.completions.create(model="m", messages=ticket(1))
    assert hints(info.value.response.headers) == SIMULATED_429_HINTS[style]
    check_hint_values(style, info.value, most_wait=1.0)
    if style == "reset":
        assert info.value.response.headers["x-ratelimit-reset-requests"] == "1s"
    if style == "body":
        assert info.value.message.endswith("Please try again in 1s.")


def test_always_429_never_admits_and_the_client_gives_up(make_sim: MakeSim) -> None:
    sim = make_sim(always_429=True, rpm=600)
    client = client_for(sim)
    for index in range(20):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=ticket(index))
    # The openai client obeys retry-after: 1, then gives up after its retries.
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        client_for(sim, max_retries=1).chat.completions.create(model="m", messages=ticket(99))
    assert time.monotonic() - started >= 0.9
    stats = sim.stats()
    assert stats["faults"] == {"always_429": 22} and stats["rate_limited"] == 22
    assert stats["successes"] == 0 and stats["by_status"] == {"429": 22}


def test_retry_after_date_is_obeyed_by_the_openai_client(make_sim: MakeSim) -> None:
    sim = make_sim(rpm=60, burst_seconds=1.0, rate_limit_style="retry-after-date")
    client = client_for(sim, max_retries=1)
    client.chat.completions.create(model="m", messages=ticket(1))
    started = time.monotonic()
    # The date hint (rounded up to a whole second) makes the client wait long enough to be admitted.
    reply = client.chat.completions.create(model="m", messages=ticket(2))
    assert reply.choices[0].message.content == expected_answer(ticket(2))
    assert 0.5 <= time.monotonic() - started < 4
    assert sim.stats()["by_status"] == {"200": 2, "429": 1}


# --- hangs -------------------------------------------------------------------------------------


def test_hang_rate_one_hangs_every_request_then_answers(make_sim: MakeSim) -> None:
    sim = make_sim(hang_rate=1.0, hang_seconds=0.4)
    client = client_for(sim, timeout=5.0)
    durations: list[float] = []
    answers: list[str | None] = []

    def call(index: int) -> None:
        started = time.monotonic()
        answers.append(client.chat.completions.create(model="m", messages=ticket(index)).choices[0].message.content)
        durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5.0)
    # Every request hung, concurrently, then got its answer.
    assert len(durations) == 4 and min(durations) >= 0.4
    assert time.monotonic() - started < 1.6 * 4 * 0.4
    assert sorted(answers) == sorted(expected_answer(ticket(index)) for index in range(4))  # type: ignore[type-var]
    assert sim.stats()["faults"] == {"hang": 4} and sim.stats()["successes"] == 4


# --- draws, validation and command line --------------------------------------------------------


def test_new_faults_leave_the_existing_draws_unchanged() -> None:
    def draws(**fields: Any) -> list[str | None]:
        behaviour = Behaviour(SimulatorConfig(seed=1, **fields))
        return [behaviour._draw_fault() for _ in range(2000)]

    old = draws(fail_rate=0.2, malformed_rate=0.1)
    # Knobs at zero (and styles, intervals, sizes) draw exactly what the old config drew.
    assert draws(fail_rate=0.2, malformed_rate=0.1, rate_limit_style="none", drip_interval=0.1, huge_bytes=10) == old
    # A new fault only takes draws that drew nothing before: its threshold comes after the old ones.
    mixed = draws(fail_rate=0.2, malformed_rate=0.1, drip_rate=0.1, html_rate=0.1, empty_rate=0.1,
                  empty_object_rate=0.1, huge_rate=0.1)  # fmt: skip
    assert [m for m, o in zip(mixed, old, strict=False) if o is not None] == [o for o in old if o is not None]
    assert {m for m, o in zip(mixed, old, strict=False) if o is None} == {
        None,
        "drip",
        "html",
        "empty",
        "empty_object",
        "huge",
    }


def test_fault_mix_is_roughly_honoured(make_sim: MakeSim) -> None:
    sim = make_sim(html_rate=0.2, empty_rate=0.2, empty_object_rate=0.2, huge_rate=0.2, huge_bytes=5000, seed=4)
    seen: dict[str, int] = {}
    for index in range(150):
        connection, response = post_chat(sim, index)
        try:
            body = response.read()
        finally:
            connection.close()
        kind = (
            "html" if response.headers["content-type"].startswith("text/html")
            else "empty" if body == b""
            else "empty_object" if body == b"{}"
            else "huge" if len(body) == 5000
            else "ok"
        )  # fmt: skip
        seen[kind] = seen.get(kind, 0) + 1
    stats = sim.stats()
    assert {name: count for name, count in seen.items() if name != "ok"} == stats["faults"]
    assert all(15 <= stats["faults"][name] <= 45 for name in ("html", "empty", "empty_object", "huge"))
    assert stats["successes"] == seen["ok"] + seen["huge"]


def test_fault_config_is_validated() -> None:
    with pytest.raises(ValueError, match="add up"):
        SimulatorConfig(fail_rate=0.5, drip_rate=0.3, huge_rate=0.3)
    with pytest.raises(ValueError, match="rate_limit_style"):
        SimulatorConfig(rate_limit_style="polite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drip_interval"):
        SimulatorConfig(drip_interval=0.0)
    with pytest.raises(ValueError, match="huge_bytes"):
        SimulatorConfig(huge_bytes=0)
    with pytest.raises(ValueError, match="always_429"):
        SimulatorConfig(always_429=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="html_rate"):
        SimulatorConfig(html_rate=1.5)
    assert SimulatorConfig(hang_rate=1.0).fault_rate == 1.0
    assert SimulatorConfig(empty_rate=0.5, empty_object_rate=0.5).fault_rate == 1.0


def test_command_line_flags_round_trip_the_fault_fields() -> None:
    config = SimulatorConfig(
        rate_limit_style="litellm",
        always_429=True,
        drip_rate=0.1,
        drip_interval=0.5,
        html_rate=0.1,
        empty_rate=0.05,
        empty_object_rate=0.05,
        huge_rate=0.01,
        huge_bytes=1234,
        rpm=100,
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = config_to_argv(config)
    assert "--always-429" in argv and "--rate-limit-style" in argv
    assert config_from_args(parser.parse_args(argv)) == config
    assert config_from_args(parser.parse_args(["--rate-limit-style", "reset"])).rate_limit_style == "reset"
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate-limit-style", "polite"])
