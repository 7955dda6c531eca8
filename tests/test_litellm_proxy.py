"""LiteLLM's proxy, a real third-party OpenAI-compatible server, through the
real openai client: the harness in ``tests/_litellm.py`` and the facts of
the proxy's behaviour that dask-llm's client relies on.

Skipped when LiteLLM is not installed (``bash ci/test.sh`` installs it into
``.venv-litellm`` and sets ``DASK_LLM_LITELLM``). Each proxy takes ~10-20 s
to start, so each config is started once per module.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from dask_llm.simulator import Simulator, SimulatorConfig, prompt_tokens

from ._litellm import (
    RATE_LIMITED_ROUTER_SETTINGS,
    LiteLLMProxy,
    litellm_proxy,
    mock_model,
    require_executable,
    upstream_model,
)

pytestmark = pytest.mark.slow

MOCK_ANSWER = "hello from the mock"
#: LiteLLM's usage block for a mock_response, whatever the prompt.
MOCK_USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
MESSAGES = [{"role": "user", "content": "Which service stores blobs?"}]


def client_for(proxy: LiteLLMProxy, **options: Any) -> openai.OpenAI:
    base_url, master_key = proxy
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 30.0)
    return openai.OpenAI(base_url=base_url, api_key=master_key, **options)


def rate_headers(headers: Any) -> dict[str, str]:
    """The headers a rate limiter would read, in the order sent: any
    ``*ratelimit*`` and any ``*retry-after`` / ``*retry-after-ms``."""
    return {
        name: value
        for name, value in headers.items()
        if "ratelimit" in name or name.endswith(("retry-after", "retry-after-ms"))
    }


def show(label: str, status: int, headers: Any, body: str) -> None:
    """Print a response for the record (visible with ``pytest -s``)."""
    print(f"\n--- {label}: HTTP {status}")
    for name, value in headers.items():
        print(f"{name}: {value}")
    print(body)


def wait_for_room_in_minute(seconds: float) -> None:
    """LiteLLM counts requests per UTC wall-clock minute: wait, if need be,
    until at least `seconds` are left in the current one, so that a burst
    does not straddle a reset."""
    now = dt.datetime.now(dt.UTC)
    left = 60 - now.second - now.microsecond / 1e6
    if left < seconds:
        time.sleep(left + 0.2)


# --- config (1): models answering with mock_response -------------------------


@pytest.fixture(scope="module")
def mock_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    """Default router settings (simple-shuffle): ``rpm:`` is reported, not enforced."""
    require_executable()
    models = [mock_model("mock-a", MOCK_ANSWER), mock_model("mock-rpm3", MOCK_ANSWER, rpm=3)]
    with litellm_proxy(tmp_path_factory.mktemp("litellm-mock"), models) as proxy:
        yield proxy


def test_mock_chat_completion(mock_proxy: LiteLLMProxy) -> None:
    raw = client_for(mock_proxy).chat.completions.with_raw_response.create(model="mock-a", messages=MESSAGES)
    show("mock 200", raw.status_code, raw.headers, raw.text)
    reply = raw.parse()
    assert reply.choices[0].message.content == MOCK_ANSWER
    assert reply.usage is not None
    assert reply.usage.model_dump(include=set(MOCK_USAGE)) == MOCK_USAGE
    # No rpm on the model: no rate-limit headers at all.
    assert rate_headers(raw.headers) == {}
    assert raw.headers["x-litellm-model-group"] == "mock-a"


def test_rpm_is_not_enforced_under_default_routing(mock_proxy: LiteLLMProxy) -> None:
    """Without usage-based-routing-v2 an rpm-3 model admits every request
    at once (no 429, no queueing): only the headers count, down below zero."""
    client = client_for(mock_proxy)
    remaining = []
    for _ in range(5):
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(model="mock-rpm3", messages=MESSAGES)
        assert raw.status_code == 200
        assert time.monotonic() - started < 5
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    print(f"\nx-ratelimit-remaining-requests under simple-shuffle, rpm 3: {remaining}")
    assert remaining[-1] < 0
    assert remaining == sorted(remaining, reverse=True)


def test_a_wrong_key_is_refused(mock_proxy: LiteLLMProxy) -> None:
    """Without a database any key but the master key is refused, with a 400
    (not a 401): the proxy has nowhere to look virtual keys up."""
    for key in ("sk-wrong", "wrong"):
        client = openai.OpenAI(base_url=mock_proxy.base_url, api_key=key, max_retries=0, timeout=30.0)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="mock-a", messages=MESSAGES)
        response = caught.value.response
        show(f"api_key={key!r}", response.status_code, response.headers, response.text)
        assert isinstance(caught.value, openai.BadRequestError)
        assert response.json() == {
            "error": {"message": "No connected db.", "type": "no_db_connection", "param": None, "code": "400"}
        }


def test_unknown_model_is_a_400(mock_proxy: LiteLLMProxy) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(mock_proxy).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "Invalid model name passed in model=no-such-model" in caught.value.response.text


# --- config (2): a model forwarded to an upstream OpenAI-compatible server ---


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiteLLMProxy, Simulator, Simulator]]:
    """The proxy in front of two simulators: one echoing, one answering
    every request with an OpenAI-style 429 (``retry-after: 1``)."""
    require_executable()
    with (
        Simulator(SimulatorConfig(latency=0.05, mode="echo")) as sim,
        Simulator(SimulatorConfig(mode="echo", always_429=True, rate_limit_style="openai", rpm=100)) as sim_429,
    ):
        models = [upstream_model("echo", sim.url), upstream_model("upstream-429", sim_429.url)]
        with litellm_proxy(
            tmp_path_factory.mktemp("litellm-upstream"), models, router_settings={"num_retries": 0}
        ) as proxy:
            yield proxy, sim, sim_429


def test_upstream_chat_completion(upstream: tuple[LiteLLMProxy, Simulator, Simulator]) -> None:
    proxy, sim, _ = upstream
    before = sim.stats()["successes"]
    raw = client_for(proxy).chat.completions.with_raw_response.create(model="echo", messages=MESSAGES)
    show("upstream 200", raw.status_code, raw.headers, raw.text)
    reply = raw.parse()
    assert reply.choices[0].message.content == MESSAGES[0]["content"]
    assert sim.stats()["successes"] == before + 1
    # The upstream's usage block is passed on as it is.
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == prompt_tokens(MESSAGES)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # Upstream headers come back prefixed with llm_provider-; no rpm, no x-ratelimit-*.
    assert raw.headers["llm_provider-content-type"] == "application/json"
    assert not [name for name in raw.headers if name.startswith("x-ratelimit-")]


def test_upstream_429_is_passed_on(upstream: tuple[LiteLLMProxy, Simulator, Simulator]) -> None:
    """An upstream 429 comes back as a 429 whose upstream headers are all
    prefixed ``llm_provider-`` (``retry-after: 1`` becomes
    ``llm_provider-retry-after: 1``); only the upstream's
    ``x-ratelimit-{limit,remaining}-requests`` are also copied unprefixed."""
    proxy, _, sim_429 = upstream
    before = sim_429.stats()["by_status"].get("429", 0)
    with pytest.raises(openai.RateLimitError) as caught:
        client_for(proxy).chat.completions.create(model="upstream-429", messages=MESSAGES)
    response = caught.value.response
    show("upstream 429 passed on", response.status_code, response.headers, response.text)
    assert sim_429.stats()["by_status"]["429"] == before + 1  # num_retries: 0, no retry
    assert response.headers["llm_provider-retry-after"] == "1"
    assert "retry-after" not in response.headers
    assert response.headers["x-ratelimit-limit-requests"] == "100"
    assert "x-ratelimit-reset-requests" not in response.headers
    error = response.json()["error"]
    assert error["type"] == "throttling_error"
    assert error["code"] == "429"
    assert error["message"].startswith("litellm.RateLimitError: RateLimitError: OpenAIException - ")


# --- config (3): rpm-limited models answering 429 ----------------------------


@pytest.fixture(scope="module")
def limited_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    require_executable()
    models = [
        mock_model("limited-60", MOCK_ANSWER, rpm=60),
        mock_model("limited-600", MOCK_ANSWER, rpm=600),
        mock_model("limited-3", MOCK_ANSWER, rpm=3),
        mock_model("limited-20", MOCK_ANSWER, rpm=20),  # for dask-llm's own run, below
    ]
    with litellm_proxy(
        tmp_path_factory.mktemp("litellm-limited"), models, router_settings=RATE_LIMITED_ROUTER_SETTINGS
    ) as proxy:
        yield proxy


def test_rpm_limit_answers_429(limited_proxy: LiteLLMProxy) -> None:
    """rpm 60: 59 requests succeed in a minute, the 60th gets a 429 that
    carries only ``llm_provider-retry-after: 60``; the 200s carry
    ``x-ratelimit-limit-requests`` and ``x-ratelimit-remaining-requests``."""
    client = client_for(limited_proxy)
    wait_for_room_in_minute(20)
    remaining = []
    for _ in range(59):
        raw = client.chat.completions.with_raw_response.create(model="limited-60", messages=MESSAGES)
        assert raw.status_code == 200
        assert raw.headers["x-ratelimit-limit-requests"] == "60"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        last_200 = raw
    show("rpm 60, 59th 200", last_200.status_code, last_200.headers, last_200.text)
    assert remaining == list(range(59, 0, -1))  # it says 1 left, yet refuses the next
    assert rate_headers(last_200.headers) == {
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-limit-requests": "60",
    }

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="limited-60", messages=MESSAGES)
    response = caught.value.response
    show("rpm 60, 60th: 429", response.status_code, response.headers, response.text)
    assert rate_headers(response.headers) == {"llm_provider-retry-after": "60"}
    assert "retry-after" not in response.headers
    assert sorted(response.headers) == sorted(
        [
            "date",
            "llm_provider-retry-after",
            "x-litellm-call-id",
            "x-litellm-response-cost",
            "x-litellm-key-spend",
            "content-length",
            "content-type",
            "vary",
            "x-frame-options",
            "content-security-policy",
            "x-content-type-options",
        ]
    )
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["type"] == "throttling_error"
    assert error["code"] == "429"
    assert error["param"] is None
    message = error["message"]
    assert message.startswith(
        "litellm.RateLimitError: No deployments available for selected model. Passed model=limited-60. Deployments={'"
    )
    assert "'current_rpm': 59, 'rpm_limit': 60}" in message
    assert message.endswith(
        "\n\nLiteLLM: model group 'limited-60' failed with the error above. No fallback was attempted."
    )
    # What the openai client makes of it.
    print(f"openai.RateLimitError: message={caught.value.message!r} body={caught.value.body!r}")
    assert caught.value.body == error


def test_rpm_600_headers(limited_proxy: LiteLLMProxy) -> None:
    raw = client_for(limited_proxy).chat.completions.with_raw_response.create(model="limited-600", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers["x-ratelimit-limit-requests"] == "600"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) in range(590, 600)
    assert "x-ratelimit-reset-requests" not in raw.headers
    assert "x-ratelimit-limit-tokens" not in raw.headers


# --- dask-llm through the proxy -------------------------------------------------


def test_enrich_through_the_proxy(upstream: tuple[LiteLLMProxy, Simulator, Simulator]) -> None:
    import pandas as pd

    import dask_llm

    proxy, _sim, _ = upstream
    df = pd.DataFrame({"text": [f"ticket {i}" for i in range(40)]})
    endpoint = dask_llm.Endpoint(base_url=proxy.base_url, api_key=proxy.master_key)
    out = dask_llm.enrich(df, "Say: {text}", "ans", "echo", endpoint=endpoint, threads=8)
    assert (out["ans"] == "Say: " + out["text"]).all() and out["ans_error"].isna().all()
    assert (out["ans_prompt_tokens"] > 0).all()  # the upstream's usage, passed on


def test_a_checkpointed_run_through_the_proxy_resumes_under_other_partitions(
    upstream: tuple[LiteLLMProxy, Simulator, Simulator], tmp_path: Path
) -> None:
    """A run through a server we did not write stops after one partition; the
    rerun, under another partitioning, calls only the rows not answered, and
    the checkpoint reads back as each row once."""
    import dask
    import dask.dataframe as dd
    import pandas as pd

    import dask_llm

    proxy, sim, _ = upstream
    df = pd.DataFrame({"text": [f"resume {i}" for i in range(60)]})
    endpoint = dask_llm.Endpoint(base_url=proxy.base_url, api_key=proxy.master_key)
    ckpt = str(tmp_path / "ckpt")

    def enrich(parts: int) -> Any:
        return dask_llm.enrich(dd.from_pandas(df, npartitions=parts), "Say: {text}", "ans", "echo",
                               endpoint=endpoint, threads=8, checkpoint=ckpt)  # fmt: skip

    before = sim.stats()["successes"]
    with dask.config.set(scheduler="sync"):
        enrich(4).partitions[1].compute()  # a quarter of the rows, then the run stops
        assert sim.stats()["successes"] - before == 15
        out = enrich(3).compute()
    assert sim.stats()["successes"] - before == 60, "the 15 answered rows are not called again"
    assert (out["ans"] == "Say: " + out["text"]).all() and out["ans_error"].isna().all()
    back = dd.read_parquet(ckpt).compute()
    assert sorted(back["text"]) == sorted(df["text"]) and back.index.is_unique


def test_enrich_against_an_rpm_limited_model_loses_no_row(limited_proxy: LiteLLMProxy) -> None:
    """24 rows against a model the proxy limits to 20 requests a minute (19
    admitted): the 429s carry only ``llm_provider-retry-after: 60``, and the
    200s announce the limit; without a budget, every row is answered."""
    import pandas as pd

    import dask_llm

    # The first wave (all 24 rows at once, 32 threads) meets the limit before
    # any answer can teach the budget it; 19 are admitted, the rest once
    # LiteLLM's count resets at the next UTC minute, whatever its 60 s hint
    # says: with the hint capped at 5 s the rows look again often enough not
    # to wait a minute more, and few enough are left that pacing them at the
    # learned 20 a minute takes seconds. The first wave must not straddle a
    # minute (then nothing is limited).
    second = time.time() % 60
    if second > 55:
        time.sleep(61 - second)
    df = pd.DataFrame({"text": [f"ticket {i}" for i in range(24)]})
    endpoint = dask_llm.Endpoint(base_url=limited_proxy.base_url, api_key=limited_proxy.master_key)
    retry = dask_llm.RetryPolicy(max_retry_after=5.0)
    start = time.monotonic()
    out = dask_llm.enrich(df, "Say: {text}", "ans", "limited-20", endpoint=endpoint, threads=32, retry=retry)
    elapsed = time.monotonic() - start
    print(f"\n24 rows at rpm 20 through LiteLLM: {elapsed:.1f} s, {int(out['ans_rate_limited'].sum())} 429s")
    assert out["ans_error"].isna().all(), out["ans_error"].dropna().head()
    assert (out["ans"] == MOCK_ANSWER).all()
    assert out["ans_rate_limited"].sum() > 0  # the limit was met, and waited out
    assert elapsed < 100
