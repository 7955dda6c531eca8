"""Spark: the same enrichment, budget, spend cap and checkpoint on a pyspark DataFrame.

Real Spark (pip's pyspark with the machine's Java 17): ``local[2]``, whose
Python workers are separate processes (so the budget is really shared
through the coordinator), and one test in ``local-cluster[2,1,1024]``
(separate executor JVMs). Skipped without pyspark or Java, except in CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import dask_llm
from dask_llm.simulator import Simulator

from .conftest import API_KEY, endpoint_for
from .test_budget import allowed, busiest_window

pytestmark = pytest.mark.slow


def _require_spark() -> None:
    if os.environ.get("CI"):
        return  # ci/test.sh installs pyspark, and the machine has Java 17
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (java -version)")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    _require_spark()
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers must run this interpreter
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    yield session
    session.stop()


def frame(spark: Any, n: int, partitions: int = 4) -> Any:
    return spark.createDataFrame([(i, f"row {i}") for i in range(n)], "id long, text string").repartition(partitions)


def test_enrich_is_lazy_and_typed(spark: Any, sim: Simulator) -> None:
    out = dask_llm.enrich(frame(spark, 40), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=4)
    assert sim.stats()["requests"] == 0  # nothing until an action
    assert dict(out.dtypes) == {
        "id": "bigint",
        "text": "string",
        "ans": "string",
        "ans_error": "string",
        "ans_prompt_tokens": "bigint",
        "ans_completion_tokens": "bigint",
        "ans_attempts": "bigint",
        "ans_latency_s": "double",
        "ans_rate_limited": "bigint",
    }
    rows = out.collect()
    assert len(rows) == 40 and all(r.ans == f"Say: {r.text}" and r.ans_error is None for r in rows)
    assert sim.stats()["successes"] == 40


def test_structured_output_becomes_typed_spark_columns(spark: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="label")
    schema = {
        "type": "object",
        "properties": {
            "service": {"type": "string", "enum": ["compute", "storage"]},
            "severity": {"type": "integer"},
            "confidence": {"type": "number"},
            "urgent": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["service", "severity", "confidence", "urgent", "tags"],
    }
    out = dask_llm.enrich(frame(spark, 12, 2), "Triage: {text}", "t", "m", endpoint=endpoint_for(sim), output=schema)
    types = dict(out.dtypes)
    assert (types["service"], types["severity"], types["confidence"], types["urgent"], types["tags"]) == (
        "string",
        "bigint",
        "double",
        "boolean",
        "array<string>",
    )
    rows = out.collect()
    assert all(r.t_error is None and r.service in ("compute", "storage") and isinstance(r.tags, list) for r in rows)


def test_one_budget_and_one_spend_cap_across_executors(spark: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.05)
    budget = dask_llm.Budget(rpm=1200, max_concurrency=6)
    out = dask_llm.enrich(frame(spark, 120), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=8,
                          budget=budget)  # fmt: skip
    rows = out.collect()
    assert all(r.ans_error is None for r in rows)
    stats = sim.stats()
    assert stats["max_in_flight"] <= 6  # 2 Python workers x 8 threads would be 16 without the coordinator
    assert busiest_window(stats["success_times"], 2.0) <= allowed(1200, 2.0, budget.burst)

    cap_sim = start_sim(mode="echo")
    cap = dask_llm.SpendCap(max_tokens=300)
    rows = dask_llm.enrich(frame(spark, 120), "Say: {text}", "ans", "m", endpoint=endpoint_for(cap_sim),
                           threads=4, spend_cap=cap).collect()  # fmt: skip
    billed = cap_sim.stats()["prompt_tokens"] + cap_sim.stats()["completion_tokens"]
    assert billed <= 300 + 8 * 12  # the cap, plus at most the calls in flight
    assert sum(r.ans_error is not None and r.ans_error.startswith("budget exhausted") for r in rows) > 0


def test_checkpoint_resumes_under_other_partitions(spark: Any, sim: Simulator, tmp_path: Path) -> None:
    ckpt = str(tmp_path / "ckpt")
    first = dask_llm.enrich(frame(spark, 100, 4), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim),
                            checkpoint=ckpt)  # fmt: skip
    assert first.count() == 100
    paid = sim.stats()["successes"]
    assert paid == 100
    again = dask_llm.enrich(frame(spark, 100, 3), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim),
                            checkpoint=ckpt)  # fmt: skip
    rows = again.collect()
    assert len(rows) == 100 and all(r.ans == f"Say: {r.text}" for r in rows)
    assert sim.stats()["successes"] == paid, "nothing is paid twice"
    back = pq.read_table(ckpt).to_pandas()
    assert len(back) == 100 and back["id"].is_unique


def test_an_edited_row_replaces_its_earlier_answer_in_the_checkpoint(
    spark: Any, sim: Simulator, tmp_path: Path
) -> None:
    """An edited row is called again and its earlier answer leaves the
    checkpoint, as on Dask; rows that left the input stay there (no Spark run
    counts as complete, README "Spark"), but never in the result."""
    ckpt = str(tmp_path / "ckpt")
    dask_llm.enrich(frame(spark, 100, 4), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim),
                    checkpoint=ckpt).count()  # fmt: skip
    paid = sim.stats()["successes"]
    rows = [(i, "edited" if i == 5 else f"row {i}") for i in range(90)]
    edited = spark.createDataFrame(rows, "id long, text string").repartition(3)
    out = dask_llm.enrich(edited, "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), checkpoint=ckpt).collect()
    assert sim.stats()["successes"] == paid + 1, "only the edited row is called"
    assert sorted(r.id for r in out) == list(range(90))
    assert {r.id: r.ans for r in out}[5] == "Say: edited"
    back = pq.read_table(ckpt).to_pandas()
    assert back["id"].is_unique and set(range(90)) <= set(back["id"])
    assert back.set_index("id").loc[5, "ans"] == "Say: edited"


def test_two_actions_over_the_same_rows_pay_once(
    spark: Any, start_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    # The stand-in for a speculative copy: two jobs run the same partition at
    # once; the coordinator's partition lease makes the second wait and restore.
    sim = start_sim(mode="echo", latency=0.2)
    out = dask_llm.enrich(frame(spark, 40, 1), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=8,
                          checkpoint=str(tmp_path / "ckpt"))  # fmt: skip
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(out.count())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert counts == [40, 40]
    assert sim.stats()["successes"] == 40


def test_an_unreachable_coordinator_is_one_clear_error(spark: Any, sim: Simulator) -> None:
    from .conftest import free_port

    out = dask_llm.enrich(frame(spark, 4, 1), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim),
                          coordinator=f"tcp://127.0.0.1:{free_port()}")  # fmt: skip
    with pytest.raises(Exception, match="cannot reach the dask-llm coordinator"):
        out.collect()
    assert sim.stats()["requests"] == 0  # no unbudgeted call


def test_progress_of_every_executor_reaches_the_driver(spark: Any, sim: Simulator) -> None:
    from dask_llm._engines._spark import driver_coordinator
    from dask_llm._run import ProgressChannel
    from dask_llm._run._progress import Tally, collect

    channel = ProgressChannel.new(interval=0.1)
    tally = Tally(total=60)
    from distributed import Client

    with Client(driver_coordinator(spark), set_as_default=False) as client, collect(channel, tally, client):
        out = dask_llm.enrich(frame(spark, 60), "Say: {text}", "ans", "m", endpoint=endpoint_for(sim),
                              progress=channel)  # fmt: skip
        assert out.count() == 60
        deadline = time.monotonic() + 10
        while tally.snapshot().done < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
    snap = tally.snapshot()
    assert (snap.rows, snap.calls, snap.errors) == (60, 60, 0)


DRIVER = """
import os, sys
os.environ["PYSPARK_PYTHON"] = sys.executable
from pyspark.sql import SparkSession
import dask_llm
master, base_url, key, ckpt, rows = sys.argv[1:6]
spark = (SparkSession.builder.master(master).config("spark.ui.enabled", "false")
         .config("spark.driver.host", "127.0.0.1").getOrCreate())
sdf = spark.createDataFrame([(i, f"row {i}") for i in range(int(rows))], "id long, text string").repartition(4)
out = dask_llm.enrich(sdf, "Say: {text}", "ans", "m", endpoint=dask_llm.Endpoint(base_url=base_url, api_key=key),
                      threads=8, checkpoint=ckpt)
print("rows", out.count(), flush=True)
spark.stop()
"""


def _driver(master: str, sim: Simulator, ckpt: Path, rows: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, master, sim.url, API_KEY, str(ckpt), str(rows)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def test_a_killed_driver_resumes_without_paying_twice(start_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    _require_spark()
    sim = start_sim(mode="echo", latency=0.2)
    rows, ckpt = 320, tmp_path / "ckpt"
    first = _driver("local[2]", sim, ckpt, rows)
    try:
        deadline = time.monotonic() + 120
        while sim.stats()["successes"] < rows // 3:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the driver, and the JVM and workers of its session
    finally:
        first.kill()
        first.communicate(timeout=30)
    resumed = _driver("local[2]", sim, ckpt, rows)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "rows 320" in out, err
    counts = sim.stats()["success_by_prompt"]
    assert len(counts) == rows
    assert sum(c - 1 for c in counts.values()) <= 2 * 8 + 2  # calls in flight (2 tasks x 8) + one write


def test_local_cluster_with_separate_executor_jvms(start_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    _require_spark()
    sim = start_sim(mode="echo", latency=0.05)
    proc = _driver("local-cluster[2,1,1024]", sim, tmp_path / "ckpt", 80)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "rows 80" in out, err[-3000:]
    assert sim.stats()["successes"] == 80
    assert len(pq.read_table(tmp_path / "ckpt")) == 80


@pytest.mark.parametrize("name", ["in.csv", "in.json"])
def test_the_command_line_runs_on_spark(sim: Simulator, tmp_path: Path, name: str) -> None:
    _require_spark()
    import pandas as pd

    from .test_cli import clean_env, dask_llm_command

    frame = pd.DataFrame({"id": range(50), "text": [f"row {i}" for i in range(50)]})
    if name == "in.csv":
        frame.to_csv(tmp_path / name, index=False)
    else:  # a JSON array, as a *.json file often is
        frame.to_json(tmp_path / name, orient="records", indent=2)
    proc = subprocess.run(
        [*dask_llm_command(), "run", str(tmp_path / name), str(tmp_path / "out.csv"), "--prompt", "Say: {text}",
         "--column", "ans", "--model", "m", "--base-url", sim.url, "--api-key", API_KEY, "--engine", "spark",
         "--master", "local[2]", "--checkpoint", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = pd.read_csv(tmp_path / "out.csv").sort_values("id")
    assert len(out) == 50 and (out["ans"] == "Say: " + out["text"]).all()
    assert "rows: 50  ok: 50  failed: 0" in proc.stdout
    assert sim.stats()["successes"] == 50
