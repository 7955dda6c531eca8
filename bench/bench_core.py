"""Core throughput: a sequential loop against dask-llm, at 2.5 s per call.

Reproduces the published experiment (50 rows at 2.5 s latency: a sequential
loop took 126.4 s, a thread pool 6.2 s, 20x) and adds the 3,412-row case with
100 calls in flight. The physical limit is set by latency and concurrency:
``ceil(rows / concurrency) * latency``; dask-llm should come within 15% of it.

The simulator runs as a separate process with a constant latency, so every
figure is a ratio to a limit known exactly, not an absolute that depends on
this machine.

Run:  python bench/bench_core.py            (about 4 minutes)
      python bench/bench_core.py --quick    (smaller, for a smoke test)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dask
import dask.dataframe as dd
import openai
import pandas as pd
from distributed import Client, LocalCluster

import dask_llm
from dask_llm.simulator import Simulator, SimulatorConfig

RESULTS = Path(__file__).parent / "results"
PROMPT = "Which cloud service is this ticket about? {title}\n{body}"


def tickets(n: int, run: str = "") -> pd.DataFrame:
    # Distinct content per run: dask would otherwise hand back a result it
    # still holds under the same key instead of computing it again.
    return pd.DataFrame(
        {"title": [f"ticket {run}{i}" for i in range(n)], "body": [f"my service {i % 17} is down" for i in range(n)]}
    )


def sequential(endpoint: dask_llm.Endpoint, df: pd.DataFrame) -> float:
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0)
    start = time.perf_counter()
    for row in df.itertuples():
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": PROMPT.format(title=row.title, body=row.body)}]
        )
    return time.perf_counter() - start


def timed_enrich(client: Client, df: pd.DataFrame, npartitions: int, threads: int, endpoint) -> tuple[float, int]:
    ddf = dd.from_pandas(df, npartitions=npartitions)
    out = dask_llm.enrich(ddf, PROMPT, "service", "m", endpoint=endpoint, threads=threads)
    start = time.perf_counter()
    result = client.compute(out).result()
    elapsed = time.perf_counter() - start
    return elapsed, int(result["service_error"].notna().sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="0.5 s latency and fewer rows")
    args = parser.parse_args()
    latency = 0.5 if args.quick else 2.5
    big_rows = 500 if args.quick else 3412

    rows: list[dict[str, object]] = []
    with Simulator.subprocess(SimulatorConfig(latency=latency, seed=0)) as sim:
        endpoint = dask_llm.Endpoint(base_url=sim.url, api_key="k")

        seq = sequential(endpoint, tickets(50))

        with dask.config.set({"distributed.worker.daemon": True}):
            with (
                LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cl,
                Client(cl) as client,
            ):
                # Warm-up: the worker imports dask_llm and opens its connections.
                timed_enrich(client, tickets(50, "warm-up "), 1, 50, endpoint)
                small, small_errors = timed_enrich(client, tickets(50), 1, 50, endpoint)
            with (
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cl,
                Client(cl) as client,
            ):
                timed_enrich(client, tickets(100, "warm-up "), 2, 50, endpoint)
                big, big_errors = timed_enrich(client, tickets(big_rows), 8, 50, endpoint)

    small_limit = latency  # 50 calls in flight at once: one latency
    # 8 partitions of ~rows/8 on 2 single-threaded workers, 50 threads each:
    # each worker runs 4 partitions one after another.
    per_partition = math.ceil(big_rows / 8 / 50) * latency
    big_limit = 4 * per_partition
    big_ideal = math.ceil(big_rows / 100) * latency  # 100 in flight, no partition tails
    rows.append(
        {
            "case": "50 rows, sequential loop (openai client)",
            "seconds": round(seq, 2),
            "limit_s": 50 * latency,
            "ratio_to_limit": round(seq / (50 * latency), 3),
            "speedup_vs_sequential": 1.0,
            "errors": 0,
        }
    )
    rows.append(
        {
            "case": "50 rows, dask-llm, 1 partition x 50 threads",
            "seconds": round(small, 2),
            "limit_s": small_limit,
            "ratio_to_limit": round(small / small_limit, 3),
            "speedup_vs_sequential": round(seq / small, 1),
            "errors": small_errors,
        }
    )
    seq_big = seq / 50 * big_rows
    rows.append(
        {
            "case": f"{big_rows} rows, dask-llm, 2 workers x 8 partitions x 50 threads (100 in flight)",
            "seconds": round(big, 2),
            "limit_s": big_limit,
            "ratio_to_limit": round(big / big_limit, 3),
            "speedup_vs_sequential": round(seq_big / big, 1),
            "errors": big_errors,
        }
    )
    meta = {
        "command": "python bench/bench_core.py" + (" --quick" if args.quick else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}",
        "latency_s": latency,
        "sequential_extrapolated_s": round(seq_big, 1),
        "ideal_100_in_flight_s": big_ideal,
    }
    write(meta, rows, args.quick)


def write(meta: dict[str, object], rows: list[dict[str, object]], quick: bool) -> None:
    name = "core-quick" if quick else "core"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Core throughput: sequential loop vs dask-llm",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Simulator: separate process, constant latency {meta['latency_s']} s per call, no faults.",
        "",
        "`limit_s` is the physical limit: ceil(rows per partition / threads) x latency, summed over the",
        "partitions a worker runs one after another. `ratio_to_limit` 1.00 would be perfect.",
        "",
        "| case | seconds | limit (s) | ratio to limit | speed-up vs sequential | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['seconds']} | {r['limit_s']} | {r['ratio_to_limit']} | "
            f"{r['speedup_vs_sequential']}x | {r['errors']} |"
        )
    lines += [
        "",
        f"The sequential loop over all rows, extrapolated from the 50-row loop: {meta['sequential_extrapolated_s']} s. "
        f"With 100 calls in flight and no partition tails the ideal would be {meta['ideal_100_in_flight_s']} s.",
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
