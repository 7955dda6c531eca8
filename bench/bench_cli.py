"""The command line's first hour: automatic partitions against a chosen count.

A 2,000-row CSV (one 64 MB block, so one partition as read), the simulator
at 0.5 s per call and 6,000 RPM (the README's walkthrough), and
``dask-llm run`` with its defaults (4 partitions at a time, 16 calls in
flight each) twice: without ``--partitions`` (chosen from the rows and the
parallelism) and with ``--partitions 8``; then, for the record, what the
partitioning of the CSV as read would give (``--partitions 1``). The runs
alternate, ``--repeat`` times each; the median wall time of the whole
command (start-up included) is reported, and the ratio to ``--partitions 8``.

Usage::

    python bench/bench_cli.py [--repeat 3]

Writes ``bench/results/cli.md`` and ``cli.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from dask_llm.simulator import Simulator, SimulatorConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS = 2000
LATENCY = 0.5
VARIANTS = {"automatic": [], "--partitions 8": ["--partitions", "8"], "--partitions 1": ["--partitions", "1"]}


def run_once(url: str, tmp: Path, extra: list[str]) -> tuple[float, str, int]:
    out = tmp / f"out-{time.monotonic_ns()}.csv"
    cmd = [sys.executable, "-m", "dask_llm.cli", "run", str(tmp / "tickets.csv"), str(out),
           "--prompt", "Classify: {text}", "--column", "label", "--model", "gpt-4o-mini", "--base-url", url, *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    partitions = re.search(r"rows in (\d+) partitions", proc.stderr)
    labelled = int(pd.read_csv(out)["label"].notna().sum())
    return wall, partitions.group(1) if partitions else "?", labelled


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = SimulatorConfig(latency=LATENCY, rpm=6000)
    results: dict[str, dict[str, object]] = {name: {"walls": []} for name in VARIANTS}
    with tempfile.TemporaryDirectory() as d, Simulator.subprocess(config) as sim:
        tmp = Path(d)
        pd.DataFrame({"id": range(ROWS), "text": [f"My VM {i} does not boot" for i in range(ROWS)]}).to_csv(
            tmp / "tickets.csv", index=False
        )
        for _ in range(args.repeat):
            for name, extra in VARIANTS.items():
                if name == "--partitions 1" and len(results[name]["walls"]) >= 1:  # type: ignore[arg-type]
                    continue  # slow and only for the record: once
                wall, parts, labelled = run_once(sim.url, tmp, extra)
                results[name]["walls"].append(wall)  # type: ignore[attr-defined]
                results[name].update(partitions=parts, labelled=labelled)
                print(name, f"{wall:.1f} s", parts, "partitions", labelled, "labelled", flush=True)
    base = statistics.median(results["--partitions 8"]["walls"])  # type: ignore[arg-type]
    for r in results.values():
        r["median_s"] = statistics.median(r["walls"])  # type: ignore[arg-type]
        r["ratio"] = r["median_s"] / base  # type: ignore[operator]
    cmd = f"python bench/bench_cli.py --repeat {args.repeat}"
    meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "command": cmd}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    lines = [
        "# dask-llm run: automatic partitions",
        "",
        f"Command: `{cmd}` ({meta['date']}, Python {meta['python']}, 2 shared cores).",
        "",
        f"{ROWS:,}-row CSV, simulator at {LATENCY} s per call and 6,000 RPM, `dask-llm run` defaults "
        "(threaded scheduler, 4 partitions at a time, 16 calls in flight each). Median wall time of the whole "
        "command, start-up included.",
        "",
        "| partitions | chosen | wall time (median) | runs | ratio to `--partitions 8` | rows labelled |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, r in results.items():
        runs = ", ".join(f"{w:.1f}" for w in r["walls"])  # type: ignore[attr-defined]
        lines.append(
            f"| {name} | {r['partitions']} | {r['median_s']:.1f} s | {runs} | {r['ratio']:.2f} | {r['labelled']:,} |"
        )
    lines += [
        "",
        f"Target: automatic within 1.3x of `--partitions 8`: {results['automatic']['ratio']:.2f}x. At 6,000 RPM, "
        f"{ROWS:,} calls take {ROWS / 100:.0f} s at least: both reach the rate limit (the adaptive budget holds "
        "them there), while one partition of 16 calls in flight cannot.",
        "",
    ]
    (RESULTS / "cli.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
