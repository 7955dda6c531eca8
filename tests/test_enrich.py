"""enrich() end to end: real HTTP to the simulator through the real openai client."""

from __future__ import annotations

import dataclasses

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pytest

import dask_llm
from dask_llm import RetryPolicy
from dask_llm.simulator import expected_answer

from .conftest import endpoint_for, free_port

FAST_RETRY = RetryPolicy(max_attempts=8, backoff_initial=0.01, backoff_max=0.05)


def tickets(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(n),
            "title": [f"ticket {i}" for i in range(n)],
            "body": [f"body of ticket {i} " * (1 + i % 3) for i in range(n)],
        }
    )


def test_every_row_answered_in_order(sim):
    df = tickets(120)
    out = dask_llm.enrich(df, "Classify: {title}", column="label", model="m", endpoint=endpoint_for(sim), threads=16)
    assert list(out.columns[:3]) == ["id", "title", "body"]
    pd.testing.assert_frame_equal(out[["id", "title", "body"]], df)
    assert out["label"].tolist() == [f"Classify: ticket {i}" for i in range(120)]
    assert out["label_error"].isna().all()
    assert (out["label_attempts"] == 1).all()
    stats = sim.stats()
    # Usage comes from the response, not from the offline estimate.
    assert out["label_prompt_tokens"].sum() == stats["prompt_tokens"]
    assert out["label_completion_tokens"].sum() == stats["completion_tokens"]
    assert stats["successes"] == 120
    assert set(stats["success_by_prompt"].values()) == {1}


def test_dask_result_is_lazy_with_exact_meta(sim):
    ddf = dd.from_pandas(tickets(40), npartitions=4)
    out = ddf.llm.enrich(prompt="{title}", column="label", model="m", endpoint=endpoint_for(sim))
    # Building the graph (and inspecting meta) calls nothing.
    assert out.dtypes["label"] == pd.StringDtype("pyarrow")
    assert sim.stats()["requests"] == 0
    result = out.compute(scheduler="sync")
    assert sim.stats()["requests"] == 40
    pd.testing.assert_series_equal(result.dtypes, out._meta.dtypes)
    assert list(result.index) == list(range(40))


def test_output_schema_is_fixed_when_every_row_succeeds(sim, tmp_path):
    out = dask_llm.enrich(tickets(5), "{title}", "label", "m", endpoint=endpoint_for(sim))
    path = tmp_path / "o.parquet"
    out.to_parquet(path)
    schema = pa.parquet.read_schema(path)
    # The error column is all null here; it must still be a string column.
    assert schema.field("label_error").type == pa.large_string() or schema.field("label_error").type == pa.string()
    assert schema.field("label_prompt_tokens").type == pa.int64()
    assert schema.field("label_latency_s").type == pa.float64()


def _results_under(scheduler: str, sim_url: str) -> pd.DataFrame:
    ddf = dd.from_pandas(tickets(60), npartitions=5)
    ep = dask_llm.Endpoint(base_url=sim_url, api_key="test-key")
    out = dask_llm.enrich(ddf, "Classify: {title}\n{body}", "label", "m", endpoint=ep, threads=4)
    if scheduler.startswith("local"):
        from distributed import Client, LocalCluster

        processes = scheduler == "local-processes"
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=2, processes=processes, dashboard_address="127.0.0.1:0"
            ) as cluster,
            Client(cluster) as client,
        ):
            result = client.compute(out).result(timeout=120)
            built = client.run(lambda: len(dask_llm._calls._client._clients))
        # One openai client per worker process, however many partitions ran there.
        if processes:
            assert set(built.values()) == {1}
        return result
    return out.compute(scheduler=scheduler)


@pytest.mark.slow
def test_four_schedulers_give_identical_results(start_sim):
    sim = start_sim(mode="label", latency=0.01)
    results = {s: _results_under(s, sim.url) for s in ("sync", "threads", "local-threads", "local-processes")}
    reference = results["sync"]
    expected = [
        expected_answer([{"role": "user", "content": f"Classify: {t}\n{b}"}])
        for t, b in zip(reference["title"], reference["body"], strict=False)
    ]
    assert reference["label"].tolist() == expected
    for name, result in results.items():
        pd.testing.assert_frame_equal(
            result.drop(columns="label_latency_s"), reference.drop(columns="label_latency_s"), obj=name
        )
    assert sim.stats()["successes"] == 4 * 60


def test_the_multiprocessing_scheduler_is_refused_before_any_call(sim):
    # Its pool processes share no coordinator: a budget or a checkpoint's
    # claims would hold per process (a checkpoint read back 8 of 88 rows).
    ddf = dd.from_pandas(tickets(8), npartitions=2)
    out = dask_llm.enrich(ddf, "{title}", "label", "m", endpoint=endpoint_for(sim))
    with pytest.raises(dask_llm.ConfigError, match="multiprocessing scheduler.*LocalCluster"):
        out.compute(scheduler="processes", num_workers=2)
    assert sim.stats()["requests"] == 0


def test_transient_faults_are_retried_and_nothing_is_lost(start_sim):
    sim = start_sim(mode="echo", fail_rate=0.15, malformed_rate=0.1, rate_limit_rate=0.05, seed=7)
    # A quarter of the attempts fail: with 8 attempts, one row in a few
    # thousand fails all of them (measured: 3 runs in 37 lost a row), so 16.
    retry = dataclasses.replace(FAST_RETRY, max_attempts=16)
    out = dask_llm.enrich(tickets(200), "{title}", "label", "m", endpoint=endpoint_for(sim), threads=16, retry=retry)
    assert out["label_error"].isna().all(), out["label_error"].dropna().head()
    assert out["label"].tolist() == [f"ticket {i}" for i in range(200)]
    by_status = sim.stats()["by_status"]
    # The faults really happened, and the retries are visible per row.
    assert by_status.get("500", 0) > 0 and by_status.get("429", 0) > 0
    assert out["label_attempts"].sum() == sim.stats()["requests"]
    assert (out["label_attempts"] > 1).sum() > 0


def test_hung_requests_time_out_and_are_retried(start_sim):
    sim = start_sim(mode="echo", hang_rate=0.2, hang_seconds=30, seed=3)
    ep = endpoint_for(sim, timeout=0.5)
    out = dask_llm.enrich(tickets(40), "{title}", "label", "m", endpoint=ep, threads=20, retry=FAST_RETRY)
    assert out["label_error"].isna().all()
    assert out["label"].tolist() == [f"ticket {i}" for i in range(40)]
    assert (out["label_attempts"] > 1).any()


def test_exhausted_retries_land_in_the_error_column(start_sim):
    # 18 failed attempts: fewer than the circuit breaker's 20 (see test_failures.py).
    sim = start_sim(mode="echo", fail_rate=1.0, fail_status=503)
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.01)
    out = dask_llm.enrich(tickets(6), "{title}", "label", "m", endpoint=endpoint_for(sim), retry=policy)
    assert out["label"].isna().all()
    assert out["label_error"].str.contains("503").all()
    assert out["label_error"].str.contains("after 3 attempts").all()
    assert (out["label_attempts"] == 3).all()
    assert sim.stats()["requests"] == 18


def test_non_retryable_row_error_is_not_retried(start_sim):
    sim = start_sim(mode="echo", max_context_tokens=40)
    df = pd.DataFrame({"text": ["short", "long " * 200, "also short"]})
    out = dask_llm.enrich(df, "{text}", "label", "m", endpoint=endpoint_for(sim))
    assert out["label"].tolist()[0::2] == ["short", "also short"]
    assert pd.isna(out["label"][1])
    assert "400" in out["label_error"][1] and "context" in out["label_error"][1]
    assert out["label_attempts"].tolist() == [1, 1, 1]


def test_on_error_raise_fails_the_job(start_sim):
    sim = start_sim(mode="echo", max_context_tokens=40)
    df = pd.DataFrame({"text": ["short", "long " * 200, "also short"]}, index=[10, 11, 12])
    with pytest.raises(dask_llm.RowError, match="row 11") as info:
        dask_llm.enrich(df, "{text}", "label", "m", endpoint=endpoint_for(sim), on_error="raise")
    assert info.value.row == 11


def test_template_errors_are_raised_before_any_call(sim):
    ddf = dd.from_pandas(tickets(10), npartitions=2)
    ep = endpoint_for(sim)
    with pytest.raises(dask_llm.TemplateError, match="'titel'"):
        dask_llm.enrich(ddf, "{titel}", "label", "m", endpoint=ep)
    with pytest.raises(dask_llm.TemplateError, match=r"^system message names column\(s\) 'owner'"):
        dask_llm.enrich(ddf, "{title}", "label", "m", endpoint=ep, system="You answer {owner}")
    with pytest.raises(dask_llm.TemplateError, match="positional"):
        dask_llm.enrich(ddf, "{} {title}", "label", "m", endpoint=ep)
    with pytest.raises(dask_llm.TemplateError, match="not a valid template"):
        dask_llm.enrich(ddf, "{title", "label", "m", endpoint=ep)
    with pytest.raises(dask_llm.ConfigError, match="already exist"):
        dask_llm.enrich(ddf, "{title}", "body", "m", endpoint=ep)
    with pytest.raises(dask_llm.ConfigError, match="params"):
        dask_llm.enrich(ddf, "{title}", "x", "m", endpoint=ep, params={"messages": []})
    assert sim.stats()["requests"] == 0


def test_missing_values_render_as_empty_and_braces_escape(sim):
    df = pd.DataFrame({"a": ["x", None], "b": [1.5, float("nan")]})
    out = dask_llm.enrich(df, "{{json}} {a}|{b}", "o", "m", endpoint=endpoint_for(sim))
    assert out["o"].tolist() == ["{json} x|1.5", "{json} |"]


def test_system_message_and_params_reach_the_model(start_sim):
    sim = start_sim(mode="label")
    df = tickets(6)
    out = dask_llm.enrich(
        df,
        "{title}",
        "label",
        "m",
        endpoint=endpoint_for(sim),
        system="Route ticket {id}.",
        temperature=0.0,
        max_tokens=1,
    )
    expected = [
        expected_answer(
            [{"role": "system", "content": f"Route ticket {i}."}, {"role": "user", "content": f"ticket {i}"}]
        )
        for i in range(6)
    ]
    assert out["label"].tolist() == expected  # every label is one token long
    assert (out["label_completion_tokens"] == 1).all()


def test_bad_credentials_are_one_clear_error(start_sim):
    sim = start_sim(mode="echo")
    ep = endpoint_for(sim, api_key="wrong")
    ddf = dd.from_pandas(tickets(500), npartitions=2)
    out = dask_llm.enrich(ddf, "{title}", "label", "m", endpoint=ep, threads=8)
    with pytest.raises(dask_llm.AuthenticationError, match="refused") as info:
        out.compute(scheduler="sync")
    assert sim.url.rsplit("/", 1)[0] in str(info.value)
    # The job stopped at once: not one call per row.
    assert sim.stats()["requests"] <= 8


def test_unknown_model_is_one_clear_error(start_sim):
    sim = start_sim(mode="echo", models=("real-model",))
    with pytest.raises(dask_llm.ModelNotFoundError, match="'no-such-model'"):
        dask_llm.enrich(tickets(50), "{title}", "label", "no-such-model", endpoint=endpoint_for(sim))
    assert sim.stats()["requests"] <= 16


def test_unreachable_endpoint_is_one_clear_error():
    # A port that was free a moment ago: nothing listens there.
    ep = dask_llm.Endpoint(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", timeout=2)
    policy = RetryPolicy(max_attempts=2, backoff_initial=0.01)
    with pytest.raises(dask_llm.EndpointUnreachableError, match="cannot reach http://127.0.0.1"):
        dask_llm.enrich(tickets(100), "{title}", "label", "m", endpoint=ep, retry=policy, threads=4)


def test_azure_endpoint(sim):
    ep = dask_llm.Endpoint(azure_endpoint=sim.azure_endpoint, api_key="test-key", api_version="2024-10-21")
    out = dask_llm.enrich(tickets(5), "{title}", "label", "my-deployment", endpoint=ep)
    assert out["label"].tolist() == [f"ticket {i}" for i in range(5)]


def test_rows_stream_through_a_bounded_pool(start_sim):
    sim = start_sim(mode="echo", latency=0.02)
    out = dask_llm.enrich(tickets(300), "{title}", "label", "m", endpoint=endpoint_for(sim), threads=8)
    assert out["label_error"].isna().all()
    assert sim.stats()["max_in_flight"] <= 8


def test_no_call_when_only_meta_is_used(sim):
    ddf = dd.from_pandas(tickets(10), npartitions=2)
    out = dask_llm.enrich(ddf, "{title}", "label", "m", endpoint=endpoint_for(sim))
    out = out[out["label"].notnull()]  # further lazy operations need meta only
    assert "label_error" in out.columns
    with dask.config.set(scheduler="sync"):
        assert len(out) == 10
    assert sim.stats()["successes"] == 10
