"""The run report, from a real checkpoint written by ``enrich()`` against the simulator.

The simulator's own counters are the proof of what happened (calls that
succeeded, tokens it charged, 429s it sent); the enrich output is the proof
of what each row got. The HTML page is loaded in headless Chromium
(``tests/_chromium.py``): its figures and chart titles must be in the DOM,
and it must make no request at all.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pytest

import dask_llm
from dask_llm import ConfigError, Endpoint, Price, RetryPolicy, RunReport, report
from dask_llm._report._charts import CHARTS
from dask_llm.simulator import Simulator, SimulatorConfig

from ._chromium import load

#: The console script of the environment running the tests.
DASK_LLM = str(Path(sys.executable).with_name("dask-llm"))
PROMPT = "Classify: {text}"
MODEL = "gpt-4o-mini"
ROWS = 240
#: 30 tokens or so more than a normal row: over ``max_context_tokens``, a 400.
LONG = " padding" * 60
#: Fast retries: the simulator's spurious 429s hint 1 s, capped here.
RETRY = RetryPolicy(max_retry_after=0.2, backoff_initial=0.05)


def tickets(n: int) -> pd.DataFrame:
    texts = [f"ticket {i}: my VM does not boot" + (LONG if i % 50 == 7 else "") for i in range(n)]
    for i in range(0, n, 30):  # an exact duplicate: answered once, shared without a call
        texts[i + 1] = texts[i]
    return pd.DataFrame({"id": range(n), "text": texts})


def run_enrich(df: Any, sim: Simulator, checkpoint: str, model: str = MODEL, **kw: Any) -> Any:
    endpoint = Endpoint(base_url=sim.url, api_key="k", timeout=10.0)
    kw.setdefault("threads", 8)
    return dask_llm.enrich(df, PROMPT, "label", model, endpoint=endpoint, checkpoint=checkpoint, budget=False,
                           retry=RETRY, **kw)  # fmt: skip


@dataclass
class Run:
    path: Path
    out: pd.DataFrame
    stats: dict[str, Any]
    seconds: float


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One finished run of 240 rows in 3 partitions, with spread latencies, 429s, 400s and duplicates."""
    path = tmp_path_factory.mktemp("report") / "ckpt"
    config = SimulatorConfig(mode="label", latency=0.04, latency_sd=0.06, rate_limit_rate=0.05,
                             max_context_tokens=60, seed=7, api_key="k")  # fmt: skip
    with Simulator(config) as sim, dask.config.set(scheduler="threads", num_workers=2):
        started = time.monotonic()
        out = run_enrich(dd.from_pandas(tickets(ROWS), npartitions=3), sim, str(path)).compute()
        seconds = time.monotonic() - started
        yield Run(path, out, sim.stats(), seconds)


@pytest.fixture(scope="module")
def finished(run: Run) -> RunReport:
    return report(run.path)


def test_numbers_match_the_simulator_and_the_output(run: Run, finished: RunReport) -> None:
    r, out, stats = finished, run.out, run.stats
    attempts = out["label_attempts"]
    failed = out["label_error"].notna()
    assert stats["rate_limited"] > 0 and failed.any() and (attempts == 0).any()  # the run has it all

    assert r.rows == len(out) == ROWS
    assert r.rows_ok == stats["successes"] == int((~failed & (attempts > 0)).sum())
    assert r.rows_failed == int(failed.sum()) == stats["by_status"]["400"] == len(range(7, ROWS, 50))
    assert r.rows_shared == int((~failed & (attempts == 0)).sum()) == len(range(0, ROWS, 30))
    assert r.rows_ok + r.rows_failed + r.rows_shared == r.rows and r.rows_not_called == 0
    assert r.calls == stats["requests"] == int(attempts.sum())
    assert r.retries == r.calls - int((attempts > 0).sum()) > 0
    assert r.rate_limited == stats["rate_limited"] == int(out["label_rate_limited"].sum())
    assert r.prompt_tokens == stats["prompt_tokens"] == int(out["label_prompt_tokens"].sum())
    assert r.completion_tokens == stats["completion_tokens"] == int(out["label_completion_tokens"].sum())
    assert r.price == Price(0.15, 0.60)
    assert r.cost == pytest.approx(Price(0.15, 0.60).cost(stats["prompt_tokens"], stats["completion_tokens"]))
    assert r.model == MODEL and r.prompt == PROMPT and r.column == "label"
    assert (r.dataset_files, r.dataset_rows, r.journal_chunks, r.in_progress) == (3, ROWS, 0, False)

    # Time: every row finished within the run, in buckets that add up.
    assert r.wall_span is not None and 0 < r.wall_span <= run.seconds
    assert r.rows_per_minute == pytest.approx(ROWS / r.wall_span * 60)
    assert sum(b.rows for b in r.throughput) == ROWS
    assert sum(b.errors for b in r.throughput) == r.rows_failed
    assert sum(b.rate_limited for b in r.throughput) == r.rate_limited
    assert len(r.throughput) <= 60 and r.throughput[0].rows > 0

    # Latency: percentiles and histogram over the rows that made a call.
    called = out.loc[attempts > 0, "label_latency_s"].to_numpy(dtype=float)
    assert r.latency_p50 == pytest.approx(np.percentile(called, 50))
    assert r.latency_p99 == pytest.approx(np.percentile(called, 99))
    p50, p95, p99 = r.latency_p50, r.latency_p95, r.latency_p99
    assert p50 is not None and p95 is not None and p99 is not None and p50 < p95 <= p99
    assert sum(r.latency.counts) + r.latency.overflow == len(called)

    # Retries, outcomes, errors.
    assert dict(r.attempts) == {int(k): int(v) for k, v in attempts.value_counts().items()}
    ok, error, shared = (r.outcome(name) for name in ("ok", "error", "shared"))
    assert (ok.rows, error.rows, shared.rows) == (r.rows_ok, r.rows_failed, r.rows_shared)
    assert ok.prompt_tokens == r.prompt_tokens and error.prompt_tokens == shared.prompt_tokens == 0
    assert shared.calls == 0 and shared.cost == 0.0
    assert len(r.errors) == 1  # the 400s differ only in their token counts
    assert r.errors[0].rows == r.rows_failed and "maximum context length" in r.errors[0].message

    # The slowest rows, from the dataset files: index, input text, outcome.
    assert r.slowest_from_dataset and r.text_column == "text" and len(r.slowest) == 10
    expected = out.sort_values("label_latency_s", ascending=False, kind="stable").head(10)
    assert [s.latency for s in r.slowest] == pytest.approx(expected["label_latency_s"].tolist())
    for row in r.slowest:
        assert row.text == out.loc[row.index, "text"]
        assert row.attempts == out.loc[row.index, "label_attempts"]


def test_same_report_after_a_resume_under_another_partitioning(run: Run, finished: RunReport, tmp_path: Path) -> None:
    """Rows are counted by identity in the ledger: a resume that repartitions
    (and calls nothing) leaves every number as it was."""
    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    with Simulator(SimulatorConfig(mode="label", api_key="k")) as sim, dask.config.set(scheduler="sync"):
        run_enrich(dd.from_pandas(tickets(ROWS), npartitions=5), sim, str(copy)).compute()
        assert sim.stats()["requests"] == 0
    again = report(copy)
    # The resume stands on the earlier files: it writes none of its own.
    assert again.dataset_files == finished.dataset_files and again.dataset_rows == ROWS
    keep = ("url",)
    assert {k: v for k, v in again.to_dict().items() if k not in keep} == {
        k: v for k, v in finished.to_dict().items() if k not in keep
    }


def _figures(dom: str) -> dict[str, str]:
    return dict(re.findall(r'data-key="(\w+)"><div class="value">([^<]*)</div>', dom))


def test_html_page_renders_offline_in_chromium(run: Run, finished: RunReport, tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    r = report(run.path, html=target)
    assert r.html == str(target)
    text = target.read_text(encoding="utf-8")
    # Self-contained: no script, no link, nothing that names a resource.
    for needle in ("<script", "src=", "href=", "url(", "@import", "http://", "https://", "<img", "<link"):
        assert needle not in text, needle

    page = load(target.as_uri())
    assert page.page_requests == []  # no request of any kind (file://, so no favicon either)
    figures = _figures(page.dom)
    assert figures["rows"] == f"{ROWS:,}"
    assert figures["calls"] == f"{run.stats['requests']:,}"
    assert figures["rate_limited"] == f"{run.stats['rate_limited']:,}"
    assert figures["prompt_tokens"] == f"{run.stats['prompt_tokens']:,}"
    assert figures["rows_shared"] == f"{finished.rows_shared:,}"
    assert figures["cost"] == f"${finished.cost:,.4f}"
    for spec in CHARTS:
        assert f'id="chart-{spec.key}"' in page.dom
        assert spec.title in page.dom
    assert page.dom.count('class="bar answered"') == sum(1 for b in finished.throughput)
    assert page.dom.count('class="bar r429"') == sum(1 for b in finished.throughput if b.rate_limited)
    assert all(f'data-name="{p}"' in page.dom for p in ("p50", "p95", "p99"))
    assert "maximum context length" in page.dom and "input: text" in page.dom
    assert "429s are shown at the time the row finished" in page.dom  # the caption says how 429s are placed
    slowest = finished.slowest[0]
    assert slowest.text is not None and slowest.text in page.dom and f"{slowest.latency:.3g} s" in page.dom


def test_chromium_helper_sees_a_page_request(tmp_path: Path) -> None:
    """The check above is not vacuous: a page that fetches something shows it."""
    path = tmp_path / "fetches.html"
    path.write_text('<!DOCTYPE html><p id="here">here</p><img src="http://report-test.invalid/pixel.png">')
    page = load(path.as_uri())
    assert '<p id="here">here</p>' in page.dom
    assert [r.url for r in page.page_requests] == ["http://report-test.invalid/pixel.png"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_png_charts(run: Run, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r = report(run.path, png=tmp_path / "charts")
    assert [Path(p).name for p in r.png] == [f"{spec.key}.png" for spec in CHARTS]
    for name in r.png:
        data = Path(name).read_bytes()
        width, height = _png_size(data)
        assert 600 <= width <= 1000 and 250 <= height <= 500, (name, width, height)
        assert len(data) > 5_000


def test_png_without_matplotlib_names_the_extra(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match=re.escape("pip install 'dask-llm[plot]'")):
        report(run.path, png=tmp_path / "charts")
    assert not (tmp_path / "charts").exists()  # refused before anything was written


def test_a_run_still_going_on_fsspec_memory() -> None:
    """Rows in journals only (no partition committed yet) are reported, from a
    ``memory://`` URL; a model without a price has no cost, and says so."""
    url = f"memory://report-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    config = SimulatorConfig(mode="label", latency=0.12, seed=3, api_key="k")
    df = tickets(32).iloc[2:]  # no duplicate, no long row: 30 rows, all answered
    try:
        with Simulator(config) as sim:  # pandas in, pandas out: enrich runs in the thread
            done = threading.Event()

            def go() -> None:
                run_enrich(df, sim, url, model="my-model", threads=2)
                done.set()

            worker = threading.Thread(target=go)
            worker.start()
            try:
                deadline = time.monotonic() + 20
                while not [p for p in fs.find(f"{url}/_dask_llm/journal") if p.endswith(".jsonl")]:
                    assert time.monotonic() < deadline and not done.is_set(), "no journal while the run was going"
                    time.sleep(0.02)
                early = report(url, html=f"{url}/early.html")
            finally:
                worker.join(30)
            assert done.is_set()
            late = report(url)
            stats = sim.stats()
        assert early.in_progress and early.dataset_files == 0 and 0 < early.rows < 30
        assert early.rows == early.rows_ok == early.calls  # one call each, so far
        assert not early.slowest_from_dataset and early.slowest and early.slowest[0].index is None
        page = fs.cat_file(f"{url}/early.html").decode()
        assert 'id="in-progress"' in page and "no price for model" in page and "my-model" in page
        assert early.cost is None and early.price is None

        assert not late.in_progress and late.rows == 30 and late.dataset_files == 1
        assert (late.calls, late.prompt_tokens) == (stats["requests"], stats["prompt_tokens"])
        assert late.slowest_from_dataset and late.slowest[0].text is not None
        assert report(url, prices={"my-model": (1.0, 2.0)}).cost == pytest.approx(
            (late.prompt_tokens * 1.0 + late.completion_tokens * 2.0) / 1e6
        )
    finally:
        fs.rm(url, recursive=True)


def test_command_line_prints_the_numbers(run: Run, tmp_path: Path) -> None:
    def dask_llm_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DASK_LLM, *args], capture_output=True, text=True, timeout=120)

    done = dask_llm_cli("report", str(run.path), "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["calls"] == run.stats["requests"] and printed["rows"] == ROWS
    page = tmp_path / "out" / "report.html"
    done = dask_llm_cli("report", str(run.path), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert f"calls: {run.stats['requests']:,}" in done.stdout and f"html: {page}" in done.stdout
    assert "<svg" in page.read_text()
    missing = dask_llm_cli("report", str(run.path / "missing"))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no dask-llm checkpoint" in missing.stderr
