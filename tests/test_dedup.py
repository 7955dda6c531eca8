"""De-duplication and the response cache: identical requests are sent once."""

from __future__ import annotations

import dask.dataframe as dd
import pandas as pd

import dask_llm
from dask_llm._core._dedup import InFlight, plan, request_key
from dask_llm.simulator import expected_answer

from .conftest import endpoint_for


def half_duplicates(n: int) -> pd.DataFrame:
    """``n`` rows, ``n // 2`` distinct prompts, each twice, the twins far apart."""
    return pd.DataFrame({"id": range(n), "text": [f"ticket about thing {i % (n // 2)}" for i in range(n)]})


def test_plan_groups_identical_requests():
    reqs = [{"model": "m", "messages": [{"role": "user", "content": c}]} for c in ["a", "b", "a", "b", "c"]]
    p = plan(reqs, [0, 1, 2, 3, 4])
    assert p.leaders == (0, 1, 4)
    assert p.followers == {0: (2,), 1: (3,)}
    assert p.saved == 2
    # Parameters are part of the request: same messages, other temperature -> two calls.
    assert request_key({**reqs[0], "temperature": 0}) != request_key(reqs[0])
    assert request_key(dict(reversed(list(reqs[0].items())))) == request_key(reqs[0])


def test_in_flight_shares_successes_only():
    flight: InFlight[str] = InFlight(remember=2)
    owner, _fut = flight.claim("k")
    assert owner
    waiter_owner, waiter = flight.claim("k")
    assert not waiter_owner and not waiter.done()
    flight.finish("k", "answer", ok=True)
    assert waiter.result(timeout=1) == "answer"
    assert flight.claim("k")[1].result(timeout=1) == "answer"  # remembered
    owner, _ = flight.claim("e")
    flight.finish("e", "error", ok=False)
    assert flight.claim("e")[0]  # an error is not remembered: call again


def test_half_duplicate_prompts_send_half_the_calls(start_sim):
    sim = start_sim(mode="label")
    df = half_duplicates(200)
    # One partition holds both twins of each prompt; so "within a partition"
    # is all that is needed, on any scheduler.
    ddf = dd.from_pandas(df.sort_values("text", kind="stable"), npartitions=4, sort=False)
    out = dask_llm.enrich(ddf, "{text}", column="label", model="m", endpoint=endpoint_for(sim), threads=8)
    result = out.compute(scheduler="threads").sort_values("id")
    stats = sim.stats()
    assert stats["requests"] == 100
    assert result["label_error"].isna().all()
    expected = [expected_answer([{"role": "user", "content": t}]) for t in result["text"]]
    assert result["label"].tolist() == expected
    # The twin that was not called shows it: no attempt, nothing billed.
    assert (result["label_attempts"] == 0).sum() == 100
    assert result["label_prompt_tokens"].sum() == stats["prompt_tokens"]
    summary = dask_llm.summarize(result, "label")
    assert summary.calls == 100 and summary.calls_saved == 100


def test_across_partitions_of_one_process(start_sim):
    sim = start_sim(mode="label")
    df = half_duplicates(120)  # twins are 60 rows apart: in different partitions
    ddf = dd.from_pandas(df, npartitions=2, sort=False)
    out = dask_llm.enrich(ddf, "{text}", column="label", model="m", endpoint=endpoint_for(sim), threads=4)
    result = out.compute(scheduler="sync")
    assert sim.stats()["requests"] == 60
    assert result["label_error"].isna().all()


def test_dedup_off_sends_every_row(start_sim):
    sim = start_sim(mode="label")
    df = half_duplicates(40)
    out = dask_llm.enrich(df, "{text}", column="label", model="m", endpoint=endpoint_for(sim), dedup=False)
    assert sim.stats()["requests"] == 40
    assert (out["label_attempts"] == 1).all()


def test_response_cache_is_shared_across_runs(start_sim, tmp_path):
    sim = start_sim(mode="label")
    df = pd.DataFrame({"text": [f"row {i}" for i in range(30)]})
    cache = dask_llm.ResponseCache(str(tmp_path / "cache"))
    first = dask_llm.enrich(df, "{text}", column="label", model="m", endpoint=endpoint_for(sim), cache=cache)
    assert sim.stats()["requests"] == 30
    again = dask_llm.enrich(df, "{text}", column="label", model="m", endpoint=endpoint_for(sim), cache=cache)
    assert sim.stats()["requests"] == 30  # nothing new sent
    assert again["label"].tolist() == first["label"].tolist()
    assert (again["label_attempts"] == 0).all() and (again["label_prompt_tokens"] == 0).all()
    # Another model is another request: not served from the cache.
    dask_llm.enrich(df.head(5), "{text}", column="label", model="m2", endpoint=endpoint_for(sim), cache=cache)
    assert sim.stats()["requests"] == 35
