"""The cluster-wide budget against a provider's rate limit.

Every scenario runs on one ``LocalCluster`` of 3 worker processes (one task
thread each, so ``threads`` runner threads per worker) against the simulator
in its own process, which enforces RPM/TPM with token buckets and answers
429 with Retry-After, like a provider. Each figure is compared with a
baseline measured in the same run:

1. RPM wall: 3 workers x 32 threads, 0.5 s latency, limit 1,200 RPM; with
   no budget (the 429 storm) and with ``Budget(rpm=1200)``.
2. TPM wall: the same with only a TPM limit binding.
3. Coordination cost: budget messages to/from the scheduler per request
   (counted in the scheduler: the budget plugin's handlers and pushes,
   plugin registration), for the rate budget and for ``max_concurrency``
   at 10x and 30x max_concurrency requests, and CPU per request of the
   whole cluster (workers + scheduler) against the openai client called
   directly from a thread pool in one process.
4. Sweep of threads per partition, 1 to 256, with and without the budget:
   where the rate-limit wall begins (table + PNG).

Achieved rate = successes per minute in steady state: from 5 s after the
first success (the simulator's burst allowance, 5 s of the limit, would
flatter short runs) to the last one, on the simulator's own clock.

Run:  python bench/bench_budget.py            (about 15 minutes)
      python bench/bench_budget.py --quick    (smaller, for a smoke test)
      python bench/bench_budget.py --only rpm,concurrency   (re-run some scenarios,
                                               keep the others' saved figures)
      python bench/bench_budget.py --report-only   (rewrite the .md/.png from the .json)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import openai
import pandas as pd
from distributed import Client, LocalCluster

import dask_llm
from dask_llm import Budget, RetryPolicy
from dask_llm._coordination._plugin import CoordinatorPlugin
from dask_llm.simulator import Simulator, SimulatorConfig

RESULTS = Path(__file__).parent / "results"
PROMPT = "Which cloud service is this ticket about? {title}"
WORKERS = 3
LATENCY = 0.5
RPM = 1200
TPM = 40_000
MAX_TOKENS = 40
SIM_BURST = 5.0  # the simulator's default burst_seconds


def tickets(n: int, run: str) -> pd.DataFrame:
    # Distinct content per run: dask would otherwise hand back a result it
    # still holds under the same key instead of computing it again.
    return pd.DataFrame({"title": [f"{run} ticket {i}: my service {i % 17} is down" for i in range(n)]})


# -- scheduler-side message counting ------------------------------------------------

_COUNTED = ("dask_llm_budget_lease", "dask_llm_budget_release", "dask_llm_budget_penalize")


def _install_counters(dask_scheduler: Any) -> None:
    counts = dask_scheduler.__dict__.setdefault("_bench_counts", collections.Counter())
    for op, handler in list(dask_scheduler.handlers.items()):
        if (op.startswith(_COUNTED) or op == "register_scheduler_plugin") and not hasattr(handler, "_bench"):

            def counted(*args: Any, __op: str = op, __h: Any = handler, **kwargs: Any) -> Any:
                counts[__op] += 1
                return __h(*args, **kwargs)

            functools.update_wrapper(counted, handler)
            counted._bench = True  # type: ignore[attr-defined]
            dask_scheduler.handlers[op] = counted


def _read_counters(dask_scheduler: Any) -> dict[str, int]:
    counts = dict(dask_scheduler.__dict__.get("_bench_counts", {}))
    plugin = dask_scheduler.plugins.get("dask-llm")
    pushes = sum(e.messages["push"] for e in plugin.state.budgets.values()) if plugin else 0
    counts["push"] = pushes
    return counts


def _cpu() -> float:
    return time.process_time()


def cluster_cpu(client: Client) -> float:
    return sum(client.run(_cpu).values()) + client.run_on_scheduler(_cpu)


# -- one enrichment ---------------------------------------------------------------------


def run_job(
    client: Client,
    sim: Any,
    rows: int,
    threads: int,
    budget: Budget | None,
    tag: str,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    sim.reset()
    endpoint = dask_llm.Endpoint(base_url=sim.url, api_key="k", timeout=30)
    ddf = dd.from_pandas(tickets(rows, tag), npartitions=WORKERS * 2)
    out = dask_llm.enrich(
        ddf,
        PROMPT,
        "service",
        "m",
        endpoint=endpoint,
        threads=threads,
        budget=False if budget is None else budget,  # None: no budget at all (not the adaptive default)
        max_tokens=max_tokens,
        retry=RetryPolicy(max_attempts=6),
    )
    msgs0, cpu0 = client.run_on_scheduler(_read_counters), cluster_cpu(client)
    start = time.perf_counter()
    result = client.compute(out).result()
    wall = time.perf_counter() - start
    cpu1 = cluster_cpu(client)
    if budget is not None:
        time.sleep(1.5)  # the workers hand their shares back once idle: count those messages too
    msgs1 = client.run_on_scheduler(_read_counters)
    stats = sim.stats()
    times = sorted(t for t, _ in stats["success_times"])
    tokens = sum(c for _, c in stats["success_times"])
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    # Steady state: after the provider's own burst allowance (5 s of the
    # limit, refilled by sim.reset()) which would flatter short runs.
    steady = [t for t in times if t >= times[0] + SIM_BURST] if times else []
    steady_span = steady[-1] - steady[0] if len(steady) > 1 else 0.0
    steady_tokens = sum(c for t, c in stats["success_times"] if steady and t >= steady[0])
    steady_ok = steady_span > 5  # else (a run cut short by failures) the whole span
    achieved_rpm = (len(steady) - 1) / steady_span * 60 if steady_ok else (len(times) - 1) / span * 60
    achieved_tpm = steady_tokens / steady_span * 60 if steady_ok else tokens / span * 60
    msgs = {k: msgs1.get(k, 0) - msgs0.get(k, 0) for k in msgs1}
    msgs = {k: v for k, v in msgs.items() if v}
    return {
        "rows": rows,
        "threads": threads,
        "budget": None if budget is None else repr(budget),
        "wall_s": round(wall, 2),
        "requests": stats["requests"],
        "successes": stats["successes"],
        "rate_limited": stats["rate_limited"],
        "achieved_rpm": round(achieved_rpm, 1),
        "achieved_tpm": round(achieved_tpm, 0),
        "achieved_over": "steady state" if steady_ok else "whole span",
        "pct_429": round(100 * stats["rate_limited"] / max(1, stats["requests"]), 2),
        "failed_rows": int(result["service_error"].notna().sum()),
        "span_rpm": round((len(times) - 1) / span * 60, 1) if len(times) > 1 else 0.0,
        "span_tpm": round(tokens / span * 60, 0) if len(times) > 1 else 0.0,
        "goodput_rpm": round(stats["successes"] / wall * 60, 1),
        "max_in_flight": stats["max_in_flight"],
        "budget_messages": sum(msgs.values()),
        "messages_by_kind": msgs,
        "msgs_per_request": round(sum(msgs.values()) / max(1, stats["requests"]), 4),
        "cluster_cpu_s": round(cpu1 - cpu0, 3),
    }


def budget_code_path(threads: int = 32, per_thread: int = 4000) -> dict[str, Any]:
    """CPU of the budget's own calls per request (lease, acquire, settle,
    observe), limits not binding, in this process: what the budget adds to a
    request wherever it runs, free of cluster noise."""
    import threading

    from dask_llm._budget._process import limiter_for
    from dask_llm._coordination import local_coordinator

    limiter = limiter_for(Budget(rpm=1e9, tpm=1e12, max_concurrency=threads), local_coordinator())
    headers = {"x-ratelimit-limit-requests": "1000000000", "x-ratelimit-limit-tokens": "1000000000000"}

    def work() -> None:
        with limiter.lease():
            for _ in range(per_thread):
                limiter.acquire(60)
                limiter.settle(60, 52)
                limiter.observe(headers)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    cpu0, start = time.process_time(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - start
    n = threads * per_thread
    return {"requests": n, "cpu_s": round(cpu, 3), "wall_s": round(wall, 2), "us_per_request": round(1e6 * cpu / n, 2)}


def direct_thread_pool(sim: Any, rows: int, threads: int) -> dict[str, Any]:
    """The openai client called from a plain thread pool in this process."""
    sim.reset()
    client = openai.OpenAI(base_url=sim.url, api_key="k", max_retries=0)
    df = tickets(rows, "direct")

    def call(title: str) -> None:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT.format(title=title)}])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(call, df["title"][:threads]))  # warm-up: connections
        sim.reset()
        cpu0, start = time.process_time(), time.perf_counter()
        list(pool.map(call, df["title"]))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - start
    return {"requests": sim.stats()["requests"], "cpu_s": round(cpu, 3), "wall_s": round(wall, 2)}


# -- scenarios ----------------------------------------------------------------------------

SCENARIOS = ("rpm", "tpm", "concurrency", "cpu", "sweep")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rows and sweep points")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the saved JSON")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated scenarios to run, of {','.join(SCENARIOS)}"
    )
    args = parser.parse_args()
    saved_path = RESULTS / f"budget{'-quick' if args.quick else ''}.json"
    if args.report_only:
        saved = json.loads(saved_path.read_text())
        write(saved["meta"], saved["results"], args.quick)
        return 0
    only = set(args.only.split(","))
    if only - set(SCENARIOS):
        parser.error(f"unknown scenarios: {sorted(only - set(SCENARIOS))}")
    minutes = 0.5 if args.quick else 1.5  # of traffic at the limit per wall scenario
    results: dict[str, Any] = {}
    meta_runs: dict[str, str] = {}
    if only != set(SCENARIOS):
        saved = json.loads(saved_path.read_text())
        results, meta_runs = saved["results"], saved["meta"].get("runs", {})
        meta_runs = meta_runs or {k: saved["meta"]["date"] for k in SCENARIOS}

    with (
        dask.config.set({"distributed.worker.daemon": True}),
        LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(CoordinatorPlugin())
        client.run_on_scheduler(_install_counters)

        # 1. RPM wall --------------------------------------------------------------
        rows = int(RPM * minutes)
        if "rpm" in only:
            with Simulator.subprocess(SimulatorConfig(latency=LATENCY, rpm=RPM, seed=0)) as sim:
                run_job(client, sim, 60, 8, Budget(rpm=RPM), "warm-up")  # imports, connections
                results["rpm_no_budget"] = run_job(client, sim, rows, 32, None, "rpm-none")
                results["rpm_budget"] = run_job(client, sim, rows, 32, Budget(rpm=RPM), "rpm-budget")
                results["rpm_budget_concurrency"] = run_job(
                    client, sim, rows, 32, Budget(rpm=RPM, max_concurrency=64), "rpm-budget-mc"
                )
                print(json.dumps({k: results[k] for k in results}, indent=1), flush=True)

        # 2. TPM wall ------------------------------------------------------------------
        # ~12 prompt tokens + 40 max_tokens = ~52 charged per request: ~770 requests/min.
        if "tpm" in only:
            with Simulator.subprocess(SimulatorConfig(latency=LATENCY, tpm=TPM, seed=0)) as sim:
                rows_t = int(TPM / 52 * minutes)
                results["tpm_no_budget"] = run_job(client, sim, rows_t, 32, None, "tpm-none", MAX_TOKENS)
                results["tpm_budget"] = run_job(client, sim, rows_t, 32, Budget(tpm=TPM), "tpm-budget", MAX_TOKENS)
                print(json.dumps({k: results[k] for k in ("tpm_no_budget", "tpm_budget")}, indent=1), flush=True)

        # 3a. max_concurrency alone, demand above it: 3 workers x 32 threads, 64 slots,
        # jobs of 10x and 30x max_concurrency requests.
        if "concurrency" in only:
            with Simulator.subprocess(SimulatorConfig(latency=LATENCY, seed=0)) as sim:
                run_job(client, sim, 60, 8, Budget(max_concurrency=8), "mc-warm-up")  # imports, connections
                # A fixed rate far above demand: the slots' own messages. Then
                # max_concurrency alone, whose rate is adaptive (renewed every
                # 2 s only once a 429 gives it a rate to probe; none here).
                results["concurrency"] = [
                    run_job(client, sim, n, 32, Budget(max_concurrency=64, rpm=100_000), f"mc-{n}") for n in (640, 1920)
                ] + [run_job(client, sim, 640, 32, Budget(max_concurrency=64), "mc-adaptive-640")]
                print(json.dumps(results["concurrency"], indent=1), flush=True)

        # 3b. CPU per request, no limit binding -----------------------------------------------
        cpu_rows = 600 if args.quick else 3000
        if "cpu" in only:
            with Simulator.subprocess(SimulatorConfig(latency=0.05, seed=0)) as sim:
                run_job(client, sim, 300, 32, None, "cpu-warm")
                # Alternating repeats; the least CPU of each kind is kept (noise
                # only ever adds: heartbeats, the other processes on 2 cores).
                runs: dict[str, list[dict[str, Any]]] = {"direct": [], "none": [], "budget": []}
                for rep in range(3):
                    runs["direct"].append(direct_thread_pool(sim, cpu_rows, 32))
                    runs["none"].append(run_job(client, sim, cpu_rows, 32, None, f"cpu-none-{rep}"))
                    runs["budget"].append(
                        run_job(client, sim, cpu_rows, 32, Budget(rpm=600_000, max_concurrency=96), f"cpu-budget-{rep}")
                    )
                results["cpu_direct"] = min(runs["direct"], key=lambda r: r["cpu_s"] / r["requests"])
                results["cpu_dask_no_budget"] = min(runs["none"], key=lambda r: r["cluster_cpu_s"] / r["requests"])
                results["cpu_dask_budget"] = min(runs["budget"], key=lambda r: r["cluster_cpu_s"] / r["requests"])
                results["cpu_runs"] = runs
            results["cpu_budget_path"] = budget_code_path()

        # 4. Sweep of threads per partition ----------------------------------------------
        sweep = [1, 4, 32, 256] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
        seconds = 15 if args.quick else 25
        points = []
        if "sweep" in only:
            with Simulator.subprocess(SimulatorConfig(latency=LATENCY, rpm=RPM, seed=0)) as sim:
                for threads in sweep:
                    demand_rpm = WORKERS * threads / LATENCY * 60
                    n = max(3 * WORKERS * 2, int(min(demand_rpm, RPM) / 60 * seconds))
                    point = {"threads": threads, "demand_rpm": demand_rpm}
                    for label, budget in (("none", None), ("budget", Budget(rpm=RPM))):
                        r = run_job(client, sim, n, threads, budget, f"sweep-{threads}-{label}")
                        point[label] = r
                    points.append(point)
                    print(threads, point["none"]["achieved_rpm"], point["budget"]["achieved_rpm"], flush=True)
            results["sweep"] = points

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = {
        "command": "python bench/bench_budget.py" + (" --quick" if args.quick else ""),
        "date": date,
        "runs": {**meta_runs, **{k: date for k in only}},
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}",
        "versions": {
            "dask": dask.__version__,
            "distributed": __import__("distributed").__version__,
            "openai": openai.__version__,
        },
        "setup": f"LocalCluster({WORKERS} worker processes x 1 task thread), 6 partitions, "
        f"simulator subprocess, latency {LATENCY} s, RetryPolicy(max_attempts=6)",
    }
    write(meta, results, args.quick)
    return 0


# -- report ---------------------------------------------------------------------------------


def write(meta: dict[str, Any], res: dict[str, Any], quick: bool) -> None:
    name = "budget-quick" if quick else "budget"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "results": res}, indent=2) + "\n")
    png = plot(res["sweep"], RESULTS / f"{name}-sweep.png")

    def row(label: str, r: dict[str, Any], limit: float, key: str = "achieved_rpm") -> str:
        return (
            f"| {label} | {r[key]:,.0f} | {r[key] / limit:.1%} | {r['goodput_rpm']:,.0f} | {r['requests']:,} "
            f"| {r['pct_429']}% "
            f"| {r['failed_rows']} | {r['wall_s']} | {r['msgs_per_request']} |"
        )

    head = (
        "| case | achieved | of limit | goodput (rows/min) | requests | 429s | failed rows | wall (s) "
        "| budget msgs / request |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    rn, rb, rc = res["rpm_no_budget"], res["rpm_budget"], res["rpm_budget_concurrency"]
    tn, tb = res["tpm_no_budget"], res["tpm_budget"]
    direct, cn, cb = res["cpu_direct"], res["cpu_dask_no_budget"], res["cpu_dask_budget"]
    ms_direct = 1000 * direct["cpu_s"] / direct["requests"]
    ms_none = 1000 * cn["cluster_cpu_s"] / cn["requests"]
    ms_budget = 1000 * cb["cluster_cpu_s"] / cb["requests"]
    bp = res["cpu_budget_path"]
    per_run = {
        k: [round(1000 * r.get("cpu_s", r.get("cluster_cpu_s", 0)) / r["requests"], 2) for r in v]
        for k, v in res["cpu_runs"].items()
    }
    spread = max((max(v) - min(v)) / min(v) for v in per_run.values())
    cpu_runs = "; ".join(f"{k}: {v}" for k, v in per_run.items())
    lines = [
        "# Cluster-wide budget vs a provider's rate limit",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        *(
            [f"Scenarios run at: {', '.join(f'{k} {v}' for k, v in meta['runs'].items())} (`--only`)  "]
            if len(set(meta.get("runs", {}).values())) > 1
            else []
        ),
        f"Machine: {meta['machine']}; dask {meta['versions']['dask']}, distributed "
        f"{meta['versions']['distributed']}, openai {meta['versions']['openai']}  ",
        f"Setup: {meta['setup']}. Simulator token buckets hold 5 s of the limit (its default burst).",
        "",
        "Achieved = successes per minute in steady state: from 5 s after the first success (the simulator's",
        "burst allowance of 5 s of the limit would flatter short runs) to the last success, simulator clock.",
        "Goodput = rows answered per minute of wall time, graph start to result.",
        "The baseline in each table is the same job in the same run without a budget.",
        "",
        f"## 1. Demand far above the limit: 3 workers x 32 threads, {LATENCY} s latency, limit {RPM:,} RPM",
        "",
        f"Demand: {WORKERS * 32 / LATENCY * 60:,.0f} requests/min, {WORKERS * 32 / LATENCY * 60 / RPM:.0f}x the limit.",
        "",
        head.replace("achieved", "achieved RPM"),
        sep,
        row("no budget (baseline)", rn, RPM),
        row(f"`Budget(rpm={RPM})`", rb, RPM),
        row(f"`Budget(rpm={RPM}, max_concurrency=64)`", rc, RPM),
        "",
        f"With the budget: {rb['achieved_rpm'] / RPM:.1%} of the limit (target >= 95%), "
        f"{rb['pct_429']}% 429s (target < 1%), vs {rn['pct_429']}% 429s and "
        f"{rn['failed_rows']} failed rows without it. "
        f"429s per request: {rb['pct_429'] / max(rn['pct_429'], 1e-9):.3f}x the baseline's.",
        "",
        f"## 2. Only a TPM limit binding: {TPM:,} TPM, max_tokens={MAX_TOKENS} (~52 tokens charged per request)",
        "",
        head.replace("achieved", "achieved TPM"),
        sep,
        row("no budget (baseline)", tn, TPM, "achieved_tpm"),
        row(f"`Budget(tpm={TPM})`", tb, TPM, "achieved_tpm"),
        "",
        "## 3. Coordination cost",
        "",
        "Messages to or from the scheduler that the budget causes, counted in the scheduler "
        "(lease/release/penalize handlers, pushed grants, plugin registration), per request sent, "
        "including the releases once the workers are idle after the job:",
        "",
        "| case | requests | budget messages | per request | by kind |",
        "|---|---:|---:|---:|---|",
    ]
    for label, r in (
        (f"`Budget(rpm={RPM})`, RPM wall", rb),
        (f"`Budget(rpm={RPM}, max_concurrency=64)`, RPM wall", rc),
        (f"`Budget(tpm={TPM})`, TPM wall", tb),
        ("`Budget(rpm=600000, max_concurrency=96)`, not binding, 0.05 s latency", cb),
        *(
            (f"`{r['budget'].split(', name=')[0]})`, 96 threads wanting, {r['requests']:,} requests", r)
            for r in res.get("concurrency", [])
        ),
    ):
        lines.append(
            f"| {label} | {r['requests']:,} | {r['budget_messages']} | {r['msgs_per_request']} | {r['messages_by_kind']} |"
        )
    if res.get("concurrency"):
        lines += [
            "",
            "Concurrency slots, `max_concurrency=64` (3 workers x 32 threads want 96): "
            + "; ".join(
                f"`{r['budget'].split(', name=')[0]})`, {r['requests']:,} requests: most in flight at the "
                f"provider {r['max_in_flight']}, "
                f"{r['msgs_per_request']} messages per request, wall {r['wall_s']} s"
                for r in res["concurrency"]
            )
            + ". Before this change (`distributed.Semaphore` leases, 2026-11-23 run of this command) the "
            "`max_concurrency=64` job of scenario 1 cost 321 messages for 1,800 requests (0.178 per request; "
            "112 acquires, 78 releases, 42 lease refreshes).",
        ]
    lines += [
        "",
        f"CPU per request, limits not binding, least of 3 alternating runs each (simulator latency 0.05 s, {cb['requests']:,} requests, 32 threads "
        "per partition; cluster = all worker processes + scheduler):",
        "",
        "| case | CPU ms / request | ratio to direct |",
        "|---|---:|---:|",
        f"| openai client in a thread pool, one process (baseline) | {ms_direct:.2f} | 1.00 |",
        f"| dask-llm on the cluster, no budget | {ms_none:.2f} | {ms_none / ms_direct:.2f} |",
        f"| dask-llm on the cluster, with budget | {ms_budget:.2f} | {ms_budget / ms_direct:.2f} |",
        "",
        f"Between repeats the cluster figures move by up to {spread:.0%} (the simulator and 3 workers "
        "share 2 cores; heartbeats run by the second), more than the budget could add, so the budget's "
        f"own cost is measured on its code path (lease, acquire, settle, observe; 32 threads, "
        f"{bp['requests']:,} requests, limits not binding): **{bp['us_per_request']:.1f} us per request**, "
        f"{bp['us_per_request'] / 1000 / ms_direct:.1%} of the CPU the openai client itself spends per request "
        f"({ms_direct:.2f} ms). Cluster runs, CPU ms per request: {cpu_runs}.",
        "",
        f"## 4. Threads per partition: where the wall begins ({LATENCY} s latency, limit {RPM:,} RPM, 3 workers)",
        "",
        "Without a budget the rows fail fast, so those runs are short and their successes per minute",
        "include the provider's 5 s burst allowance: compare the failed rows and 429s.",
        "",
        "| threads | demand RPM | no budget: RPM | goodput | 429s | failed rows "
        "| budget: RPM | goodput | 429s | failed rows |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in res["sweep"]:
        n, b = p["none"], p["budget"]
        lines.append(
            f"| {p['threads']} | {p['demand_rpm']:,.0f} | {n['achieved_rpm']:,.0f} | {n['goodput_rpm']:,.0f} "
            f"| {n['pct_429']}% | {n['failed_rows']} | {b['achieved_rpm']:,.0f} | {b['goodput_rpm']:,.0f} "
            f"| {b['pct_429']}% | {b['failed_rows']} |"
        )
    lines += ["", f"![sweep]({png.name})", ""]
    lines += [
        "## How to read the message counts",
        "",
        "The rate budget lives in the scheduler (`CoordinatorPlugin`); each worker process holds a *share* of",
        "it (RPM and TPM per minute, weighted by its busy threads) valid for 30 s, renewed every 15 s or",
        "when its demand grows, and spends it locally from two token buckets refilled at that pace, with",
        "no message per request. A newcomer's share is carved out of the others by pushed grants, and a",
        "429 pushes a cool-down to every holder. So the rate part costs about one message per worker",
        "per 15 s plus a few per worker joining or leaving, whatever the request rate:",
        f"{rb['budget_messages']} messages for {rb['requests']:,} requests here.",
        "",
        "Concurrency slots (`max_concurrency`) are granted the same way, as a number of slots per",
        "process, with the rates: a runner thread takes and gives back a slot locally with no message.",
        "The number moves when a process joins or leaves, starts a pool with more threads than its",
        "slots, or has had slots its threads no longer want for 2 s while another waits; a slot taken",
        "back from a process goes to another only once the first says its threads have let go of it",
        "(one renewal), so the slots in use never add up to more than `max_concurrency`. A renewal",
        "between regular ones never reports a smaller demand (at a pool's start its threads are still",
        "ramping up), and the larger parts a release leaves to the others are pushed 1 s later, so",
        "that the holders finishing a job one after another cost one push per holder still there.",
        "The cost is a few messages per worker joining and per slot move, not per slot or request:",
        f"{rc['budget_messages']} messages for {rc['requests']:,} requests in scenario 1.",
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def plot(points: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = [p["threads"] for p in points]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax1.plot(threads, [p["demand_rpm"] for p in points], ":", color="grey", label="demand (threads / latency)")
    ax1.plot(threads, [p["budget"]["achieved_rpm"] for p in points], "s-", color="C1", label=f"Budget(rpm={RPM})")
    ax1.plot(
        threads,
        [p["none"]["achieved_rpm"] for p in points],
        "o--",
        color="C0",
        alpha=0.6,
        label="no budget (short runs: rows fail)",
    )
    ax1.axhline(RPM, color="red", lw=1, label="provider limit")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("threads per partition (3 workers, 0.5 s latency)")
    ax1.set_ylabel("successful requests / min")
    ax1.set_title("Achieved rate: the wall")
    ax1.legend(fontsize=8)
    for ax, key, title in (
        (ax2, "failed", "% of rows failed (after 6 attempts)"),
        (ax3, "pct_429", "% of requests answered 429"),
    ):
        for label, marker, color in (("none", "o-", "C0"), ("budget", "s-", "C1")):
            if key == "failed":
                ys = [100 * p[label]["failed_rows"] / p[label]["rows"] for p in points]
            else:
                ys = [p[label][key] for p in points]
            ax.plot(threads, ys, marker, color=color, label="no budget" if label == "none" else "budget")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("threads per partition (3 workers, 0.5 s latency)")
        ax.set_title(title)
        ax.set_ylim(-3, 100)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
