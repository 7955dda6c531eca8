"""Benchmark of resuming under other partitions: what is paid again, and what it costs.

Two measurements:

1. **Acceptance run** (issue 9): 2,000 rows on a ``LocalCluster`` of 2 worker
   processes (1 partition at a time each, 16 calls in flight per partition),
   against a simulator in its own process at 0.5 s latency. The driver is
   SIGKILLed mid-run with 8 partitions, re-run with 5, then with 3. Reported:
   extra paid calls (answers billed more than once), calls of the third run,
   and the rows ``dd.read_parquet(checkpoint)`` returns.
2. **Resume cost**: a fully answered checkpoint of ``--big-rows`` rows
   (1,000,000 by default; the first run sends 1,000 distinct requests, the
   rest are shared answers, so building it takes seconds) resumed under
   another partitioning, against ``dd.read_parquet(checkpoint).compute()`` on
   the same machine in the same run. Both on the threaded scheduler; the
   input is a pandas frame in memory (``from_pandas``), so the figure is the
   checkpoint's own cost. Medians of ``--repeats`` interleaved runs.
3. **Resume cost with typed columns** (``output=``, a JSON schema with an
   enum, numbers, a list and a struct), the same way, against
   ``dd.read_parquet(checkpoint, dtype_backend="pyarrow")`` (pandas' default
   reader cannot read list and struct columns back).

Usage::

    python bench/bench_resume.py [--rows 2000] [--big-rows 1000000] [--repeats 5]

Writes the "Resume" section of ``bench/results/checkpoint.md`` (between the
``<!-- resume -->`` markers) and ``bench/results/resume.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARK_START, MARK_END = "<!-- resume -->", "<!-- /resume -->"

DRIVER = """
import sys
import dask.dataframe as dd, pandas as pd
from distributed import Client, LocalCluster
import dask_llm

url, base_url, rows, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
df = pd.DataFrame({"text": [f"ticket {i}: my VM does not boot" for i in range(rows)]})
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster, \\
        Client(cluster) as client:
    out = dask_llm.enrich(dd.from_pandas(df, npartitions=partitions), "Classify: {text}", "label", "m",
                          endpoint=dask_llm.Endpoint(base_url=base_url, api_key="k"), threads=16,
                          checkpoint=url)
    result = out.compute()
    print("rows", len(result), flush=True)
"""


def acceptance(rows: int, tmp: Path) -> dict[str, Any]:
    from dask_llm.simulator import Simulator, SimulatorConfig

    ckpt = tmp / "acceptance"
    with Simulator.subprocess(SimulatorConfig(latency=0.5)) as sim:

        def driver(partitions: int) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(ckpt), sim.url, str(rows), str(partitions)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            )  # fmt: skip

        first = driver(8)
        deadline = time.monotonic() + 300
        while sim.stats()["successes"] < rows // 2:
            if first.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"first run ended early: {first.communicate()}")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        at_kill = sim.stats()["successes"]
        # The orphaned workers finish what they were calling, then exit.
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3 and time.monotonic() < deadline:
            if sim.stats()["in_flight"]:
                quiet_since = time.monotonic()
            time.sleep(0.1)
        runs = {}
        for partitions in (5, 3):
            before = sim.stats()["successes"]
            start = time.perf_counter()
            proc = driver(partitions)
            _out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(err)
            runs[partitions] = {"calls": sim.stats()["successes"] - before, "seconds": time.perf_counter() - start}
        counts = sim.stats()["success_by_prompt"]
    import dask.dataframe as dd

    back = dd.read_parquet(str(ckpt)).compute()
    return {
        "rows": rows,
        "answered_at_kill": at_kill,
        "extra_paid": sum(c - 1 for c in counts.values()),
        "rows_answered": len(counts),
        "second_run_calls": runs[5]["calls"],
        "third_run_calls": runs[3]["calls"],
        "read_back_rows": len(back),
        "read_back_distinct": int(back["text"].nunique()),
    }


def resume_cost(n: int, repeats: int, tmp: Path) -> dict[str, Any]:
    import dask
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    import dask_llm
    from dask_llm._checkpoint import _ledger, _standing
    from dask_llm.simulator import Simulator, SimulatorConfig

    ckpt = str(tmp / "big")
    df = pd.DataFrame({"id": np.arange(n), "text": [f"ticket {i % 1000}: my VM does not boot" for i in range(n)]})
    with Simulator.subprocess(SimulatorConfig(mode="echo")) as sim, dask.config.set(scheduler="threads"):
        endpoint = dask_llm.Endpoint(base_url=sim.url, api_key="k")

        def dataset() -> dict[str, int]:
            return {p.name: p.stat().st_mtime_ns for p in Path(ckpt).glob("part-*.parquet")}

        def written(before: dict[str, int]) -> tuple[int, int]:
            """Dataset files written by the last run, and files it kept as they were."""
            after = dataset()
            return sum(before.get(k) != v for k, v in after.items()), sum(before.get(k) == v for k, v in after.items())

        def enrich(partitions: int, frame: pd.DataFrame = df) -> float:
            _ledger._indexes.clear()  # each resume starts cold, as a new process would
            _standing.decoded.clear()
            # The user's input, made before the clock starts.
            ddf = dd.from_pandas(frame, npartitions=partitions, sort=frame is df)
            _ = ddf.divisions  # (the input's own setup: where its partitions start)
            start = time.perf_counter()
            out = dask_llm.enrich(ddf, "Classify: {text}", "label", "m", endpoint=endpoint, checkpoint=ckpt).compute()
            elapsed = time.perf_counter() - start
            assert len(out) == n and out["label_error"].isna().all()
            return elapsed

        start = time.perf_counter()
        enrich(20)
        build = time.perf_counter() - start
        calls_before = sim.stats()["requests"]
        reads, inputs, resumes, same, shuffled = [], [], [], [], []
        files_other, files_same = [], []
        layouts = [13, 7, 17, 11, 5]
        for r in range(repeats):
            start = time.perf_counter()
            back = dd.read_parquet(ckpt).compute()
            reads.append(time.perf_counter() - start)
            assert len(back) == n
            ddf = dd.from_pandas(df, npartitions=layouts[r % len(layouts)])
            _ = ddf.divisions
            start = time.perf_counter()
            ddf.compute()  # what the input alone costs (partitions sliced, strings to Arrow)
            inputs.append(time.perf_counter() - start)
            before = dataset()
            resumes.append(enrich(layouts[r % len(layouts)]))  # another partitioning: files it cuts rewritten
            files_other.append(written(before))
            before = dataset()
            same.append(enrich(layouts[r % len(layouts)]))  # the same again: nothing written
            files_same.append(written(before))
            # Another order too: no run of rows lines up with a file's.
            shuffled.append(enrich(layouts[r % len(layouts)], df.sample(frac=1, random_state=r)))
        calls = sim.stats()["requests"] - calls_before
    read, resume, again, mixed = (statistics.median(x) for x in (reads, resumes, same, shuffled))
    return {
        "rows": n,
        "build_seconds": build,
        "read_parquet_seconds": reads,
        "input_compute_seconds": inputs,
        "resume_other_partitions_seconds": resumes,
        "resume_same_partitions_seconds": same,
        "resume_shuffled_seconds": shuffled,
        "calls_during_resumes": calls,
        "layouts": layouts[:repeats],
        "files_written_kept_other": files_other,
        "files_written_kept_same": files_same,
        "ratio_other": resume / read,
        "ratio_same": again / read,
        "ratio_shuffled": mixed / read,
    }


#: The typed output of the structured resume: one column of each kind.
TRIAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "service": {"type": "string", "enum": ["compute", "storage", "database"]},
        "confidence": {"type": "number"},
        "priority": {"type": "integer"},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "location": {"type": "object", "properties": {"region": {"type": "string"}, "zone": {"type": "integer"}}},
    },
}


def structured_cost(n: int, repeats: int, tmp: Path) -> dict[str, Any]:
    import dask
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd

    import dask_llm
    from dask_llm._checkpoint import _ledger, _standing
    from dask_llm.simulator import Simulator, SimulatorConfig

    ckpt = str(tmp / "typed")
    df = pd.DataFrame({"id": np.arange(n), "title": [f"ticket {i % 1000}: my VM does not boot" for i in range(n)]})
    with Simulator.subprocess(SimulatorConfig(mode="label")) as sim, dask.config.set(scheduler="threads"):
        endpoint = dask_llm.Endpoint(base_url=sim.url, api_key="k")

        def enrich(partitions: int) -> float:
            _ledger._indexes.clear()  # each resume starts cold, as a new process would
            _standing.decoded.clear()
            ddf = dd.from_pandas(df, npartitions=partitions)
            _ = ddf.divisions
            start = time.perf_counter()
            out = dask_llm.enrich(
                ddf, "Triage: {title}", "triage", "m", endpoint=endpoint, output=TRIAGE_SCHEMA, checkpoint=ckpt
            ).compute()
            elapsed = time.perf_counter() - start
            assert len(out) == n and out["triage_error"].isna().all() and out["tags"].notna().all()
            return elapsed

        start = time.perf_counter()
        enrich(8)
        build = time.perf_counter() - start
        calls_before = sim.stats()["requests"]
        reads, resumes = [], []
        layouts = [5, 11, 3, 13, 7]
        for r in range(repeats):
            start = time.perf_counter()
            back = dd.read_parquet(ckpt, dtype_backend="pyarrow").compute()
            reads.append(time.perf_counter() - start)
            assert len(back) == n
            resumes.append(enrich(layouts[r % len(layouts)]))
        calls = sim.stats()["requests"] - calls_before
    return {
        "rows": n,
        "build_seconds": build,
        "read_parquet_seconds": reads,
        "resume_seconds": resumes,
        "layouts": layouts[:repeats],
        "calls_during_resumes": calls,
        "ratio": statistics.median(resumes) / statistics.median(reads),
    }


def render(
    cmd: str, acc: dict[str, Any] | None, cost: dict[str, Any] | None, typed: dict[str, Any] | None = None
) -> str:
    lines = [MARK_START, "## Resume under other partitions (rows, not partitions)", "", f"Command: `{cmd}`", ""]
    if acc:
        lines += [
            f"Acceptance run: {acc['rows']:,} rows, LocalCluster of 2 worker processes, 16 calls in flight per "
            "partition, simulator at 0.5 s; driver SIGKILLed at half with 8 partitions, re-run with 5, then 3.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| answers billed when the driver was killed | {acc['answered_at_kill']:,} |",
            f"| extra paid calls over all runs (target <= 40) | {acc['extra_paid']} |",
            f"| calls of the run with 5 partitions | {acc['second_run_calls']:,} |",
            f"| calls of the run with 3 partitions (target 0) | {acc['third_run_calls']} |",
            f"| rows answered | {acc['rows_answered']:,} of {acc['rows']:,} |",
            f"| `dd.read_parquet(checkpoint)` rows / distinct | {acc['read_back_rows']:,} / {acc['read_back_distinct']:,} |",
            "",
        ]
    if cost:
        med = statistics.median
        lines += [
            f"Resume cost: a fully answered checkpoint of {cost['rows']:,} rows (built in {cost['build_seconds']:.1f} s), "
            "threaded scheduler, input in memory; medians of interleaved runs.",
            "",
            "| run | seconds (median) | runs | ratio to read_parquet |",
            "|---|---|---|---|",
            f"| `dd.read_parquet(checkpoint).compute()` | {med(cost['read_parquet_seconds']):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in cost['read_parquet_seconds'])} | 1.00 |",
            f"| the input alone, `ddf.compute()` (inside every resume) | {med(cost['input_compute_seconds']):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in cost['input_compute_seconds'])} | "
            f"{med(cost['input_compute_seconds']) / med(cost['read_parquet_seconds']):.2f} |",
            f"| resume, other partitions | {med(cost['resume_other_partitions_seconds']):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in cost['resume_other_partitions_seconds'])} | {cost['ratio_other']:.2f} |",
            f"| resume, same partitions again | {med(cost['resume_same_partitions_seconds']):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in cost['resume_same_partitions_seconds'])} | {cost['ratio_same']:.2f} |",
            f"| resume, other partitions of the rows shuffled | {med(cost['resume_shuffled_seconds']):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in cost['resume_shuffled_seconds'])} | {cost['ratio_shuffled']:.2f} |",
            "",
            f"Calls made by all the resumes: {cost['calls_during_resumes']} (target 0).",
            "",
            "Dataset files written / kept as they were, per resume (partitions "
            + ", ".join(map(str, cost["layouts"]))
            + "): other partitions "
            + ", ".join(f"{w}/{k}" for w, k in cost["files_written_kept_other"])
            + "; same partitions again "
            + ", ".join(f"{w}/{k}" for w, k in cost["files_written_kept_same"])
            + ". The partitions stand on the earlier files' rows wherever their boundaries cut (nothing"
            " is rewritten); the run that completes takes away only files holding rows no partition stands on.",
            "",
        ]
    if typed:
        med = statistics.median
        runs = ", ".join(f"{x:.2f}" for x in typed["resume_seconds"])
        lines += [
            f"Typed columns (`output=` with an enum, a number, an integer, a boolean, a list and a struct): "
            f"{typed['rows']:,} rows (built in {typed['build_seconds']:.1f} s), resumed under partitions "
            + ", ".join(map(str, typed["layouts"]))
            + "; the typed columns come from the files, no answer is parsed again.",
            "",
            "| run | seconds (median) | runs | ratio |",
            "|---|---|---|---|",
            f'| `dd.read_parquet(checkpoint, dtype_backend="pyarrow").compute()` | '
            f"{med(typed['read_parquet_seconds']):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in typed['read_parquet_seconds'])} | 1.00 |",
            f"| resume, other partitions | {med(typed['resume_seconds']):.2f} | {runs} | {typed['ratio']:.2f} |",
            "",
            f"Calls made by these resumes: {typed['calls_during_resumes']}.",
            "",
        ]
    lines.append(MARK_END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-acceptance", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    cmd = shlex.join(["python", "bench/bench_resume.py", *sys.argv[1:]])
    tmp = Path(tempfile.mkdtemp(prefix="dask-llm-bench-resume-"))
    try:
        acc = None if args.skip_acceptance else acceptance(args.rows, tmp)
        print(json.dumps(acc, indent=2))
        cost = None if args.skip_cost else resume_cost(args.big_rows, args.repeats, tmp)
        print(json.dumps(cost, indent=2))
        typed = None if args.skip_cost else structured_cost(args.big_rows, args.repeats, tmp)
        print(json.dumps(typed, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "command": cmd}
    (RESULTS / "resume.json").write_text(
        json.dumps({**meta, "acceptance": acc, "cost": cost, "typed": typed}, indent=2) + "\n"
    )
    section = render(cmd, acc, cost, typed)
    target = RESULTS / "checkpoint.md"
    text = target.read_text() if target.exists() else "# Checkpoint\n"
    if MARK_START in text:
        head, _, rest = text.partition(MARK_START)
        _, _, tail = rest.partition(MARK_END)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    target.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
