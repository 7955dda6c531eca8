"""The OpenAI-compatible simulator, exercised through the real openai client over real HTTP."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from dask_llm.simulator import (
    DEFAULT_LABELS,
    Simulator,
    SimulatorConfig,
    count_tokens,
    expected_answer,
    format_duration,
    prompt_tokens,
)
from dask_llm.simulator.__main__ import add_arguments
from dask_llm.simulator._cli import config_from_args, config_to_argv

ROOT = Path(__file__).resolve().parents[1]

MakeSim = Callable[..., Simulator]


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


def ticket(index: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Classify the ticket into one cloud service."},
        {"role": "user", "content": f"Ticket {index}: my VM can't reach the bucket!"},
    ]


def raw_request(sim: Simulator, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(sim.host, sim.port, timeout=5)
    try:
        connection.request(method, path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# --- answers and usage -------------------------------------------------------------------------


def test_label_answers_and_usage_match_expected(make_sim: MakeSim) -> None:
    sim = make_sim()
    client = client_for(sim)
    answers = set()
    for index in range(40):
        messages = ticket(index)
        reply = client.chat.completions.create(model="sim-model", messages=messages)
        answer = reply.choices[0].message.content
        assert answer == expected_answer(messages)
        assert answer in DEFAULT_LABELS
        assert reply.choices[0].finish_reason == "stop"
        assert reply.object == "chat.completion" and reply.model == "sim-model"
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == prompt_tokens(messages)
        assert reply.usage.completion_tokens == count_tokens(answer)
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        answers.add(answer)
    # A hash spreads prompts over the labels; a constant answer would be a bug.
    assert len(answers) >= 4
    stats = sim.stats()
    assert stats["successes"] == 40
    assert stats["prompt_tokens"] == sum(prompt_tokens(ticket(i)) for i in range(40))


def test_echo_mode_returns_last_user_message(make_sim: MakeSim) -> None:
    sim = make_sim(mode="echo")
    client = client_for(sim)
    for text in ["Hello, world!", "  spaces\tand\nnewlines  ", "unicode: café ☕ 東京", '{"json": [1, 2]}']:
        messages = [
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": text},
        ]
        reply = client.chat.completions.create(model="m", messages=messages)
        assert reply.choices[0].message.content == text == expected_answer(messages, mode="echo")
        assert reply.usage is not None and reply.usage.completion_tokens == count_tokens(text)


def test_json_response_format_wraps_the_label(make_sim: MakeSim) -> None:
    sim = make_sim(labels=("red", "green", "blue"))
    client = client_for(sim)
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    for response_format in [{"type": "json_object"}, schema]:
        messages = ticket(7)
        reply = client.chat.completions.create(model="m", messages=messages, response_format=response_format)
        content = reply.choices[0].message.content
        expected_label = expected_answer(messages, labels=("red", "green", "blue"))
        assert json.loads(content) == {"label": expected_label}
        assert content == expected_answer(messages, labels=("red", "green", "blue"), response_format=response_format)


def test_expected_answer_is_stable_and_ignores_key_order() -> None:
    # Pinned values: a change here changes every recorded answer in tests and demos.
    assert expected_answer([{"role": "user", "content": "hello"}]) == "billing"
    assert expected_answer([{"content": "hello", "role": "user"}]) == "billing"
    assert expected_answer([{"role": "user", "content": "hello"}], mode="echo") == "hello"
    with pytest.raises(ValueError):
        expected_answer([{"role": "user", "content": "hello"}], mode="shout")  # type: ignore[arg-type]


def test_tokenizer_counts_words_and_punctuation() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("") == 0
    assert count_tokens("don't stop") == 4  # don ' t stop
    # 3 per message on top of the content: deliberately not chars / 4.
    assert prompt_tokens([{"role": "system", "content": "a b"}, {"role": "user", "content": "c."}]) == 2 + 3 + 2 + 3


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates_the_answer(make_sim: MakeSim, field: str) -> None:
    sim = make_sim(mode="echo")
    client = client_for(sim)
    messages = [{"role": "user", "content": "one two, three four five"}]
    reply = client.chat.completions.create(model="m", messages=messages, **{field: 3})
    assert reply.choices[0].message.content == "one two,"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    reply = client.chat.completions.create(model="m", messages=messages, **{field: 6})
    assert reply.choices[0].message.content == "one two, three four five"
    assert reply.choices[0].finish_reason == "stop"


# --- Azure, auth and models --------------------------------------------------------------------


def test_azure_deployment_path_and_api_key(make_sim: MakeSim) -> None:
    sim = make_sim(api_key="secret", models=("gpt-sim",))
    azure = openai.AzureOpenAI(
        azure_endpoint=sim.azure_endpoint,
        api_key="secret",
        api_version="2024-10-21",
        azure_deployment="gpt-sim",
        max_retries=0,
    )
    messages = ticket(3)
    # The deployment, not the body's model, names the model.
    reply = azure.chat.completions.create(model="ignored", messages=messages)
    assert reply.choices[0].message.content == expected_answer(messages)
    assert reply.model == "gpt-sim"

    wrong_key = azure.with_options(api_key="nope")
    with pytest.raises(openai.AuthenticationError):
        wrong_key.chat.completions.create(model="ignored", messages=messages)
    unknown = openai.AzureOpenAI(
        azure_endpoint=sim.azure_endpoint,
        api_key="secret",
        api_version="2024-10-21",
        azure_deployment="other",
        max_retries=0,
    )
    with pytest.raises(openai.NotFoundError):
        unknown.chat.completions.create(model="ignored", messages=messages)


def test_wrong_api_key_gets_401(make_sim: MakeSim) -> None:
    sim = make_sim(api_key="secret")
    with pytest.raises(openai.AuthenticationError) as info:
        client_for(sim, api_key="wrong").chat.completions.create(model="m", messages=ticket(1))
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    reply = client_for(sim, api_key="secret").chat.completions.create(model="m", messages=ticket(1))
    assert reply.choices[0].message.content == expected_answer(ticket(1))
    assert sim.stats()["by_status"] == {"401": 1, "200": 1}


def test_unknown_model_gets_404_and_models_are_listed(make_sim: MakeSim) -> None:
    sim = make_sim(models=("alpha", "beta"))
    client = client_for(sim)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gamma", messages=ticket(1))
    assert info.value.code == "model_not_found"
    assert "The model `gamma` does not exist" in info.value.message
    assert client.chat.completions.create(model="beta", messages=ticket(1)).model == "beta"
    assert [model.id for model in client.models.list()] == ["alpha", "beta"]
    assert [model.id for model in client_for(make_sim()).models.list()] == ["sim-model"]


def test_unknown_path_and_bad_body_get_openai_error_bodies(make_sim: MakeSim) -> None:
    sim = make_sim()
    status, body = raw_request(sim, "GET", "/v2/nothing")
    assert status == 404
    assert set(body["error"]) >= {"message", "type", "code"} and body["error"]["code"] == "unknown_url"
    status, body = raw_request(sim, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = raw_request(sim, "POST", "/v1/chat/completions", b'{"model": "m", "messages": []}')
    assert status == 400 and body["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client_for(sim).chat.completions.create(model="m", messages=ticket(1), stream=True)
    assert raw_request(sim, "GET", "/health") == (200, {"status": "ok"})


# --- rate limits -------------------------------------------------------------------------------


def test_rpm_limit_gives_429_with_retry_after_and_ratelimit_headers(make_sim: MakeSim) -> None:
    # 60 rpm with 5 s of burst: 5 requests pass at once, the 6th is limited.
    sim = make_sim(rpm=60, burst_seconds=5.0)
    client = client_for(sim)
    for index in range(5):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=ticket(index))
        assert raw.headers["x-ratelimit-limit-requests"] == "60"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(4 - index)
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in raw.headers
        assert raw.parse().choices[0].message.content == expected_answer(ticket(index))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=ticket(5))
    headers = info.value.response.headers
    assert info.value.code == "rate_limit_exceeded"
    assert headers["retry-after"] == "1"  # one request refills in 1 s at 60 rpm
    assert 1 <= int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 4 <= float(headers["x-ratelimit-reset-requests"].removesuffix("s")) <= 5  # e.g. "4.977s"
    stats = sim.stats()
    assert stats["rate_limited"] == 1 and stats["successes"] == 5
    assert stats["by_status"] == {"200": 5, "429": 1}


def test_tpm_limit_charges_prompt_plus_max_tokens(make_sim: MakeSim) -> None:
    # 600 tpm with 5 s of burst: 50 tokens; each request costs its prompt tokens plus max_tokens.
    sim = make_sim(tpm=600, burst_seconds=5.0)
    client = client_for(sim)
    messages = [{"role": "user", "content": "hello"}]  # 1 + 3 = 4 prompt tokens
    cost = prompt_tokens(messages) + 20
    for _ in range(50 // cost):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=20)
        assert raw.headers["x-ratelimit-limit-tokens"] == "600"
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(50 - (50 // cost) * cost)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=messages, max_tokens=20)
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert sim.stats()["success_times"][0][1] == cost


def test_rate_limit_bucket_refills(make_sim: MakeSim) -> None:
    sim = make_sim(rpm=120, burst_seconds=5.0)  # 10 at once, then one every 500 ms
    client = client_for(sim)
    for index in range(10):
        client.chat.completions.create(model="m", messages=ticket(index))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=ticket(10))
    time.sleep(int(info.value.response.headers["retry-after-ms"]) / 1000 + 0.02)
    assert client.chat.completions.create(model="m", messages=ticket(10)).choices


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.12, "120ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (86.4, "1m26.4s"), (3600, "1h0m0s")],
)
def test_format_duration_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- faults ------------------------------------------------------------------------------------


def run_outcomes(sim: Simulator, n: int) -> list[str]:
    client = client_for(sim)
    outcomes = []
    for index in range(n):
        try:
            reply = client.chat.completions.create(model="m", messages=ticket(index))
        except openai.InternalServerError:
            outcomes.append("500")
        # A malformed body (200, truncated JSON) surfaces as json.JSONDecodeError raised by create()
        # itself: not an openai.APIError, and the client does not retry it.
        except json.JSONDecodeError:
            outcomes.append("malformed")
        else:
            assert reply.choices[0].message.content == expected_answer(ticket(index))
            outcomes.append("ok")
    return outcomes


def test_fault_rates_are_roughly_honoured_and_seeded(make_sim: MakeSim) -> None:
    sim = make_sim(fail_rate=0.2, malformed_rate=0.1, seed=1)
    outcomes = run_outcomes(sim, 300)
    assert 0.13 <= outcomes.count("500") / 300 <= 0.27
    assert 0.05 <= outcomes.count("malformed") / 300 <= 0.15
    stats = sim.stats()
    assert stats["successes"] == outcomes.count("ok")
    assert stats["by_status"] == {"500": outcomes.count("500"), "200": 300 - outcomes.count("500")}
    assert sum(stats["success_by_prompt"].values()) == outcomes.count("ok")
    # The same seed draws the same faults, on a fresh server or after a reset.
    sim.reset()
    assert run_outcomes(sim, 300) == outcomes
    assert run_outcomes(make_sim(fail_rate=0.2, malformed_rate=0.1, seed=2), 300) != outcomes


def test_fail_status_and_spurious_rate_limits(make_sim: MakeSim) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        client_for(make_sim(fail_rate=1.0, fail_status=503)).chat.completions.create(model="m", messages=ticket(1))
    assert failed.value.status_code == 503
    sim = make_sim(rate_limit_rate=1.0)
    with pytest.raises(openai.RateLimitError) as limited:
        client_for(sim).chat.completions.create(model="m", messages=ticket(1))
    assert limited.value.response.headers["retry-after"] == "1"
    assert "x-ratelimit-limit-requests" not in limited.value.response.headers
    assert sim.stats()["successes"] == 0 and sim.stats()["rate_limited"] == 1


def test_hang_makes_the_client_time_out_and_stop_cancels_it() -> None:
    sim = Simulator(SimulatorConfig(hang_rate=1.0, hang_seconds=30.0)).start()
    try:
        client = client_for(sim, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=ticket(1))
        assert time.monotonic() - started < 3
        stats = sim.stats()
        assert stats["faults"] == {"hang": 1} and stats["in_flight"] == 1 and stats["successes"] == 0
    finally:
        started = time.monotonic()
        sim.stop()
    # The 30 s sleep is cancelled, not waited for.
    assert time.monotonic() - started < 3


def test_latency_is_slept_concurrently(make_sim: MakeSim) -> None:
    sim = make_sim(latency=0.3, latency_sd=0.1, seed=3)
    client = openai.AsyncOpenAI(base_url=sim.url, api_key="k", max_retries=0)

    async def timed(index: int) -> float:
        started = time.monotonic()
        await client.chat.completions.create(model="m", messages=ticket(index))
        return time.monotonic() - started

    async def run_all() -> list[float]:
        try:
            return await asyncio.gather(*(timed(index) for index in range(60)))
        finally:
            await client.close()

    started = time.monotonic()
    durations = asyncio.run(run_all())
    elapsed = time.monotonic() - started
    # Client overhead adds to every duration, but not to their spread.
    assert min(durations) >= 0.05
    assert statistics.stdev(durations) > 0.04  # not constant
    # 60 requests of ~0.3 s each overlap (18 s if served one by one): latency is a sleep, not a blocked server.
    assert elapsed < 5
    assert sim.stats()["max_in_flight"] >= 20


def test_constant_latency(make_sim: MakeSim) -> None:
    client = client_for(make_sim(latency=0.2))
    client.chat.completions.create(model="m", messages=ticket(0))  # connect outside the timing
    started = time.monotonic()
    client.chat.completions.create(model="m", messages=ticket(1))
    assert 0.2 <= time.monotonic() - started < 1.0


def test_latency_draws_have_the_configured_mean_and_sd() -> None:
    # The distribution itself, drawn without HTTP so that client overhead does not blur it.
    from dask_llm.simulator._behaviour import Behaviour

    behaviour = Behaviour(SimulatorConfig(latency=0.3, latency_sd=0.1, seed=3))
    draws = [behaviour._latency() for _ in range(20_000)]
    assert statistics.mean(draws) == pytest.approx(0.3, abs=0.005)
    assert statistics.stdev(draws) == pytest.approx(0.1, abs=0.005)
    assert min(draws) > 0


# --- stats -------------------------------------------------------------------------------------


def test_stats_count_successes_per_prompt_and_reset(make_sim: MakeSim) -> None:
    sim = make_sim(rpm=60, burst_seconds=3.0)  # 3 requests at once
    client = client_for(sim)
    for prompt in ["a", "b", "a"]:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "c"}])
    stats = sim.stats()
    assert stats["success_by_prompt"] == {"a": 2, "b": 1}
    assert stats["requests"] == 4 and stats["successes"] == 3
    assert [tokens for _, tokens in stats["success_times"]] == [5, 5, 5]  # 1 + 3 prompt, 1 completion
    assert all(0 <= at < 5 for at, _ in stats["success_times"])
    assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1
    # The HTTP route serves the same dict.
    assert raw_request(sim, "GET", "/sim/stats") == (200, stats)

    sim.reset()
    stats = sim.stats()
    assert stats["requests"] == 0 and stats["success_by_prompt"] == {} and stats["by_status"] == {}
    # The buckets are full again.
    for prompt in ["d", "e", "f"]:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
    assert sim.stats()["successes"] == 3
    assert raw_request(sim, "POST", "/sim/reset")[0] == 200
    assert sim.stats()["successes"] == 0


# --- configuration, subprocess and command line ------------------------------------------------


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="add up"):
        SimulatorConfig(fail_rate=0.6, malformed_rate=0.6)
    with pytest.raises(ValueError):
        SimulatorConfig(fail_status=404)
    with pytest.raises(ValueError):
        SimulatorConfig(rpm=0)
    assert SimulatorConfig(labels=["x", "y"]).labels == ("x", "y")  # type: ignore[arg-type]


def test_command_line_flags_round_trip_the_config() -> None:
    config = SimulatorConfig(
        mode="echo",
        labels=("x", "y"),
        latency=0.25,
        latency_sd=0.1,
        rpm=100,
        tpm=5000,
        burst_seconds=2.0,
        fail_rate=0.1,
        fail_status=502,
        rate_limit_rate=0.05,
        hang_rate=0.01,
        hang_seconds=3.0,
        malformed_rate=0.02,
        api_key="secret",
        models=("a", "b"),
        seed=None,
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(config_to_argv(config))
    assert config_from_args(args) == config
    assert config_from_args(parser.parse_args([])) == SimulatorConfig()


def test_subprocess_simulator_serves_and_dies_on_exit() -> None:
    with Simulator.subprocess(SimulatorConfig(mode="echo", api_key="secret")) as sim:
        pid = sim.pid
        client = client_for(sim, api_key="secret")  # type: ignore[arg-type]
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert reply.choices[0].message.content == "ping"
        assert sim.stats()["success_by_prompt"] == {"ping": 1}
        sim.reset()
        assert sim.stats()["requests"] == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_command_line_exits_cleanly_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "dask_llm.simulator", "--port", "0", "--rpm", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("dask-llm simulator listening on http://127.0.0.1:")
        assert line.rstrip().endswith("/v1")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0
    assert stdout.strip() == "dask-llm simulator stopped"
    assert "Traceback" not in stderr
