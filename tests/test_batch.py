"""enrich(..., batch=...): the OpenAI Batch API behind the same enrichment.

Against the simulator's /v1/files and /v1/batches, over real HTTP with the
real openai client: parallel submission, re-attaching after a killed driver,
failures, expiry, and the price.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import openai
import pandas as pd
import pytest

import dask_llm
from dask_llm import BatchAPI
from dask_llm.simulator import Simulator

from .conftest import API_KEY, endpoint_for

FAST = BatchAPI(poll_interval=0.1)


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def batches(sim: Simulator) -> list[Any]:
    client = openai.OpenAI(base_url=sim.url, api_key=API_KEY, max_retries=0)
    return list(client.batches.list(limit=100))


def run(sim: Simulator, n: int, partitions: int, **kw: Any) -> pd.DataFrame:
    with dask.config.set(scheduler="threads", num_workers=2):
        out = dask_llm.enrich(dd.from_pandas(frame(n), npartitions=partitions), "Say: {text}", "ans", "m",
                              endpoint=endpoint_for(sim), **kw)  # fmt: skip
        return out.compute()


def right(out: pd.DataFrame) -> bool:
    return bool(((out["ans"] == "Say: " + out["text"]) & out["ans_error"].isna()).all())


def test_every_partition_submits_before_any_batch_completes(
    start_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = start_sim(mode="echo", batch_turnaround=3.0)
    out = run(sim, 120, 6, batch=FAST, checkpoint=str(tmp_path))
    assert right(out)
    made = batches(sim)
    assert len(made) == 6
    assert max(b.created_at for b in made) < min(b.completed_at for b in made)  # 2 threads, 6 batches at once
    assert sim.stats()["successes"] == 120
    # Recorded in the checkpoint the moment they existed.
    assert len(list((tmp_path / "_dask_llm" / "batches").glob("*.json"))) == 6


def test_a_rerun_reattaches_instead_of_creating_batches(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", batch_turnaround=0.5)
    run(sim, 40, 2, batch=FAST)
    assert len(batches(sim)) == 2
    out = run(sim, 40, 2, batch=FAST)  # no checkpoint: found by their metadata
    assert right(out) and len(batches(sim)) == 2
    assert sim.stats()["successes"] == 40


DRIVER = """
import sys, dask, dask.dataframe as dd, pandas as pd, dask_llm
base_url, key, ckpt = sys.argv[1:4]
df = pd.DataFrame({"text": [f"row {i}" for i in range(1200)]})
with dask.config.set(scheduler="threads", num_workers=2):
    out = dask_llm.enrich(dd.from_pandas(df, npartitions=6), "Say: {text}", "ans", "m",
                          endpoint=dask_llm.Endpoint(base_url=base_url, api_key=key),
                          batch=dask_llm.BatchAPI(poll_interval=0.2), checkpoint=ckpt).compute()
print("right", int(((out["ans"] == "Say: " + out["text"]) & out["ans_error"].isna()).sum()), flush=True)
"""


def test_a_killed_driver_leaves_its_batches_and_the_rerun_pays_nothing_twice(
    start_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    # The acceptance run: 1,200 rows in 6 partitions, 2 threads, a checkpoint.
    sim = start_sim(mode="echo", batch_turnaround=4.0)
    args = [sys.executable, "-c", DRIVER, sim.url, API_KEY, str(tmp_path)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(batches(sim)) < 6:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate(timeout=30)
    made = batches(sim)
    assert max(b.created_at for b in made) < min(b.completed_at or 2**62 for b in made)  # all before any ended
    assert sim.stats()["successes"] < 1200  # killed while the batches were in flight
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "right 1200" in again.stdout, again.stderr[-2000:]
    assert len(batches(sim)) == 6, "no new batch"
    assert set(sim.stats()["success_by_prompt"].values()) == {1}, "no row paid twice"


@pytest.mark.parametrize("retry", ["batch", "sync"])
def test_failed_lines_are_retried_and_rows_are_right(start_sim: Callable[..., Simulator], retry: str) -> None:
    sim = start_sim(mode="echo", batch_turnaround=0.3, batch_line_fail_rate=0.3, seed=4)
    out = run(sim, 60, 2, batch=BatchAPI(poll_interval=0.1, retry=retry, max_follow_ups=4))
    assert right(out)
    follow_ups = len(batches(sim)) - 2
    if retry == "batch":
        assert follow_ups >= 1  # the failed lines went again, in batches
    else:
        assert follow_ups == 0 and sim.stats()["batch"]["line_failures"] > 0  # and synchronously


def test_an_expired_batch_keeps_its_answers_and_sends_only_the_rest_again(
    start_sim: Callable[..., Simulator],
) -> None:
    # Every batch expires half done here: each follow-up holds only what the one before did not run.
    sim = start_sim(mode="echo", batch_turnaround=2.0, batch_expire_after=1.0)
    out = run(sim, 40, 1, batch=BatchAPI(poll_interval=0.1, max_follow_ups=1))
    first, follow_up = sorted(batches(sim), key=lambda b: b.created_at)
    assert first.status == "expired" and 0 < first.request_counts.completed < 40
    assert follow_up.request_counts.total == 40 - first.request_counts.completed
    answered = out["ans_error"].isna()
    assert answered.sum() == first.request_counts.completed + follow_up.request_counts.completed
    assert (out.loc[answered, "ans"] == "Say: " + out.loc[answered, "text"]).all()
    assert out.loc[~answered, "ans_error"].str.contains("expired").all()  # out of follow-ups: the reason stays
    assert set(sim.stats()["success_by_prompt"].values()) == {1}


def test_an_expired_batch_rest_can_go_synchronously(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", batch_turnaround=2.0, batch_expire_after=1.0)
    out = run(sim, 40, 1, batch=BatchAPI(poll_interval=0.1, retry="sync"))
    assert right(out)
    (only,) = batches(sim)
    assert only.status == "expired"
    assert set(sim.stats()["success_by_prompt"].values()) == {1}


def test_the_enqueued_token_limit_queues_batches(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", batch_turnaround=0.5, batch_enqueued_token_limit=200)
    out = run(sim, 60, 3, batch=BatchAPI(poll_interval=0.1, enqueued_token_limit=200))
    assert right(out)
    assert all(b.status == "completed" for b in batches(sim))


def test_batch_rows_are_priced_at_the_batch_price(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", batch_turnaround=0.3)
    out = run(sim, 20, 1, batch=FAST)
    sync = dask_llm.summarize(out, "ans", model="gpt-4o-mini")
    batched = dask_llm.summarize(out, "ans", model="gpt-4o-mini", batch=True)
    assert batched.cost == pytest.approx(sync.cost / 2)
    est = dask_llm.estimate(frame(20), "Say: {text}", "gpt-4o-mini", batch=True, completion_tokens=5)
    full = dask_llm.estimate(frame(20), "Say: {text}", "gpt-4o-mini", completion_tokens=5)
    assert est.cost[0] == pytest.approx(full.cost[0] / 2)


def test_options_that_do_not_apply_to_batches_are_refused(sim: Simulator) -> None:
    with pytest.raises(dask_llm.ConfigError, match="spend_cap"):
        dask_llm.enrich(frame(2), "{text}", "a", "m", endpoint=endpoint_for(sim), batch=True,
                        spend_cap=dask_llm.SpendCap(max_cost=1.0), prices={"m": (1, 1)})  # fmt: skip
    with pytest.raises(dask_llm.ConfigError, match="batch="):
        dask_llm.enrich(frame(2), "{text}", "a", "m", endpoint=endpoint_for(sim), batch="yes")
