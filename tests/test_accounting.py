"""Token and cost accounting: price table, run summary, estimate before spending."""

from __future__ import annotations

import dask.dataframe as dd
import pandas as pd
import pytest

import dask_llm
from dask_llm import Price, RetryPolicy
from dask_llm._cost._pricing import price_for

from .conftest import endpoint_for

FAST_RETRY = RetryPolicy(max_attempts=10, backoff_initial=0.01, backoff_max=0.05)


def reviews(n: int) -> pd.DataFrame:
    words = ["slow", "disk", "full", "login", "fails", "after", "the", "update", "again", "today"]
    return pd.DataFrame(
        {
            "id": range(n),
            "body": [f"review {i}: " + " ".join(words[(i + k) % 10] for k in range(5 + i % 20)) for i in range(n)],
        }
    )


def test_price_table_lookup_and_override():
    assert price_for("gpt-4o-mini") == Price(0.15, 0.60)
    assert price_for("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)  # the family, not gpt-4o
    assert price_for("my-llama") is None
    assert price_for("my-llama", {"my-llama": (0.0, 0.0)}) == Price(0.0, 0.0)
    assert price_for("gpt-4o-mini", {"gpt-4o-mini": Price(1, 2)}) == Price(1, 2)
    assert Price(0.15, 0.60).cost(1_000_000, 500_000) == pytest.approx(0.45)
    with pytest.raises(dask_llm.ConfigError):
        Price(-1, 0)


def test_summary_counts_calls_retries_429s_tokens_and_cost(start_sim):
    sim = start_sim(mode="label", fail_rate=0.1, rate_limit_rate=0.1, seed=3)
    df = reviews(150)
    prices = {"sim-model": Price(2.0, 8.0)}
    out = dask_llm.enrich(
        df, "Sentiment: {body}", column="s", model="sim-model", endpoint=endpoint_for(sim),
        retry=FAST_RETRY, threads=8,
    )  # fmt: skip
    summary = dask_llm.summarize(out, "s", model="sim-model", prices=prices, wall_time=10.0)
    stats = sim.stats()
    assert summary.rows == summary.rows_ok == 150
    assert summary.calls == stats["requests"]
    assert summary.retries == stats["requests"] - 150 > 0
    assert summary.rate_limited == stats["rate_limited"] > 0
    assert summary.prompt_tokens == stats["prompt_tokens"]
    assert summary.completion_tokens == stats["completion_tokens"]
    assert summary.cost == pytest.approx(Price(2.0, 8.0).cost(stats["prompt_tokens"], stats["completion_tokens"]))
    assert summary.rpm == pytest.approx(summary.calls * 6.0)
    assert "429s" in str(summary) and summary.to_dict()["calls"] == summary.calls
    # Unknown price: no cost rather than a made-up zero.
    assert dask_llm.summarize(out, "s", model="unknown-model").cost is None


def test_estimate_calls_nothing_and_brackets_the_bill(start_sim):
    sim = start_sim(mode="label")
    df = reviews(300)
    ddf = dd.from_pandas(pd.concat([df, df.head(60)], ignore_index=True), npartitions=1)  # 60 repeats
    prices = {"sim-model": Price(1.0, 4.0)}
    est = dask_llm.estimate(
        ddf, "Sentiment: {body}", "sim-model", max_tokens=8, prices=prices,
        budget=dask_llm.Budget(rpm=600), threads=16, latency=0.5,
    )  # fmt: skip
    assert sim.stats()["requests"] == 0
    assert est.rows == 360 and est.calls == 300
    assert est.bound_by == "rpm" and est.wall_time == pytest.approx(30.0)

    out = dask_llm.enrich(
        ddf, "Sentiment: {body}", column="s", model="sim-model", endpoint=endpoint_for(sim), max_tokens=8
    ).compute(scheduler="sync")
    actual = dask_llm.summarize(out, "s", model="sim-model", prices=prices)
    assert actual.calls == est.calls
    # The simulator counts tokens its own way; the range must still hold the bill.
    assert est.cost[0] <= actual.cost <= est.cost[1]
    assert 0.5 * est.call_prompt_tokens <= actual.prompt_tokens <= 1.5 * est.call_prompt_tokens
