"""The Batch API beside synchronous calls: the same 10,000 rows both ways.

Both runs are one ``enrich()`` of 10,000 rows in 8 partitions on the
threaded scheduler (2 threads), against one simulator:

- synchronous: 0.25 s per call, 32 calls in flight per partition;
- ``batch=BatchAPI(poll_interval=1)``: a simulated batch turnaround of 60 s
  (a real one is minutes to 24 hours: the wall time here is the turnaround
  plus the overhead the library adds, which is what this measures).

Recorded for each: rows right, cost at list price (gpt-4o-mini's, from the
library's price table, the batch rows at the batch price), HTTP requests the
server received (chat calls; file uploads, batch creates, polls, downloads),
and wall time.

Usage::

    python bench/bench_batch.py

Writes ``bench/results/batch.md`` and ``batch.json``.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd

import dask_llm
from dask_llm import BatchAPI, Endpoint
from dask_llm.simulator import Simulator, SimulatorConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS = 10_000
PARTITIONS = 8
LATENCY = 0.25
THREADS = 32
TURNAROUND = 60.0
PRICED_AS = "gpt-4o-mini"


def frame() -> pd.DataFrame:
    return pd.DataFrame({"id": range(ROWS), "text": [f"ticket {i}: my VM does not boot" for i in range(ROWS)]})


def one(batch: BatchAPI | None) -> dict[str, Any]:
    config = SimulatorConfig(mode="echo", latency=LATENCY, latency_sd=0.0, batch_turnaround=TURNAROUND, seed=1)
    with Simulator(config) as sim, dask.config.set(scheduler="threads", num_workers=2):
        ddf = dd.from_pandas(frame(), npartitions=PARTITIONS)
        lazy = dask_llm.enrich(ddf, "Say: {text}", "ans", "m", endpoint=Endpoint(base_url=sim.url, api_key="k"),
                               threads=THREADS, budget=False, batch=batch)  # fmt: skip
        start = time.perf_counter()
        out = lazy.compute()
        wall = time.perf_counter() - start
        stats = sim.stats()
    summary = dask_llm.summarize(out, "ans", model=PRICED_AS, batch=batch is not None)
    right = int(((out["ans"] == "Say: " + out["text"]) & out["ans_error"].isna()).sum())
    return {
        "rows_right": right,
        "cost": summary.cost,
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "http_requests": stats["requests"],
        "batches": stats["batch"]["batches"],
        "wall_s": wall,
    }


def main() -> None:
    sync = one(None)
    batch = one(BatchAPI(poll_interval=1.0))
    cmd = "python bench/bench_batch.py"
    meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "command": cmd}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps({**meta, "sync": sync, "batch": batch}, indent=2) + "\n")
    best = ROWS / (2 * THREADS) * LATENCY  # 2 partitions at once, every call at full concurrency
    lines = [
        "# The Batch API beside synchronous calls",
        "",
        f"Command: `{cmd}` ({meta['date']}, Python {meta['python']}, 2 shared cores).",
        "",
        f"{ROWS:,} rows in {PARTITIONS} partitions, threaded scheduler with 2 threads, one simulator. "
        f"Synchronous: {LATENCY} s per call, {THREADS} calls in flight per partition (at 2 partitions at once, "
        f"{ROWS:,} / {2 * THREADS} x {LATENCY} s = {best:.0f} s at best). "
        f"Batch: a simulated turnaround of {TURNAROUND:.0f} s per batch, polled every second "
        f"(a real batch takes minutes to 24 hours). Cost at {PRICED_AS}'s list price.",
        "",
        "| | rows right | cost | HTTP requests | batches | wall time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("synchronous", sync), ("batch=True", batch)):
        lines.append(
            f"| {name} | {r['rows_right']:,} | ${r['cost']:.4f} | {r['http_requests']:,} | {r['batches']} | "
            f"{r['wall_s']:.1f} s |"
        )
    lines += [
        "",
        "HTTP requests: what the server received; synchronous, one chat call per row; batch, the file "
        "uploads, batch creates, polls and result downloads.",
        "",
        f"- cost, batch / synchronous: {batch['cost'] / sync['cost']:.3f} (same tokens: "
        f"{batch['prompt_tokens']:,} in, {batch['completion_tokens']:,} out both ways: "
        f"{sync['prompt_tokens'] == batch['prompt_tokens'] and sync['completion_tokens'] == batch['completion_tokens']})",
        f"- batch wall time over the turnaround: {batch['wall_s'] - TURNAROUND:.1f} s "
        "(submitting every partition, polling, downloading and writing the answers)",
        f"- synchronous wall time over its best ({best:.0f} s): {sync['wall_s'] / best:.2f}x",
        "",
    ]
    (RESULTS / "batch.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
