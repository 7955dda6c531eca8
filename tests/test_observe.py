"""Watching a running job: the dask-llm page on the scheduler's dashboard and
the Prometheus metrics on its ``/metrics``.

Everything here runs on a ``LocalCluster`` of worker processes with its
dashboard on a free loopback port, against a simulator in its own process;
the simulator's own counters are the proof of what was called and paid.
The page is loaded in headless Chromium (``tests/_chromium.py``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import pandas as pd
import pytest

import dask_llm
from dask_llm import Budget, Endpoint, Price, RetryPolicy, SpendCap
from dask_llm.simulator import Simulator, SimulatorConfig

from ._chromium import load

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
PRICE = Price(0.15, 0.60)
FAST_RETRY = RetryPolicy(backoff_initial=0.05, backoff_max=0.2, max_retry_after=0.2)


def dashboard(client: Any) -> str:
    """The dashboard's root URL, e.g. ``http://127.0.0.1:40123``."""
    return str(client.dashboard_link).rsplit("/", 1)[0]


def tickets(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"ticket {i}: my VM does not boot" for i in range(n)]})


def enrich(ddf: dd.DataFrame, sim: Simulator, **kw: Any) -> dd.DataFrame:
    kw.setdefault("retry", FAST_RETRY)
    return dask_llm.enrich(ddf, "Classify: {text}", "label", MODEL,
                           endpoint=Endpoint(base_url=sim.url, api_key="k", timeout=20), **kw)  # fmt: skip


def metrics(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """dask-llm's series on the scheduler's ``/metrics``: (name, labels) -> value."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    series = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(dask_llm_\w+)\{(.*)\} (\S+)", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            series[(m.group(1), labels)] = float(m.group(3))
    return series


def total(series: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)


def wait_for(what: Callable[[], Any], timeout: float, message: str) -> Any:
    """Poll ``what()`` until it is truthy, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"within {timeout:g} s: {message}")


def jobs(base: str) -> list[dict[str, Any]]:
    """The jobs on the page's JSON, newest first (none before the first job registered the page)."""
    try:
        with urllib.request.urlopen(f"{base}/dask-llm/api/jobs.json", timeout=10) as answer:
            return list(json.load(answer)["jobs"])
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return []
        raise


def new_run(base: str, before: list[dict[str, Any]]) -> str:
    """The run id of the job announced since ``before`` (the module's cluster runs several)."""
    known = {j["run"] for j in before}
    return str(wait_for(lambda: next((j["run"] for j in jobs(base) if j["run"] not in known), None), 30, "a new job"))


def test_metrics_count_every_row_and_call_as_the_simulator_does(process_cluster: Any) -> None:
    """The acceptance run: 500 rows, /metrics during the job and after it,
    against what the simulator answered (5xx and 429s included)."""
    config = SimulatorConfig(latency=0.1, fail_rate=0.05, rate_limit_rate=0.02, seed=11, api_key="k")
    with Simulator.subprocess(config) as sim:
        base = dashboard(process_cluster)
        before = jobs(base)
        out = enrich(dd.from_pandas(tickets(500), npartitions=8), sim, threads=8)
        run = new_run(base, before)
        future = process_cluster.compute(out)
        during = wait_for(
            lambda: (m := metrics(base)) and 0 < total(m, "dask_llm_rows_total", run=run, status="ok") < 500 and m,
            60, "rows counted while the job runs",
        )  # fmt: skip
        result = future.result(timeout=120)
        stats = sim.stats()
        # The last progress batches leave the workers within half a second.
        after = wait_for(
            lambda: (m := metrics(base)) and total(m, "dask_llm_rows_total", run=run) >= 500 and m, 10, "every row"
        )

    assert result["label_error"].isna().all()
    rows = {s: total(after, "dask_llm_rows_total", run=run, status=s) for s in ("ok", "error", "restored")}
    assert rows == {"ok": 500, "error": 0, "restored": 0}
    outcomes = {o: total(after, "dask_llm_requests_total", run=run, outcome=o) for o in ("ok", "rate_limited", "error")}
    assert stats["rate_limited"] > 0 and stats["by_status"].get("500", 0) > 0  # the faults happened
    assert sum(outcomes.values()) == stats["requests"] == result["label_attempts"].sum()
    assert outcomes["ok"] == stats["successes"] == 500
    assert outcomes["rate_limited"] == stats["rate_limited"] == total(after, "dask_llm_rate_limited_total", run=run)
    assert outcomes["error"] == stats["requests"] - stats["successes"] - stats["rate_limited"]
    tokens = {k: total(after, "dask_llm_tokens_total", run=run, kind=k) for k in ("prompt", "completion")}
    assert tokens == {"prompt": stats["prompt_tokens"], "completion": stats["completion_tokens"]}
    assert total(after, "dask_llm_cost_usd_total", run=run) == pytest.approx(
        PRICE.cost(stats["prompt_tokens"], stats["completion_tokens"])
    )
    assert total(after, "dask_llm_calls_in_flight", run=run) == 0
    # Counters only grow: what was scraped mid-run is at most what came after.
    for key, value in during.items():
        if key[0].endswith("_total"):
            assert value <= after[key], key
    assert total(during, "dask_llm_rows_total", run=run) < 500


def test_a_restarted_worker_leaves_every_row_counted_once(process_cluster: Any, tmp_path: Path) -> None:
    """A worker process restarted mid-run: its partitions run again
    elsewhere, restoring what they had journaled. Every row is counted once,
    the counters never go down, and every call is counted at most once."""
    in_flight = 2 * 4  # the dead process's calls in flight at most: 2 partitions x 4 threads
    per_second = in_flight / 0.25
    with Simulator.subprocess(SimulatorConfig(latency=0.25, api_key="k")) as sim:
        base = dashboard(process_cluster)
        before = jobs(base)
        out = enrich(dd.from_pandas(tickets(240), npartitions=6), sim, threads=4, checkpoint=str(tmp_path / "ck"))
        run = new_run(base, before)
        samples: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.2):
                samples.append(total(metrics(base), "dask_llm_rows_total", run=run, status="ok"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        future = process_cluster.compute(out)
        wait_for(lambda: samples and samples[-1] >= 40, 60, "40 rows done")
        process_cluster.restart_workers([sorted(process_cluster.scheduler_info()["workers"])[0]])
        result = future.result(timeout=120)
        stats = sim.stats()
        after = wait_for(
            lambda: (m := metrics(base)) and total(m, "dask_llm_rows_total", run=run) >= 240 and m, 15, "every row"
        )
        sampling.set()
        sampler.join(10)

    assert result["label_error"].isna().all() and len(result) == 240
    # The journal kept what the dead process was paid for, but for its calls in flight.
    assert 240 <= stats["successes"] <= 240 + in_flight
    rows = {s: total(after, "dask_llm_rows_total", run=run, status=s) for s in ("ok", "error", "restored")}
    # The rows its partitions had saved count as rows of this run, as they did
    # before the restart ("restored" is for rows of earlier runs).
    assert rows == {"ok": 240, "error": 0, "restored": 0}
    assert samples == sorted(samples) and len(samples) > 5, samples  # a counter never goes down
    calls = total(after, "dask_llm_requests_total", run=run)
    # Never counted twice. The dead process took with it its calls in flight
    # and the counts of the calls it finished in its last 2 s (a 1 s stop
    # grace, then a progress interval), which it never sent.
    assert stats["requests"] - (in_flight + 2 * per_second) <= calls <= stats["requests"]


def test_calls_in_flight_show_before_any_row_finishes(process_cluster: Any) -> None:
    """The gauge goes with the counts, which come as rows finish: calls that
    take long (a 4 s answer) are in flight on the page while they run, not
    from when the first of them comes back."""
    with Simulator.subprocess(SimulatorConfig(latency=4.0, api_key="k")) as sim:
        base = dashboard(process_cluster)
        before = jobs(base)
        out = enrich(dd.from_pandas(tickets(16), npartitions=2), sim, threads=8)
        run = new_run(base, before)
        future = process_cluster.compute(out)
        wait_for(lambda: sim.stats()["in_flight"] >= 8, 20, "calls at the simulator")
        shown = wait_for(lambda: next(j for j in jobs(base) if j["run"] == run)["in_flight"], 2, "calls in flight")
        answered = sim.stats()["successes"]
        future.result(timeout=60)
    assert answered == 0, "shown before any row finished"
    assert 8 <= shown <= 16


def test_the_page_shows_a_running_job_its_budget_and_spend_in_chromium(process_cluster: Any) -> None:
    with Simulator.subprocess(SimulatorConfig(latency=0.3, api_key="k")) as sim:
        budget, cap = Budget(rpm=3000, name="page-budget"), SpendCap(max_cost=1.0, name="page-cap")
        base = dashboard(process_cluster)
        before = jobs(base)
        out = enrich(dd.from_pandas(tickets(400), npartitions=8), sim, threads=8, budget=budget, spend_cap=cap)
        run = new_run(base, before)
        future = process_cluster.compute(out)

        def job() -> dict[str, Any]:
            return next(j for j in jobs(base) if j["run"] == run)

        wait_for(lambda: job()["rows"] >= 20, 60, "rows on the page")
        running = load(f"{base}/dask-llm/", virtual_time_budget_ms=1500)
        future.result(timeout=120)
        wait_for(lambda: job()["done"], 10, "the job done")
        finished = load(f"{base}/dask-llm/", virtual_time_budget_ms=1500)

    # While it runs: rows done of (an estimate of) the total, the pace, the
    # calls in flight, the budget with each worker's share, the spend so far.
    shown = _job_table(running.dom, run)
    done = int(shown["rows"].split(" / ")[0].replace(",", ""))
    assert 20 <= done < 400 and re.search(r" / ~?400 \(\d+%\)", shown["rows"]), shown["rows"]
    assert float(shown["rows/s"]) > 0 and int(shown["calls in flight"]) > 0
    assert shown["cost"].startswith("$") and shown["errors"] == "0"
    assert shown["budget"] == "page-budget: 3,000 RPM" and shown["spend cap"].endswith(" of $1.00")
    assert "budget page-budget" in running.dom
    workers = sorted(process_cluster.scheduler_info()["workers"])
    shares = re.findall(r"<tr><td>(tcp://[^<]+)</td><td>([\d,.]+)</td>", running.dom)  # RPM share per worker
    assert shares and {w for w, _ in shares} <= set(workers)
    assert sum(float(r.replace(",", "")) for _, r in shares) == pytest.approx(3000, rel=0.01)
    assert "spend cap page-cap" in running.dom and "spent of $1.00" in running.dom
    assert '<svg class="rate"' in running.dom or "rows/s appear after" in running.dom
    # Once done: every row, and nothing fetched from anywhere but the scheduler.
    shown = _job_table(finished.dom, run)
    assert shown["rows"].startswith("400 / 400 (100%)") and f"{MODEL} done" in finished.dom
    assert all(r.url.startswith(base) for r in finished.page_requests)


def _job_table(dom: str, run: str) -> dict[str, str]:
    """The table of the job ``run`` on the page: header -> cell text."""
    table = re.search(rf'<table class="job" data-topic="dask-llm-progress-{run}\w*">.*?</table>', dom, re.S)
    assert table, dom[:2000]
    cells = re.findall(r"<tr><th>([^<]+)</th><td[^>]*>(.*?)</td></tr>", table.group(0), re.S)
    return {name: re.sub(r"<[^>]+>", "", text).strip() for name, text in cells}


DASK_LLM = str(Path(sys.executable).with_name("dask-llm"))


def test_dask_llm_run_prints_the_page_link_only_when_it_answers(tmp_path: Path) -> None:
    data = tmp_path / "t.csv"
    tickets(80).to_csv(data, index=False)
    with Simulator.subprocess(SimulatorConfig(latency=0.5, api_key="k")) as sim:
        base = [DASK_LLM, "run", str(data), str(tmp_path / "o.csv"), "--prompt", "Classify: {text}",
                "--column", "label", "--model", MODEL, "--base-url", sim.url, "--api-key", "k", "--threads", "4"]  # fmt: skip
        # The threaded scheduler has no dashboard: no link.
        local = subprocess.run(base, capture_output=True, text=True, timeout=120)
        assert local.returncode == 0, local.stderr
        assert "http://" not in local.stderr.replace(sim.url, "")
        # A LocalCluster: the link is printed, and it answers while the job runs.
        proc = subprocess.Popen([*base, "--scheduler", "local", "--workers", "1"], stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            link = None
            deadline = time.monotonic() + 60
            while link is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                m = re.search(r"progress page (http://127\.0\.0\.1:\d+/dask-llm/)", line)
                link = m.group(1) if m else None
            assert link, "no progress page link printed"
            page = json.load(urllib.request.urlopen(link + "api/jobs.json", timeout=10))
            assert [j["total"] for j in page["jobs"]] == [80]  # the row count the command knows
            with urllib.request.urlopen(link, timeout=10) as answer:
                assert answer.status == 200 and b"<title>dask-llm</title>" in answer.read()
            proc.stderr.read()
            assert proc.wait(timeout=120) == 0
        finally:
            proc.kill()
            proc.wait()
