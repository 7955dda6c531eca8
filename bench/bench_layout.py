"""Before and after the package layout: start-up times and throughput, in one run.

The code before the move is checked out from git (``--before``, a commit) into
a temporary worktree and imported from there, ahead of the installed
package; the code after is the working tree. Measured, interleaved A B A B:

1. ``dask-llm --help`` and ``import dask_llm.simulator``, as whole processes
   (``--repeats`` each; medians and the ratio after/before);
2. throughput of the same enrichment (``--rows`` rows, 64 calls in flight,
   a simulator in its own process at 0.2 s), as a ratio to the physical
   limit, for each version, after a warm-up enrichment in the same process
   (the move made imports lazy: they would otherwise land in the timing).

Usage::

    python bench/bench_layout.py --before e39a63a [--repeats 7] [--rows 1000]

Writes ``bench/results/layout.md`` and ``layout.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

#: Run a snippet against the code at ``path`` instead of the installed package.
PRELUDE = """
import sys
path = {path!r}
if path:
    for finder in list(sys.meta_path):
        if "editable" in repr(finder).lower():
            sys.meta_path.remove(finder)
    sys.path.insert(0, path)
"""

HELP = """
import runpy
sys.argv = ["dask-llm", "--help"]
try:
    runpy.run_module("dask_llm.cli" if __import__("importlib").util.find_spec("dask_llm.cli") else "dask_llm._cli",
                     run_name="__main__")
except SystemExit:
    pass
"""

ENRICH = """
import time, dask, dask.dataframe as dd, pandas as pd, dask_llm
base_url, rows = sys.argv[1], int(sys.argv[2])
endpoint = dask_llm.Endpoint(base_url=base_url, api_key="k")
# Warm up first: imports (lazy after the move, eager before) and connections
# are not what is compared.
dask_llm.enrich(pd.DataFrame({"text": ["warm-up"] * 8}), "{text}", "w", "m", endpoint=endpoint)
df = pd.DataFrame({"text": [f"ticket {i}: my VM does not boot" for i in range(rows)]})
with dask.config.set(scheduler="threads", num_workers=4):
    start = time.perf_counter()
    out = dask_llm.enrich(dd.from_pandas(df, npartitions=4), "Classify: {text}", "label", "m", threads=16,
                          endpoint=endpoint).compute()
    print(time.perf_counter() - start)
assert out["label_error"].isna().all()
"""


def timed(code: str, path: str, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE.format(path=path) + code, *args],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return time.perf_counter() - start, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="commit of the layout before the move")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    cmd = shlex.join(["python", "bench/bench_layout.py", *sys.argv[1:]])
    from dask_llm.simulator import Simulator, SimulatorConfig

    with tempfile.TemporaryDirectory() as tmp:
        old = str(Path(tmp) / "before")
        subprocess.run(["git", "worktree", "add", "-q", "--detach", old, args.before], cwd=ROOT, check=True)
        try:
            versions = {"before": old, "after": ""}
            startup: dict[str, dict[str, list[float]]] = {
                "dask-llm --help": {v: [] for v in versions},
                "import dask_llm.simulator": {v: [] for v in versions},
            }
            snippets = {"dask-llm --help": HELP, "import dask_llm.simulator": "import dask_llm.simulator\n"}
            for name, code in snippets.items():
                for path in versions.values():
                    timed(code, path)  # warm-up: the file cache
                for _ in range(args.repeats):
                    for v, path in versions.items():
                        startup[name][v].append(timed(code, path)[0])
            runs: dict[str, list[float]] = {v: [] for v in versions}
            with Simulator.subprocess(SimulatorConfig(mode="label", latency=0.2)) as sim:
                for _ in range(3):
                    for v, path in versions.items():
                        runs[v].append(float(timed(ENRICH, path, sim.url, str(args.rows))[1].splitlines()[-1]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", old], cwd=ROOT, check=False)
    limit = args.rows / 64 * 0.2  # 4 partitions at once x 16 calls in flight, 0.2 s each
    med = statistics.median
    lines = [
        "# Layout: before and after",
        "",
        f"Command: `{cmd}` ({datetime.date.today()}, Python {platform.python_version()}, 2 shared cores). "
        f"`before` is commit {args.before}, imported from a git worktree; `after` is this tree.",
        "",
        "## Start-up, whole processes (seconds; median of interleaved runs)",
        "",
        "| command | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]
    for name, by in startup.items():
        b, a = med(by["before"]), med(by["after"])
        lines.append(f"| `{name}` | {b:.3f} | {a:.3f} | {a / b:.3f} |")
    lines += [
        "",
        f"## Throughput: {args.rows:,} rows, 64 calls in flight, 0.2 s per call (limit {limit:.2f} s)",
        "",
        "| version | seconds (median) | runs | ratio to the limit |",
        "|---|---:|---|---:|",
    ]
    for v in versions:
        lines.append(
            f"| {v} | {med(runs[v]):.2f} | {', '.join(f'{x:.2f}' for x in runs[v])} | {med(runs[v]) / limit:.3f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "layout.json").write_text(
        json.dumps({"command": cmd, "startup": startup, "throughput": runs, "limit": limit}, indent=2) + "\n"
    )
    (RESULTS / "layout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
