"""The spend cap: calls stop cleanly at the cap, across worker processes,
and a resume with a higher cap continues where the run stopped."""

from __future__ import annotations

from collections.abc import Iterator

import dask.dataframe as dd
import pandas as pd
import pytest

import dask_llm
from dask_llm import Price, SpendCap
from dask_llm._cost._spend import BUDGET_EXHAUSTED, Ledger, Verdict

from .conftest import endpoint_for, local_process_cluster


def rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n), "text": [f"please classify ticket number {i} about disks" for i in range(n)]})


def test_ledger_reserves_waits_and_runs_out():
    ledger = Ledger(max_cost=None, max_tokens=100)
    assert ledger.reserve(0.0, 60) is Verdict.GO
    assert ledger.reserve(0.0, 60) is Verdict.WAIT  # fits once the first settles
    ledger.settle(0.0, 60, 0.0, 50)  # billed less than reserved
    assert ledger.reserve(0.0, 40) is Verdict.GO
    ledger.settle(0.0, 40, 0.0, 45)
    assert ledger.reserve(0.0, 10) is Verdict.EXHAUSTED  # 95 spent: never fits
    assert ledger.reserve(0.0, 1) is Verdict.EXHAUSTED  # and stays exhausted
    with pytest.raises(dask_llm.ConfigError):
        SpendCap()


def test_cap_without_a_cluster_keeps_finished_rows(start_sim):
    sim = start_sim(mode="label", latency=0.01)
    prices = {"sim-model": Price(100.0, 100.0)}  # 1e-4 USD a token: easy sums
    cap = SpendCap(max_cost=0.05)  # 500 tokens, far less than the ~1,100 the 80 rows need
    out = dask_llm.enrich(
        rows(80), "{text}", column="c", model="sim-model", endpoint=endpoint_for(sim),
        max_tokens=4, threads=4, spend_cap=cap, prices=prices,
    )  # fmt: skip
    stats = sim.stats()
    billed = Price(100.0, 100.0).cost(stats["prompt_tokens"], stats["completion_tokens"])
    per_call = Price(100.0, 100.0).cost(out["c_prompt_tokens"].max(), out["c_completion_tokens"].max())
    assert billed <= 0.05 + 4 * per_call  # the cap, plus at most the calls in flight
    done = out["c_error"].isna()
    assert 0 < done.sum() < 80 and done.sum() == stats["successes"]
    left = out.loc[~done]
    assert left["c_error"].str.startswith(BUDGET_EXHAUSTED).all()
    assert (left["c_attempts"] == 0).all()
    assert dask_llm.summarize(out, "c").rows_not_called == len(left)


def test_cost_cap_needs_a_price(sim):
    with pytest.raises(dask_llm.ConfigError, match="price"):
        dask_llm.enrich(rows(2), "{text}", column="c", model="no-such-price", endpoint=endpoint_for(sim),
                        spend_cap=SpendCap(max_cost=1.0))  # fmt: skip


@pytest.fixture(scope="module")
def three_workers() -> Iterator[object]:
    with local_process_cluster(3) as client:
        yield client


@pytest.mark.slow
def test_cap_holds_across_three_worker_processes_and_resumes(three_workers, start_sim, tmp_path):
    client = three_workers
    sim = start_sim(mode="label", latency=0.05)
    ddf = dd.from_pandas(rows(240), npartitions=6)
    cap = SpendCap(max_tokens=2_000)
    ckpt = tmp_path / "ckpt"
    kwargs = dict(prompt="{text}", column="c", model="m", endpoint=endpoint_for(sim), max_tokens=4, threads=4)
    out = dask_llm.enrich(ddf, **kwargs, spend_cap=cap, checkpoint=str(ckpt)).compute()

    stats = sim.stats()
    billed = stats["prompt_tokens"] + stats["completion_tokens"]
    per_call = int((out["c_prompt_tokens"] + out["c_completion_tokens"]).max())
    assert billed <= 2_000 + stats["max_in_flight"] * per_call
    assert billed >= 2_000 - 2 * per_call  # it stopped at the cap, not long before
    # Every worker process drew on the one ledger on the scheduler.
    ledger = client.run_on_scheduler(_spend_stats, name=cap.name)
    assert ledger is not None and ledger["spent_tokens"] == billed
    done = out["c_error"].isna()
    assert done.sum() == stats["successes"] and (~done).sum() > 0
    assert out.loc[~done, "c_error"].str.startswith(BUDGET_EXHAUSTED).all()

    # A resume with a higher cap calls exactly the rows that were left.
    sim.reset()
    resumed = dask_llm.enrich(ddf, **kwargs, spend_cap=SpendCap(max_tokens=100_000), checkpoint=str(ckpt)).compute()
    assert sim.stats()["requests"] == (~done).sum()
    assert resumed["c_error"].isna().all()
    pd.testing.assert_series_equal(resumed.loc[done, "c"], out.loc[done, "c"])


def _spend_stats(dask_scheduler: object, name: str) -> object:
    return dask_scheduler.plugins["dask-llm"].state.spend_stats(name)  # type: ignore[attr-defined]
