"""Checkpoints survive real crashes: a SIGKILLed driver, a SIGKILLed worker.

The simulator counts successful (billable) answers per prompt. After the
crash and the resume every row must have been answered, and the rows answered
twice must be at most the calls that were in flight when the process died
(``threads`` per partition times the partitions running in the killed
process) plus the rows that finished during the journal write in progress
(the journal writes continuously; a local write takes about a millisecond,
so at these rates that is at most one or two rows).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq
import pytest

import dask_llm
from dask_llm.simulator import Simulator

from .conftest import API_KEY, endpoint_for

pytestmark = pytest.mark.slow

ROWS = 400
PARTITIONS = 8
THREADS = 4  # calls per partition
LATENCY = 0.1

DRIVER = """
import sys
import dask, dask.dataframe as dd, pandas as pd
import dask_llm

url, base_url, api_key, rows, partitions, threads = sys.argv[1:7]
df = pd.DataFrame({"text": [f"row {i}" for i in range(int(rows))]})
with dask.config.set({"scheduler": "threads", "num_workers": 2}):
    out = dask_llm.enrich(
        dd.from_pandas(df, npartitions=int(partitions)), "Say: {text}", "ans", "m",
        endpoint=dask_llm.Endpoint(base_url=base_url, api_key=api_key, timeout=10.0),
        threads=int(threads), checkpoint=url,
    )
    result = out.compute()
assert len(result) == int(rows)
print("done", flush=True)
"""
#: Partitions the driver script runs at once (its dask thread pool).
DRIVER_PARTITIONS_AT_ONCE = 2

#: An eager pandas run in the main thread, with the default journal cadence:
#: Ctrl+C reaches it directly.
PANDAS_DRIVER = """
import sys
import pandas as pd
import dask_llm

url, base_url, api_key, rows, threads = sys.argv[1:6]
df = pd.DataFrame({"text": [f"row {i}" for i in range(int(rows))]})
dask_llm.enrich(df, "Say: {text}", "ans", "m", threads=int(threads), checkpoint=url,
                endpoint=dask_llm.Endpoint(base_url=base_url, api_key=api_key, timeout=10.0))
print("done", flush=True)
"""


def wait_for_successes(sim: Simulator, at_least: int, alive: Callable[[], bool], timeout: float = 60) -> int:
    """Poll until the simulator has answered ``at_least`` calls; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sim.stats()["successes"]
        if done >= at_least:
            return done
        assert alive(), "the job ended before it could be killed midway"
        time.sleep(0.01)
    raise TimeoutError(f"fewer than {at_least} answers within {timeout} s")


#: Rows that may finish during the one journal write a kill interrupts.
DURING_ONE_WRITE = 2


def check_everything_paid_once(sim: Simulator, in_flight: int, path: Path) -> None:
    counts = sim.stats()["success_by_prompt"]
    assert set(counts) == {f"Say: row {i}" for i in range(ROWS)}  # every row answered
    repeated = sum(c - 1 for c in counts.values())
    bound = in_flight + DURING_ONE_WRITE
    assert repeated <= bound, f"{repeated} rows paid twice, more than {in_flight} in flight + {DURING_ONE_WRITE}"
    table = pq.read_table(path)
    assert table.num_rows == ROWS
    back = table.to_pandas()
    assert back["ans"].tolist() == [f"Say: row {i}" for i in range(ROWS)]
    assert back["ans_error"].isna().all()


def driver(url: Path, sim: Simulator, partitions: int = PARTITIONS) -> subprocess.Popen[str]:
    args = [str(url), sim.url, API_KEY, str(ROWS), str(partitions), str(THREADS)]
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_killed_driver_resumes_under_other_partitions_without_paying_twice(
    start_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    sim = start_sim(mode="echo", latency=LATENCY)
    first = driver(tmp_path, sim)
    try:
        at_kill = wait_for_successes(sim, ROWS // 3, lambda: first.poll() is None)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert at_kill < ROWS

    # The resume runs with other partitions: the rows are found all the same.
    resumed = driver(tmp_path, sim, partitions=5)
    try:
        out, err = resumed.communicate(timeout=120)
    finally:
        resumed.kill()
    assert resumed.returncode == 0 and "done" in out, err
    check_everything_paid_once(sim, THREADS * DRIVER_PARTITIONS_AT_ONCE, tmp_path)
    paid = sim.stats()["successes"]
    # And a third run, with yet other partitions, calls nothing at all.
    third = driver(tmp_path, sim, partitions=3)
    try:
        out, err = third.communicate(timeout=120)
    finally:
        third.kill()
    assert third.returncode == 0 and "done" in out, err
    assert sim.stats()["successes"] == paid
    assert pq.read_table(tmp_path).num_rows == ROWS


def test_killed_worker_is_replaced_and_its_rows_are_not_paid_twice(
    process_cluster: object, start_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    from distributed import Client

    client: Client = process_cluster  # type: ignore[assignment]
    sim = start_sim(mode="echo", latency=LATENCY)
    df = pd.DataFrame({"text": [f"row {i}" for i in range(ROWS)]})
    out = dask_llm.enrich(dd.from_pandas(df, npartitions=PARTITIONS), "Say: {text}", "ans", "m",
                          endpoint=endpoint_for(sim), threads=THREADS, checkpoint=tmp_path)  # fmt: skip
    pids = client.run(os.getpid)
    future = client.compute(out)
    try:
        wait_for_successes(sim, ROWS // 4, lambda: not future.done())
        busy = [addr for addr, keys in client.processing().items() if keys]
        assert busy, "no worker is running a partition"
        os.kill(pids[busy[0]], signal.SIGKILL)
        result = future.result(timeout=120)
    finally:
        future.cancel()
    assert result["ans"].tolist() == [f"Say: row {i}" for i in range(ROWS)]
    assert pids[busy[0]] not in client.run(os.getpid).values()  # it really died
    # In flight in the dead worker: its threads' partitions times THREADS calls.
    per_worker = next(iter(client.nthreads().values()))
    check_everything_paid_once(sim, THREADS * per_worker, tmp_path)


def test_ctrl_c_keeps_the_rows_waiting_for_the_journal(start_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    # Ctrl+C must save what the journal has not written yet on the way out,
    # so only the calls in flight are repeated.
    sim = start_sim(mode="echo", latency=LATENCY)
    threads = 2 * THREADS  # one partition at a time here: twice the threads, same in-flight scale
    args = [str(tmp_path), sim.url, API_KEY, str(ROWS), str(threads)]

    def run() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", PANDAS_DRIVER, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    first = run()
    try:
        wait_for_successes(sim, ROWS // 3, lambda: first.poll() is None)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode != 0 and "KeyboardInterrupt" in err
    assert not list(tmp_path.glob("part-*.parquet"))  # nothing committed: only the journal

    resumed = run()
    try:
        out, err = resumed.communicate(timeout=120)
    finally:
        resumed.kill()
    assert resumed.returncode == 0 and "done" in out, err
    check_everything_paid_once(sim, threads, tmp_path)
