"""Benchmark of checkpointing: its cost in throughput, and what a resume saves.

Two measurements, against a simulator in its own process (so the simulator
does not compete with the client for the GIL):

1. Throughput of the same enrichment without a checkpoint (the baseline) and
   with one on local disk (the journal writes continuously from a background
   thread), and on S3 (a moto server in its own process: S3's protocol, not its
   latency). Runs are interleaved, ``--repeats`` of each; the medians are
   compared as ratios to the baseline measured in the same run.
2. Resume at 50%: a driver process is SIGKILLed once half the rows are
   answered, then a fresh driver resumes from the checkpoint. Reported: the
   calls the resume made, the calls it saved against a re-run without a
   checkpoint, and the rows paid twice.

Usage::

    python bench/bench_checkpoint.py [--rows 1600] [--latency 0.2] [--repeats 3]

Writes ``bench/results/checkpoint.md`` and ``checkpoint.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
API_KEY = "bench-key"


def enrich_once(
    base_url: str,
    rows: int,
    partitions: int,
    threads: int,
    checkpoint: str | None,
    storage_options: dict[str, Any] | None,
) -> float:
    """Seconds to enrich ``rows`` rows (graph built and computed)."""
    import dask
    import dask.dataframe as dd
    import pandas as pd

    import dask_llm

    df = pd.DataFrame({"text": [f"row {i} {uuid.uuid4().hex}" for i in range(rows)]})
    ddf = dd.from_pandas(df, npartitions=partitions)
    config: dict[str, Any] = {"scheduler": "threads", "num_workers": 2}
    endpoint = dask_llm.Endpoint(base_url=base_url, api_key=API_KEY, timeout=30.0)
    with dask.config.set(config):
        start = time.perf_counter()
        out = dask_llm.enrich(ddf, "Say: {text}", "ans", "m", endpoint=endpoint, threads=threads,
                              checkpoint=checkpoint, storage_options=storage_options)  # fmt: skip
        result = out.compute()
        elapsed = time.perf_counter() - start
    assert result["ans_error"].isna().all(), result["ans_error"].dropna().head()
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    import s3fs

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    options = {
        "key": "bench", "secret": "bench",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "eu-west-1"},
    }  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    s3fs.S3FileSystem(**options).mkdir("bench")
    return proc, options


BASELINE = "no checkpoint (baseline)"
VARIANTS: dict[str, dict[str, Any]] = {
    "local disk": {"checkpoint": "local"},
    "S3 (moto)": {"checkpoint": "s3"},
}


def throughput(args: argparse.Namespace, sim_url: str, tmp: Path) -> dict[str, Any]:
    """Each round runs the baseline before and after every variant, and each
    variant is compared with the mean of its two neighbouring baselines: on a
    shared 2-core machine the load drifts, and pairing cancels the drift."""
    moto, s3 = start_moto()
    seconds: dict[str, list[float]] = {BASELINE: [], **{name: [] for name in VARIANTS}}
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    # CPU seconds per run: this (client) process, and the moto server, which
    # shares the 2 cores with the client and the simulator.
    client_cpu: dict[str, list[float]] = {name: [] for name in seconds}
    moto_cpu: list[float] = []

    def run(name: str) -> float:
        v = VARIANTS.get(name, {})
        ckpt, so = None, None
        if v.get("checkpoint") == "local":
            ckpt = str(tmp / f"run-{uuid.uuid4().hex}")
        elif v.get("checkpoint") == "s3":
            ckpt, so = f"s3://bench/{uuid.uuid4().hex}/", s3
        cpu, server = time.process_time(), _cpu_seconds(moto.pid)
        t = enrich_once(sim_url, args.rows, args.partitions, args.threads, ckpt, so)
        client_cpu[name].append(time.process_time() - cpu)
        if v.get("checkpoint") == "s3":
            moto_cpu.append(_cpu_seconds(moto.pid) - server)
        seconds[name].append(t)
        print(f"  {name}: {args.rows / t:.1f} rows/s", flush=True)
        return t

    try:
        enrich_once(sim_url, args.threads * 4, 2, args.threads, None, None)  # warm-up
        for r in range(args.repeats):
            print(f" round {r + 1}", flush=True)
            before = run(BASELINE)
            for name in VARIANTS:
                t = run(name)
                after = run(BASELINE)
                ratios[name].append((before + after) / 2 / t)
                before = after
    finally:
        moto.kill()
        moto.wait(10)
    out: dict[str, Any] = {}
    for name, ts in seconds.items():
        rs = ratios.get(name, [1.0])
        out[name] = {
            "seconds": ts,
            "rows_per_second": args.rows / statistics.median(ts),
            "rows_per_second_range": [args.rows / max(ts), args.rows / min(ts)],
            "paired_throughput_ratios": rs,
            "throughput_ratio": statistics.median(rs),
            "overhead_percent": 100 * (1 / statistics.median(rs) - 1),
            "client_cpu_seconds_median": statistics.median(client_cpu[name]),
        }
    out["S3 (moto)"]["moto_server_cpu_seconds_median"] = statistics.median(moto_cpu)
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


DRIVER = f"""
import sys, dask, dask.dataframe as dd, pandas as pd, dask_llm
url, base_url, rows, partitions, threads = sys.argv[1:6]
df = pd.DataFrame({{"text": [f"row {{i}}" for i in range(int(rows))]}})
with dask.config.set({{"scheduler": "threads", "num_workers": 2}}):
    dask_llm.enrich(dd.from_pandas(df, npartitions=int(partitions)), "Say: {{text}}", "ans", "m",
                    endpoint=dask_llm.Endpoint(base_url=base_url, api_key={API_KEY!r}, timeout=30.0),
                    threads=int(threads), checkpoint=url).compute()
"""


def resume_at_half(args: argparse.Namespace, sim: Any, tmp: Path) -> dict[str, Any]:
    sim.reset()
    url = str(tmp / "resume")
    cmd = [
        sys.executable,
        "-c",
        DRIVER,
        url,
        sim.url,
        str(args.resume_rows),
        str(args.resume_partitions),
        str(args.threads),
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while sim.stats()["successes"] < args.resume_rows // 2:
            if first.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"driver ended or stalled before 50%: {first.stderr.read()!r}")
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate(timeout=30)
    time.sleep(2 * args.latency + 0.5)  # let the dead driver's in-flight calls land
    paid_before = sim.stats()["successes"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=600, stdout=subprocess.DEVNULL)
    resume_seconds = time.perf_counter() - start
    stats = sim.stats()
    counts = stats["success_by_prompt"]
    assert len(counts) == args.resume_rows, "some rows were never answered"
    resume_calls = stats["successes"] - paid_before
    return {
        "rows": args.resume_rows,
        "partitions": args.resume_partitions,
        "paid_before_kill": paid_before,
        "resume_calls": resume_calls,
        "calls_saved": args.resume_rows - resume_calls,
        "calls_saved_percent": 100 * (args.resume_rows - resume_calls) / args.resume_rows,
        "rows_paid_twice": sum(c - 1 for c in counts.values()),
        "in_flight_bound": args.threads * 2,
        "resume_seconds": resume_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--resume-rows", type=int, default=2400)
    # 6 partitions run in 3 waves of 2: the 50% kill lands mid-partition, so
    # the resume depends on the journal, not only on committed partitions.
    parser.add_argument("--resume-partitions", type=int, default=6)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "checkpoint")
    args = parser.parse_args()

    from dask_llm.simulator import Simulator, SimulatorConfig

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, HERE.parent), *sys.argv[1:]])
    config = SimulatorConfig(mode="echo", latency=args.latency, api_key=API_KEY)
    load_start = os.getloadavg()[0]
    with Simulator.subprocess(config) as sim, tempfile.TemporaryDirectory() as tmp:
        print("throughput:", flush=True)
        tput = throughput(args, sim.url, Path(tmp))
        print("resume at 50%:", flush=True)
        resume = resume_at_half(args, sim, Path(tmp))
    import dask
    import pyarrow

    results = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": _cpu_model(),
            "dask": dask.__version__,
            "pyarrow": pyarrow.__version__,
        },
        "load_average": [load_start, os.getloadavg()[0]],
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "throughput": tput,
        "resume_at_50_percent": resume,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    # Keep the section bench_resume.py writes into the same file.
    previous = args.out.with_suffix(".md").read_text() if args.out.with_suffix(".md").exists() else ""
    kept = ""
    if "<!-- resume -->" in previous:
        kept = (
            "\n"
            + "<!-- resume -->"
            + previous.split("<!-- resume -->", 1)[1].split("<!-- /resume -->", 1)[0]
            + "<!-- /resume -->\n"
        )
    args.out.with_suffix(".md").write_text(_markdown(results) + kept)
    print(args.out.with_suffix(".md").read_text())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _markdown(r: dict[str, Any]) -> str:
    p, m, res = r["parameters"], r["machine"], r["resume_at_50_percent"]
    lines = [
        "# Checkpoint benchmark",
        "",
        f"- Command: `{r['command']}` (from the repository root)",
        f"- Date: {r['date']}",
        f"- Machine: {m['cpus']} CPUs ({m['processor']}), {m['platform']}, Python {m['python']}, "
        f"dask {m['dask']}, pyarrow {m['pyarrow']}",
        f"- Load average (1 min) at start and end: {r['load_average'][0]:.2f}, "
        f"{r['load_average'][1]:.2f} (the machine is shared; the paired design below absorbs drift)",
        f"- Throughput workload: {p['rows']} rows in {p['partitions']} partitions, {p['threads']} calls "
        f"per partition, 2 partitions at a time (threaded scheduler); simulator in its own process, "
        f"{p['latency']} s per call. {p['repeats']} rounds; in each, the baseline runs before and after "
        f"every variant, and the variant's ratio is to the mean of those two baselines.",
        "",
        "## Throughput cost (ratio to the baseline measured in the same run)",
        "",
        "| variant | rows/s (median) | min-max | throughput ratio (median of pairs) | per-round ratios "
        "| time overhead | client CPU s/run |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, t in r["throughput"].items():
        low, high = t["rows_per_second_range"]
        pairs = ", ".join(f"{x:.3f}" for x in t["paired_throughput_ratios"]) if name != BASELINE else "-"
        lines.append(f"| {name} | {t['rows_per_second']:.1f} | {low:.1f}-{high:.1f} | "
                     f"{t['throughput_ratio']:.3f} | {pairs} | {t['overhead_percent']:+.1f}% | "
                     f"{t['client_cpu_seconds_median']:.2f} |")  # fmt: skip
    lines += [
        "",
        "S3 is a moto server on 127.0.0.1 in its own process: the S3 protocol and s3fs's code "
        "path, not S3's latency (a real PUT takes tens of ms; the journal's background thread "
        "writes one chunk per PUT, of every row that finished meanwhile). The moto server itself used "
        f"{r['throughput']['S3 (moto)']['moto_server_cpu_seconds_median']:.2f} CPU s per run on the "
        "same 2 cores as the client and the simulator, CPU a real S3 does not take from them.",
        "",
        "## Resume after SIGKILL at 50%",
        "",
        f"Workload: {res['rows']} rows in {res['partitions']} partitions (the kill lands mid-partition), "
        f"the journal writing continuously.",
        "",
        f"- Calls paid before the kill: {res['paid_before_kill']} of {res['rows']}",
        f"- Calls made by the resume: {res['resume_calls']}; a re-run without a checkpoint makes {res['rows']}",
        f"- Calls saved by the resume: {res['calls_saved']} ({res['calls_saved_percent']:.1f}% of a "
        f"re-run; {100 * res['calls_saved'] / res['paid_before_kill']:.1f}% of the calls paid before "
        f"the kill)",
        f"- Rows paid twice: {res['rows_paid_twice']} (bound: calls in flight "
        f"{res['in_flight_bound']} + the rows that finished during the journal write the kill cut short)",
        f"- Resume wall time: {res['resume_seconds']:.1f} s (includes process start)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
