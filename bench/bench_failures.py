"""Benchmark of the failure paths: rows kept under 429s without a budget,
attempts bounded in time, and how fast a broken endpoint stops a job.

1. **Acceptance run** (issue 10): 300 rows, 32 threads, no ``budget=``,
   against a simulator limited to 600 requests per minute (0.5 s latency),
   once with standard ``Retry-After`` headers and once with only LiteLLM's
   ``llm_provider-retry-after``; beside it, the same job with the adaptive
   default switched off (``budget=False``), as the baseline of what was lost.
2. A drip-fed answer (headers at once, then a byte a second) with
   ``timeout=2`` and 2 attempts: the row's wall time.
3. Broken endpoints (HTML 200, empty 200, ``{}`` 200, a silent hang with
   ``timeout=2``, 429 forever): 40 rows, 8 threads; seconds until the job
   stops with one ``EndpointError`` and the requests it made.

Usage::

    python bench/bench_failures.py

Writes ``bench/results/failures.md`` and ``failures.json``.
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def rate_limited_run(style: str, budget: Any, rows: int = 300) -> dict[str, Any]:
    import pandas as pd

    import dask_llm
    from dask_llm.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(mode="echo", latency=0.5, rpm=600, rate_limit_style=style)
    with Simulator.subprocess(config) as sim:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(rows)]})
        start = time.perf_counter()
        out = dask_llm.enrich(df, "Say: {text}", "ans", "m", endpoint=dask_llm.Endpoint(base_url=sim.url, api_key="k"),
                              threads=32, budget=budget)  # fmt: skip
        wall = time.perf_counter() - start
        stats = sim.stats()
    right = int(((out["ans"] == "Say: " + out["text"]) & out["ans_error"].isna()).sum())
    return {
        "style": style,
        "budget": "adaptive default" if budget is None else "off (budget=False)",
        "rows": rows,
        "rows_right": right,
        "rows_failed": int(out["ans_error"].notna().sum()),
        "requests": stats["requests"],
        "rate_limited": stats["rate_limited"],
        "rate_limited_share": stats["rate_limited"] / stats["requests"],
        "wall_seconds": wall,
        # The limit's own pace: 600 a minute after the simulator's 5 s burst (50).
        "limit_seconds": max(0.0, (rows - 50) / 10.0),
    }


def drip_run() -> dict[str, Any]:
    import pandas as pd

    import dask_llm
    from dask_llm.simulator import Simulator, SimulatorConfig

    with Simulator.subprocess(SimulatorConfig(mode="echo", drip_rate=1.0, drip_interval=1.0)) as sim:
        start = time.perf_counter()
        out = dask_llm.enrich(pd.DataFrame({"text": ["a"]}), "{text}", "ans", "m", budget=False,
                              endpoint=dask_llm.Endpoint(base_url=sim.url, api_key="k", timeout=2.0),
                              retry=dask_llm.RetryPolicy(max_attempts=2, backoff_initial=0.0))  # fmt: skip
        wall = time.perf_counter() - start
    return {"timeout": 2.0, "attempts": 2, "wall_seconds": wall, "error": str(out["ans_error"].iloc[0])}


BROKEN = {
    "HTML with status 200": {"html_rate": 1.0},
    "empty body, status 200": {"empty_rate": 1.0},
    "{} with status 200": {"empty_object_rate": 1.0},
    "silent hang (timeout 2 s)": {"hang_rate": 1.0, "hang_seconds": 60.0},
    "429 forever (retry-after 1)": {"always_429": True, "rate_limit_style": "retry-after"},
}


def broken_run(name: str, fault: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    import dask_llm
    from dask_llm.simulator import Simulator, SimulatorConfig

    with Simulator.subprocess(SimulatorConfig(mode="echo", **fault)) as sim:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
        endpoint = dask_llm.Endpoint(base_url=sim.url, api_key="k", timeout=2.0)
        start = time.perf_counter()
        try:
            dask_llm.enrich(df, "{text}", "ans", "m", endpoint=endpoint, threads=8)
            outcome = "finished (no error)"
        except dask_llm.EndpointError as exc:
            outcome = str(exc)
        wall = time.perf_counter() - start
        requests = sim.stats()["requests"]
    return {"endpoint": name, "seconds": wall, "requests": requests, "error": outcome}


def main() -> None:
    cmd = shlex.join(["python", "bench/bench_failures.py", *sys.argv[1:]])
    runs = [rate_limited_run(style, budget) for style in ("retry-after", "litellm") for budget in (None, False)]
    for r in runs:
        print(r)
    drip = drip_run()
    print(drip)
    broken = [broken_run(name, fault) for name, fault in BROKEN.items()]
    for b in broken:
        print(b)
    meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "command": cmd}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failures.json").write_text(json.dumps({**meta, "rate_limited": runs, "drip": drip, "broken": broken},
                                                      indent=2) + "\n")  # fmt: skip
    lines = [
        "# Failure paths",
        "",
        f"Command: `{cmd}` ({meta['date']}, Python {meta['python']}, 2 shared cores)",
        "",
        "## 429s without a budget (acceptance run)",
        "",
        "300 rows, 32 threads, no `budget=`, simulator limited to 600 requests/minute (5 s burst), 0.5 s latency. "
        "`limit` is the limit's own pace for the job ((300 - 50) / 10 per second).",
        "",
        "| 429 headers | budget | rows right | rows failed | requests | 429s | share | wall s | limit s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['style']} | {r['budget']} | {r['rows_right']} of {r['rows']} | {r['rows_failed']} | "
            f"{r['requests']} | {r['rate_limited']} | {r['rate_limited_share']:.1%} | {r['wall_seconds']:.1f} | "
            f"{r['limit_seconds']:.0f} |"
        )
    lines += [
        "",
        "## An answer drip-fed one byte a second",
        "",
        f"`timeout={drip['timeout']:g}`, {drip['attempts']} attempts: the row took {drip['wall_seconds']:.1f} s "
        f"and ended with: `{drip['error']}`.",
        "",
        "## Endpoints that connect but answer wrongly",
        "",
        "40 rows, 8 threads, default retry policy; the job stops with one `EndpointError`.",
        "",
        "| endpoint | seconds to the error | requests made | error |",
        "|---|---:|---:|---|",
    ]
    for b in broken:
        lines.append(f"| {b['endpoint']} | {b['seconds']:.1f} | {b['requests']} | {b['error'][:160]}... |")
    (RESULTS / "failures.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
