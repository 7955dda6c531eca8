"""Spark beside Dask: the same job on both engines, and the acceptance runs of the Spark engine.

1. The same 3,000-row job (0.5 s per call, 32 calls in flight per
   partition, 2 partitions at once) on a Dask ``LocalCluster`` of 2 worker
   processes and on Spark ``local[2]``, each as a ratio to the physical limit
   (one latency per round of 64 concurrent calls), in one run.
2. Acceptance (a): 1,200 rows in 6 partitions, ``threads=32``,
   ``Budget(rpm=1200)`` against a simulator limited to 1,200 RPM, 0.5 s:
   rows right, achieved rate as a share of the limit, 429 share.
3. Acceptance (b): 1,600 rows with a checkpoint, the Spark driver SIGKILLed
   mid-run and the job re-run: extra paid calls.

Usage::

    python bench/bench_spark.py

Writes ``bench/results/spark.md`` and ``spark.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LATENCY = 0.5

SPARK_JOB = """
import os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
from pyspark.sql import SparkSession
import dask_llm
base_url, rows, partitions, threads, rpm, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.driver.host", "127.0.0.1").getOrCreate())
sdf = spark.createDataFrame([(i, f"ticket {i}: my VM does not boot") for i in range(rows)], "id long, text string")
sdf = sdf.repartition(partitions).cache()
sdf.count()
kwargs = {"budget": dask_llm.Budget(rpm=float(rpm))} if rpm != "none" else {}
if ckpt != "none":
    kwargs["checkpoint"] = ckpt
out = dask_llm.enrich(sdf, "Say: {text}", "ans", "m", endpoint=dask_llm.Endpoint(base_url=base_url, api_key="k"),
                      threads=threads, **kwargs)
start = time.perf_counter()
rows_out = out.collect()
print("seconds", time.perf_counter() - start, flush=True)
print("right", sum(r.ans == "Say: " + r.text and r.ans_error is None for r in rows_out), flush=True)
spark.stop()
"""

DASK_JOB = """
import sys, time
import dask.dataframe as dd, pandas as pd
from distributed import Client, LocalCluster
import dask_llm
base_url, rows, partitions, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
df = pd.DataFrame({"id": range(rows), "text": [f"ticket {i}: my VM does not boot" for i in range(rows)]})
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster, \\
        Client(cluster) as client:
    ddf = dd.from_pandas(df, npartitions=partitions).persist()
    out = dask_llm.enrich(ddf, "Say: {text}", "ans", "m", endpoint=dask_llm.Endpoint(base_url=base_url, api_key="k"),
                          threads=threads)
    start = time.perf_counter()
    result = out.compute()
    print("seconds", time.perf_counter() - start, flush=True)
    print("right", int(((result["ans"] == "Say: " + result["text"]) & result["ans_error"].isna()).sum()), flush=True)
"""


def _run(code: str, *args: str, timeout: float = 900) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    figures = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition(" ")
        figures[name] = float(value)
    return figures


def engines(rows: int = 3000) -> dict[str, Any]:
    from dask_llm.simulator import Simulator, SimulatorConfig

    limit = rows / 64 * LATENCY
    results: dict[str, Any] = {"rows": rows, "limit_seconds": limit}
    with Simulator.subprocess(SimulatorConfig(mode="echo", latency=LATENCY)) as sim:
        results["dask"] = _run(DASK_JOB, sim.url, str(rows), "8", "32")
        sim.reset()
        results["spark"] = _run(SPARK_JOB, sim.url, str(rows), "8", "32", "none", "none")
    return results


def acceptance_budget() -> dict[str, Any]:
    from dask_llm.simulator import Simulator, SimulatorConfig

    with Simulator.subprocess(SimulatorConfig(mode="echo", latency=LATENCY, rpm=1200)) as sim:
        figures = _run(SPARK_JOB, sim.url, "1200", "6", "32", "1200", "none")
        stats = sim.stats()
    times = sorted(t for t, _ in stats["success_times"])
    # The achieved rate once the simulator's burst (5 s of rate) is spent: answers per minute
    # between the 100th and the last answer.
    steady = (len(times) - 100) / max(times[-1] - times[99], 1e-9) * 60 if len(times) > 100 else float("nan")
    return {
        "rows": 1200,
        "right": figures["right"],
        "seconds": figures["seconds"],
        "requests": stats["requests"],
        "rate_limited": stats["rate_limited"],
        "rate_limited_share": stats["rate_limited"] / stats["requests"],
        "steady_rpm": steady,
        "share_of_limit": steady / 1200,
    }


def acceptance_kill(tmp: Path) -> dict[str, Any]:
    from dask_llm.simulator import Simulator, SimulatorConfig

    rows, ckpt = 1600, str(tmp / "ckpt")
    with Simulator.subprocess(SimulatorConfig(mode="echo", latency=LATENCY)) as sim:
        args = [sys.executable, "-c", SPARK_JOB, sim.url, str(rows), "8", "16", "none", ckpt]
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 600
        while sim.stats()["successes"] < rows // 2:
            if first.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the first run ended before the kill")
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        at_kill = sim.stats()["successes"]
        time.sleep(1.0)
        second = _run(SPARK_JOB, sim.url, str(rows), "8", "16", "none", ckpt)
        counts = sim.stats()["success_by_prompt"]
    return {
        "rows": rows,
        "answered_at_kill": at_kill,
        "rows_answered": len(counts),
        "extra_paid": sum(c - 1 for c in counts.values()),
        "right_after_resume": second["right"],
        "in_flight_bound": 2 * 16,
    }


def main() -> None:
    cmd = shlex.join(["python", "bench/bench_spark.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        eng = engines()
        print(eng)
        budget = acceptance_budget()
        print(budget)
        kill = acceptance_kill(Path(tmp))
        print(kill)
    meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "command": cmd}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spark.json").write_text(json.dumps({**meta, "engines": eng, "budget": budget, "kill": kill}, indent=2))
    limit = eng["limit_seconds"]
    lines = [
        "# Spark beside Dask",
        "",
        f"Command: `{cmd}` ({meta['date']}, Python {meta['python']}, pyspark local[2] on 2 shared cores).",
        "",
        f"## The same job on both engines: {eng['rows']:,} rows, 0.5 s per call, 64 calls in flight",
        "",
        f"Physical limit: {eng['rows']:,} / 64 x 0.5 s = {limit:.1f} s. Timed from the action (`compute()` / "
        "`collect()`) to its result; session and cluster start-up excluded.",
        "",
        "| engine | seconds | ratio to the limit | rows right |",
        "|---|---:|---:|---:|",
        f"| Dask LocalCluster, 2 worker processes | {eng['dask']['seconds']:.1f} | {eng['dask']['seconds'] / limit:.2f} | "
        f"{int(eng['dask']['right']):,} |",
        f"| Spark local[2] | {eng['spark']['seconds']:.1f} | {eng['spark']['seconds'] / limit:.2f} | "
        f"{int(eng['spark']['right']):,} |",
        "",
        "## Acceptance (a): one budget across executors",
        "",
        "1,200 rows in 6 partitions, `threads=32`, `Budget(rpm=1200)`, simulator limited to 1,200 RPM (5 s burst), 0.5 s.",
        "",
        f"- rows right: {int(budget['right']):,} of {budget['rows']:,}",
        f"- achieved rate after the burst: {budget['steady_rpm']:,.0f} RPM ({budget['share_of_limit']:.1%} of the "
        "limit; target at least 85%)",
        f"- 429s: {budget['rate_limited']} of {budget['requests']:,} requests ({budget['rate_limited_share']:.1%}; "
        "target under 2%)",
        "",
        "## Acceptance (b): a killed driver",
        "",
        "1,600 rows with a checkpoint, 8 partitions, 16 calls in flight per task (2 tasks at once): the driver "
        "SIGKILLed at half, then the same job again.",
        "",
        f"- answers billed at the kill: {kill['answered_at_kill']:,}",
        f"- extra paid calls: {kill['extra_paid']} (target at most 40; calls in flight: {kill['in_flight_bound']})",
        f"- rows answered: {kill['rows_answered']:,} of {kill['rows']:,}; right after the re-run: "
        f"{int(kill['right_after_resume']):,}",
        "",
    ]
    (RESULTS / "spark.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
