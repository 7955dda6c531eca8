"""What happens off the happy path: rate limits are waits, every attempt is
bounded, stopping is prompt, a broken endpoint stops the job early, and the
client cache and templates cannot break a job.

Every test is bounded in time; every server is a simulator the test starts.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import dask_llm
from dask_llm import EndpointError, RetryPolicy, TemplateError
from dask_llm.simulator import Simulator

from .conftest import API_KEY, endpoint_for


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def answered(out: pd.DataFrame) -> bool:
    return bool((out["ans"] == "Say: " + out["text"]).all() and out["ans_error"].isna().all())


# ---------------------------------------------------------------- 429 is a wait


@pytest.mark.parametrize("style", ["openai", "retry-after", "retry-after-ms", "litellm", "reset", "body", "none"])
def test_no_row_is_lost_to_429s_without_a_budget(start_sim: Callable[..., Simulator], style: str) -> None:
    # 32 threads against an endpoint limited to 2,400 requests per minute, no
    # budget given: the adaptive default and the 429 waits keep every row.
    sim = start_sim(mode="echo", latency=0.2, rpm=2400, burst_seconds=2.0, rate_limit_style=style)
    out = dask_llm.enrich(frame(200), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=32)
    assert answered(out)
    stats = sim.stats()
    assert stats["rate_limited"] < 0.2 * stats["requests"], stats["rate_limited"]
    assert out["ans_rate_limited"].sum() == stats["rate_limited"]


def test_429s_do_not_use_up_attempts(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", rate_limit_rate=0.5, rate_limit_style="retry-after-ms", seed=1)
    policy = RetryPolicy(max_attempts=1, backoff_initial=0.01, backoff_max=0.02)
    out = dask_llm.enrich(frame(40), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), retry=policy,
                          budget=False)  # fmt: skip
    assert answered(out)
    assert out["ans_rate_limited"].sum() > 10 and (out["ans_attempts"] == 1 + out["ans_rate_limited"]).all()


def test_a_row_rate_limited_past_its_total_wait_fails_with_a_clear_error(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", always_429=True, rate_limit_style="retry-after-ms")
    policy = RetryPolicy(backoff_initial=0.05, backoff_max=0.1, max_rate_limit_wait=0.5)
    start = time.monotonic()
    out = dask_llm.enrich(frame(3), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), retry=policy, budget=False)
    assert time.monotonic() - start < 10
    assert out["ans_error"].str.startswith("rate limited for").all()
    assert (out["ans_rate_limited"] >= 1).all() and (out["ans_attempts"] == out["ans_rate_limited"]).all()


def test_budget_false_turns_the_adaptive_default_off(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.2, rpm=600, burst_seconds=1.0, rate_limit_style="retry-after")
    policy = RetryPolicy(max_rate_limit_wait=0.0)  # a 429 fails the row at once
    out = dask_llm.enrich(frame(60), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=32,
                          budget=False, retry=policy)  # fmt: skip
    assert out["ans_error"].notna().sum() > 10  # what happens without a budget and with no patience


# ---------------------------------------------------------------- every attempt is bounded


def test_timeout_bounds_the_whole_attempt_even_against_a_drip_fed_body(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", drip_rate=1.0, drip_interval=0.3)
    endpoint = endpoint_for(sim, timeout=1.5)
    policy = RetryPolicy(max_attempts=2, backoff_initial=0.01)
    start = time.monotonic()
    out = dask_llm.enrich(frame(2), "Say: {text}", "ans", "m", endpoint=endpoint, retry=policy, budget=False)
    elapsed = time.monotonic() - start
    assert elapsed < 2 * 1.5 + 1.5, elapsed  # two attempts of 1.5 s, plus slack
    assert out["ans_error"].str.contains("no complete answer within 1.5 s").all()


def test_an_answer_larger_than_the_cap_fails_its_attempt_without_filling_memory(
    start_sim: Callable[..., Simulator],
) -> None:
    sim = start_sim(mode="echo", huge_rate=1.0, huge_bytes=60_000_000)
    endpoint = endpoint_for(sim, max_response_bytes=4_000_000)
    before = _rss()
    out = dask_llm.enrich(frame(2), "Say: {text}", "ans", "m", endpoint=endpoint, budget=False)
    assert out["ans_error"].str.contains("larger than 4,000,000 bytes").all()
    assert _rss() - before < 40_000_000


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------- stopping is prompt

DRIVER = """
import sys, time, dask, dask.dataframe as dd, pandas as pd, dask_llm
base_url, key, scheduler = sys.argv[1:4]
df = pd.DataFrame({"text": [f"row {i}" for i in range(64)]})
ep = dask_llm.Endpoint(base_url=base_url, api_key=key)          # default timeout: 120 s
if scheduler == "pandas":
    dask_llm.enrich(df, "Say: {text}", "ans", "m", endpoint=ep, threads=8)
else:
    with dask.config.set(scheduler=scheduler, num_workers=2):
        dask_llm.enrich(dd.from_pandas(df, npartitions=4), "Say: {text}", "ans", "m", endpoint=ep,
                        threads=8).compute()
"""


@pytest.mark.parametrize("scheduler", ["pandas", "sync", "threads"])
def test_ctrl_c_stops_calls_in_flight_within_two_seconds(start_sim: Callable[..., Simulator], scheduler: str) -> None:
    sim = start_sim(mode="echo", hang_rate=1.0, hang_seconds=60)  # a silent server
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, sim.url, API_KEY, scheduler],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait(lambda: sim.stats()["in_flight"] >= 8, 60, "no call in flight")
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        stopped = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert stopped < 2.5, f"{stopped:.1f} s from Ctrl+C to exit"


def test_a_cancelled_future_stops_its_partitions_calls_on_a_cluster(
    process_cluster: object, start_sim: Callable[..., Simulator]
) -> None:
    client = process_cluster
    sim = start_sim(mode="echo", hang_rate=1.0, hang_seconds=60)
    out = dask_llm.enrich(dd.from_pandas(frame(64), npartitions=4), "Say: {text}", "ans", "m",
                          endpoint=endpoint_for(sim, timeout=120), threads=8)  # fmt: skip
    future = client.compute(out)  # type: ignore[attr-defined]
    try:
        _wait(lambda: sim.stats()["in_flight"] >= 8, 60, "no call in flight")
        start = time.monotonic()
        future.cancel()
        _wait(lambda: sim.stats()["in_flight"] == 0, 10, "calls still in flight after the cancel")
        stopped = time.monotonic() - start
        requests = sim.stats()["requests"]
        time.sleep(1.0)
        assert sim.stats()["requests"] == requests, "partitions kept calling"
    finally:
        future.cancel()
    assert stopped < 2.5


def test_an_endpoint_error_stops_the_other_calls_in_flight(start_sim: Callable[..., Simulator]) -> None:
    # Rows 1.. hang; one row is refused with 401: the job ends at once, with
    # the 401, instead of after the hangs.
    sim = start_sim(mode="echo", hang_rate=1.0, hang_seconds=60)
    bad = endpoint_for(sim, api_key="wrong", timeout=120)
    start = time.monotonic()
    with pytest.raises(dask_llm.AuthenticationError):
        dask_llm.enrich(frame(16), "Say: {text}", "ans", "m", endpoint=bad, threads=8)
    assert time.monotonic() - start < 5


def test_on_error_raise_stops_the_other_calls_in_flight(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", hang_rate=1.0, hang_seconds=60, max_context_tokens=20)
    df = pd.DataFrame({"text": ["a long row " * 20] + [f"row {i}" for i in range(15)]})
    start = time.monotonic()
    with pytest.raises(dask_llm.RowError):
        dask_llm.enrich(df, "Say: {text}", "ans", "m", endpoint=endpoint_for(sim, timeout=120), threads=8,
                        on_error="raise")  # fmt: skip
    assert time.monotonic() - start < 5
    _wait(lambda: sim.stats()["in_flight"] == 0, 5, "calls left in flight")


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.02)


# ---------------------------------------------------------------- the circuit breaker


@pytest.mark.parametrize(
    "fault, seen",
    [
        ({"html_rate": 1.0}, "<html"),
        ({"empty_rate": 1.0}, "(empty body)"),
        ({"empty_object_rate": 1.0}, "{}"),
        ({"malformed_rate": 1.0}, '{"id"'),
    ],
)
def test_an_endpoint_that_answers_wrongly_stops_the_job_with_one_error(
    start_sim: Callable[..., Simulator], fault: dict, seen: str
) -> None:
    sim = start_sim(mode="echo", **fault)
    start = time.monotonic()
    with pytest.raises(EndpointError) as info:
        dask_llm.enrich(frame(40), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=4,
                        retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.05))  # fmt: skip
    message = str(info.value)
    assert "answered none of 20 requests" in message and seen in message, message
    assert time.monotonic() - start < 10
    assert sim.stats()["requests"] < 40


def test_a_silent_endpoint_stops_the_job(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", hang_rate=1.0, hang_seconds=60)
    with pytest.raises(EndpointError, match="no complete answer within the timeout"):
        dask_llm.enrich(frame(40), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim, timeout=0.5), threads=20,
                        retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.05))  # fmt: skip


def test_429_forever_stops_the_job_after_its_patience(
    start_sim: Callable[..., Simulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask_llm._calls._breaker

    monkeypatch.setattr(dask_llm._calls._breaker, "RATE_LIMIT_PATIENCE", 1.0)
    sim = start_sim(mode="echo", always_429=True, rate_limit_style="retry-after-ms")
    with pytest.raises(EndpointError, match="429"):
        dask_llm.enrich(frame(40), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=8, budget=False,
                        retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.05))  # fmt: skip


def test_an_endpoint_that_has_answered_fails_rows_not_the_job(start_sim: Callable[..., Simulator]) -> None:
    # 30% of answers are broken: a flaky endpoint, not a broken one.
    sim = start_sim(mode="echo", malformed_rate=0.3, seed=2)
    out = dask_llm.enrich(frame(60), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim),
                          retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.05))  # fmt: skip
    assert out["ans"].notna().sum() >= 55


# ---------------------------------------------------------------- clients, templates, secrets


def test_sockets_stay_flat_over_many_endpoints(sim: Simulator) -> None:
    def sockets() -> int:
        fds = os.listdir("/proc/self/fd")
        return sum(1 for fd in fds if _readlink(f"/proc/self/fd/{fd}").startswith("socket:"))

    dask_llm.enrich(frame(8), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=4)
    before = sockets()
    for k in range(40):  # 40 distinct endpoints (another timeout each)
        dask_llm.enrich(frame(8), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim, timeout=10 + k), threads=4)
    assert sockets() - before <= 8 * 4  # at most the cached clients' pools


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


@pytest.mark.parametrize(
    "template, problem",
    [
        ("{text:.1f}", "format spec does not apply"),
        ("{text!x}", "conversion must be"),
        ("{text:{n}}", "nests a field"),
        ("{missing}", "does not have"),
        ("{text.upper}", "attribute or index"),
    ],
)
def test_template_problems_are_template_errors_at_enrich_time(sim: Simulator, template: str, problem: str) -> None:
    ddf = dd.from_pandas(pd.DataFrame({"text": ["a", "b"], "n": [1, 2]}), npartitions=1)
    with pytest.raises(TemplateError, match=problem):
        dask_llm.enrich(ddf, template, "ans", "m", endpoint=endpoint_for(sim))
    assert sim.stats()["requests"] == 0


def test_duplicate_columns_read_by_the_prompt_are_a_template_error(sim: Simulator) -> None:
    df = pd.DataFrame([["x", "y"]], columns=["text", "text"])
    with pytest.raises(TemplateError, match="more than once"):
        dask_llm.enrich(dd.from_pandas(df, npartitions=1), "{text}", "ans", "m", endpoint=endpoint_for(sim))


def test_cells_that_cannot_be_rendered_are_row_errors(sim: Simulator, tmp_path: Path) -> None:
    df = pd.DataFrame({"x": [1.5, np.nan, 2.25, 4.0], "text": pd.Series(["a", "b", "c\ud800", "d"], dtype=object)})
    with dask.config.set({"scheduler": "sync", "dataframe.convert-string": False}):
        out = dask_llm.enrich(dd.from_pandas(df, npartitions=2), "{x:.1f} {text}", "ans", "m",
                              endpoint=endpoint_for(sim), checkpoint=str(tmp_path)).compute()  # fmt: skip
    assert out["ans"].tolist()[:2] == ["1.5 a", " b"]  # a missing value renders empty, spec not applied
    assert "cannot be encoded as UTF-8" in out["ans_error"].iloc[2]
    assert out["ans"].iloc[3] == "4.0 d"
    assert sim.stats()["requests"] == 3


def test_the_task_graph_carries_no_secret_with_api_key_env(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", API_KEY)
    endpoint = dask_llm.Endpoint(base_url=sim.url, api_key_env="MY_LLM_KEY")
    out = dask_llm.enrich(dd.from_pandas(frame(6), npartitions=2), "Say: {text}", "ans", "m", endpoint=endpoint)
    graph = pickle.dumps(dict(out.__dask_graph__()))
    assert API_KEY.encode() not in graph
    assert answered(out.compute(scheduler="sync"))
    with pytest.raises(dask_llm.ConfigError, match="NOT_SET_ANYWHERE"):
        dask_llm.Endpoint(base_url=sim.url, api_key_env="NOT_SET_ANYWHERE").resolve()


def test_reprs_show_no_secret(sim: Simulator, tmp_path: Path) -> None:
    from dask_llm._api import _make_job  # the job that travels to the workers

    endpoint = dask_llm.Endpoint(base_url="https://user:pa55word@proxy.example/v1", api_key="sk-verysecret")
    job = _make_job(frame(1), "{text}", "ans", "m", endpoint=endpoint, system=None, threads=1, temperature=None,
                    max_tokens=None, params=None, retry=None, on_error="store")  # fmt: skip
    ckpt = dask_llm._checkpoint.Checkpoint(url=str(tmp_path), storage_options={"secret": "s3cr3t"})
    cache = dask_llm.ResponseCache(str(tmp_path), storage_options={"token": "t0k3n"})
    shown = repr(job) + repr(ckpt) + repr(cache) + endpoint.display_url
    for secret in ("pa55word", "sk-verysecret", "s3cr3t", "t0k3n"):
        assert secret not in shown


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["threads", "local"])
def test_ctrl_c_in_the_command_line_stops_calls_within_two_seconds_and_exits_130(
    start_sim: Callable[..., Simulator], tmp_path: Path, scheduler: str
) -> None:
    from .test_cli import clean_env, dask_llm_command, run_args

    sim = start_sim(mode="echo", hang_rate=1.0, hang_seconds=120)
    pd.DataFrame({"text": [f"row {i}" for i in range(64)]}).to_csv(tmp_path / "in.csv", index=False)
    argv = run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--scheduler", scheduler, "--workers", "2",
                    "--partitions", "4", "--threads", "8", "--checkpoint", str(tmp_path / "ckpt"))  # fmt: skip
    proc = subprocess.Popen([*dask_llm_command(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(), start_new_session=True)  # fmt: skip
    try:
        _wait(lambda: sim.stats()["in_flight"] >= 16, 90, "no calls in flight")
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _wait(lambda: sim.stats()["in_flight"] == 0, 10, "calls still in flight")
        stopped = time.monotonic() - start
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert stopped < 2.5, f"{stopped:.1f} s to stop the calls in flight"
    assert "resume with" in err and "Traceback" not in err
