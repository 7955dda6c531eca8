"""Configuration objects, retry timing, error classification and the public API."""

from __future__ import annotations

import datetime
import email.utils
import pickle
import random
import subprocess
import sys

import httpx2
import openai
import pytest

import dask_llm
from dask_llm import ConfigError, Endpoint, RetryPolicy
from dask_llm._calls._client import Kind, classify, parse_duration, retry_hint
from dask_llm._core._prompt import Prompt


def test_public_api_is_exactly_all():
    public = {n for n in dir(dask_llm) if not n.startswith("_")} - {"simulator", "cli"}
    assert public == set(dask_llm.__all__) - {"__version__"}
    assert dask_llm.__all__ == sorted(dask_llm.__all__)
    for name in dask_llm.__all__:  # each one loads, lazily
        assert getattr(dask_llm, name) is not None


def test_importing_the_package_and_its_command_line_loads_nothing_heavy():
    code = (
        "import sys, dask_llm, dask_llm.simulator, dask_llm.cli; dask_llm.cli.build_parser(); "
        "print(sorted(m for m in ('pandas', 'pyarrow', 'openai', 'distributed', 'dask.dataframe') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_accessor_is_registered_whenever_the_frame_library_is_imported():
    code = (
        "import dask_llm; import pandas as pd; import dask.dataframe as dd; "
        "df = pd.DataFrame({'a': [1]}); print(hasattr(df, 'llm'), hasattr(dd.from_pandas(df, npartitions=1), 'llm'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True True", out.stderr


def test_endpoint_fills_from_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:9999/v1")
    ep = Endpoint().resolve()
    assert (ep.base_url, ep.api_key) == ("http://localhost:9999/v1", "sk-env")
    # Explicit fields win over the environment.
    assert Endpoint(api_key="sk-arg").resolve().api_key == "sk-arg"
    assert "sk-env" not in repr(ep)


def test_official_api_without_key_is_a_config_error(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="no API key.*OPENAI_API_KEY"):
        Endpoint().resolve()
    # A local server needs no key.
    assert Endpoint(base_url="http://localhost:8000/v1").resolve().api_key


def test_azure_from_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-key")
    ep = Endpoint().resolve()
    assert ep.is_azure and ep.api_key == "az-key" and ep.api_version


def test_bad_url_and_timeout_are_config_errors():
    with pytest.raises(ConfigError, match="http://"):
        Endpoint(base_url="localhost:8000", api_key="k").resolve()
    with pytest.raises(ConfigError, match="timeout"):
        Endpoint(base_url="http://x", api_key="k", timeout=0).resolve()
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)


def test_retry_delay_is_jittered_exponential_and_honours_retry_after():
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=8.0)
    rng = random.Random(0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 8.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= cap
        assert max(delays) > cap / 2  # jitter spreads over the whole range
    waits = [policy.delay(1, 5.0, rng) for _ in range(100)]
    assert min(waits) >= 5.0 and max(waits) <= 5.0 * 1.1 + 0.05
    assert RetryPolicy(max_retry_after=2.0).delay(1, 600.0, rng) < 3.0


def test_rate_limit_waits_grow_with_the_streak_and_never_undercut_the_hint():
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=30.0)
    rng = random.Random(0)
    for streak, ceiling in [(1, 0.5), (3, 2.0), (7, 30.0), (12, 30.0)]:
        waits = [policy.rate_limit_delay(streak, None, rng) for _ in range(200)]
        assert ceiling / 2 <= min(waits) and max(waits) <= ceiling
    # A small hint does not let six 429s use up a row in half a second: the
    # back-off grows regardless, and 429s count toward no attempt limit.
    total = sum(policy.rate_limit_delay(k, 0.01, rng) for k in range(1, 7))
    assert total > 5.0
    hinted = [policy.rate_limit_delay(1, 20.0, rng) for _ in range(100)]
    assert min(hinted) >= 20.0 and max(hinted) <= 20.0 * 1.1 + 0.05


def _status_error(status: int, body: dict, headers: dict | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://x/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    client = openai.OpenAI(api_key="k", base_url="http://x/v1")
    return client._make_status_error_from_response(response)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, "rate_limit_exceeded", Kind.RATE_LIMITED),
        (429, "insufficient_quota", Kind.AUTH),
        (401, "invalid_api_key", Kind.AUTH),
        (403, None, Kind.AUTH),
        (404, "model_not_found", Kind.NOT_FOUND),
        (400, "context_length_exceeded", Kind.ROW),
        (500, None, Kind.TRANSIENT),
        (503, None, Kind.TRANSIENT),
        (408, None, Kind.TRANSIENT),
    ],
)
def test_classify_status_errors(status, code, kind):
    exc = _status_error(status, {"error": {"message": "boom", "code": code}}, {"retry-after": "3"})
    failure = classify(exc)
    assert failure.kind is kind
    assert "boom" in failure.message and str(status) in failure.message
    if kind is Kind.RATE_LIMITED:
        assert failure.retry_after == 3.0


def test_classify_transport_errors_and_reraises_bugs():
    request = httpx2.Request("POST", "http://x")
    assert classify(openai.APITimeoutError(request)).kind is Kind.TIMEOUT
    assert classify(openai.APIConnectionError(request=request)).kind is Kind.CONNECTION
    with pytest.raises(ZeroDivisionError):
        classify(ZeroDivisionError())


def test_every_retry_hint_providers_send():
    assert retry_hint({"retry-after-ms": "250"}) == 0.25
    assert retry_hint({"retry-after": "2"}) == 2.0
    assert retry_hint({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    future = email.utils.format_datetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30))
    assert 25 < retry_hint({"retry-after": future}) <= 31
    assert retry_hint({"llm_provider-retry-after": "60"}) == 60.0  # LiteLLM's proxy
    assert retry_hint({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}) == 1.0
    assert retry_hint({"x-ratelimit-reset-tokens": "150ms"}) == 0.15
    assert retry_hint({}, "Rate limit reached for m. Please try again in 1.234s.") == 1.234
    assert retry_hint({}, "Please try again in 6m0s.") == 360.0
    assert retry_hint({}) is None and retry_hint({}, "slow down") is None
    assert parse_duration("1h2m3.5s") == 3723.5 and parse_duration("soon") is None


def test_prompt_columns_in_order_of_appearance():
    p = Prompt("{b} and {a} and {b:>5}", system="about {c}")
    assert p.columns == ("b", "a", "c")
    with pytest.raises(dask_llm.TemplateError, match="attribute or index"):
        Prompt("{a.upper}")


def test_config_and_errors_survive_pickling():
    ep = Endpoint(base_url="http://x/v1", api_key="k")
    assert pickle.loads(pickle.dumps(ep)) == ep
    err = pickle.loads(pickle.dumps(dask_llm.RowError("row 3 failed", row=3)))
    assert err.row == 3 and str(err) == "row 3 failed"
    assert str(pickle.loads(pickle.dumps(dask_llm.TemplateError("no 'x'")))) == "no 'x'"
