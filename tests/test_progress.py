"""Row-level progress: counted in the partitions, batched, summed by the client."""

from __future__ import annotations

import io
import threading

import dask.dataframe as dd
import pandas as pd
import pytest

import dask_llm
from dask_llm._coordination import local_coordinator, on_topic
from dask_llm._run import Outcome
from dask_llm._run._progress import (
    Cancelled,
    ProgressChannel,
    Snapshot,
    Tally,
    active,
    cancel,
    collect,
    partition_progress,
)
from dask_llm.cli._progress_line import ProgressPrinter, format_duration, render

from .conftest import endpoint_for


def test_rows_from_many_threads_arrive_in_few_batches_and_sum_exactly():
    channel = ProgressChannel.new(interval=0.2)
    tally = Tally(total=4000)
    batches = []

    def add(batch):
        batches.append(batch)
        tally.add(batch)

    ok = Outcome(text="a", prompt_tokens=10, completion_tokens=2, attempts=1)
    failed = Outcome(error="boom", attempts=3, rate_limited=2)
    with collect(channel, tally):
        on_topic(channel.topic, add)  # count the messages too
        with partition_progress(channel, local_coordinator(), restored=100) as report:

            def work():
                for k in range(1000):
                    report.row(failed if k % 100 == 0 else ok)

            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    snap = tally.snapshot()
    assert (snap.rows, snap.restored, snap.done) == (4000, 100, 4100)
    assert snap.errors == 40
    assert (snap.prompt_tokens, snap.completion_tokens) == (3960 * 10, 3960 * 2)
    assert snap.calls == 3960 + 40 * 3
    assert snap.rate_limited == 40 * 2
    # Batched: the counting is per row, the messages are not.
    assert len(batches) < 100


def test_cancel_stops_running_and_new_partitions():
    channel = ProgressChannel.new()
    with partition_progress(channel, local_coordinator()) as report:
        assert active(channel.topic) == 1
        report.row(Outcome(text="a", attempts=1))
        cancel(channel.topic)
        with pytest.raises(Cancelled):
            report.row(Outcome(text="b", attempts=1))
    assert active(channel.topic) == 0
    with pytest.raises(Cancelled):
        partition_progress(channel, local_coordinator())


def test_without_a_channel_nothing_is_reported():
    with partition_progress(None, local_coordinator(), restored=5) as report:
        report.row(Outcome(text="a", attempts=1))


def test_enrich_reports_every_row_of_a_pandas_frame(start_sim):
    sim = start_sim(mode="echo", rate_limit_rate=0.2, seed=3)
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
    channel = ProgressChannel.new(interval=0.05)
    tally = Tally(total=40)
    with collect(channel, tally):
        # Short waits for the 429s, and no budget to slow down for them: they are only counted here.
        retry = dask_llm.RetryPolicy(backoff_initial=0.01, max_retry_after=0.05)
        out = dask_llm.enrich(frame, "{text}", "c", "m", endpoint=endpoint_for(sim), threads=4, retry=retry,
                              budget=False, progress=channel)  # fmt: skip
    snap = tally.snapshot()
    assert snap.rows == 40 and snap.errors == 0
    assert snap.prompt_tokens == int(out["c_prompt_tokens"].sum())
    assert snap.calls == int(out["c_attempts"].sum())
    assert snap.rate_limited == int(out["c_rate_limited"].sum()) == sim.stats()["rate_limited"] > 0


@pytest.mark.slow
def test_progress_reaches_the_client_from_worker_processes(start_sim, process_cluster):
    client = process_cluster
    sim = start_sim(mode="echo")
    ddf = dd.from_pandas(pd.DataFrame({"text": [f"row {i}" for i in range(60)]}), npartitions=4)
    channel = ProgressChannel.new(interval=0.05)
    tally = Tally(total=60)
    with collect(channel, tally, client):
        out = dask_llm.enrich(ddf, "{text}", "c", "m", endpoint=endpoint_for(sim), threads=4, progress=channel)
        result = client.compute(out).result(timeout=60)
        # Events travel worker -> scheduler -> client after the result; wait (bounded).
        for _ in range(100):
            if tally.snapshot().rows == 60:
                break
            threading.Event().wait(0.05)
    snap = tally.snapshot()
    assert snap.rows == 60
    assert snap.completion_tokens == int(result["c_completion_tokens"].sum())


# ---------------------------------------------------------------- display


def test_render_shows_what_a_user_watches():
    snap = Snapshot(total=1000, elapsed=10.0, rows=200, restored=50, errors=3, prompt_tokens=31332,
                    completion_tokens=1200, rate_limited=7)  # fmt: skip
    line = render(snap, cost=0.01234)
    assert line.startswith("rows 250/1,000 (25%) | 20.0 rows/s | ETA 38s | 429s 7 | errors 3 ")
    assert "tokens 31.3k in, 1.2k out" in line
    assert "$0.0123" in line and "50 from checkpoint" in line
    assert render(snap, bar_width=10).startswith("[##........] rows 250/1,000")
    assert "ETA ?" in render(Snapshot(total=10, elapsed=1.0))
    assert format_duration(3723) == "1h02m" and format_duration(75) == "1m15s"


@pytest.mark.parametrize("width", [200, 100, 72, 40, 24])
def test_render_fits_the_terminal_and_keeps_what_matters_most(width):
    snap = Snapshot(total=10_000, elapsed=30.0, rows=1200, restored=50, errors=1, rate_limited=3, prompt_tokens=31332,
                    completion_tokens=1200, batches=6, batches_done=2, batch_requests=1200, batch_completed=400)  # fmt: skip
    line = render(snap, cost=0.0123, bar_width=20, width=width)
    assert len(line) <= width
    assert line.startswith(("[", "rows 1,250/10,000"))
    full = render(snap, cost=0.0123)
    if width >= 40:
        assert "ETA 3m39s" in line
    if width >= 100:
        assert "batches 2/6 ended, 400/1,200 answered" in line
    if width < len(full):
        assert "tokens" not in line  # the least telling part goes first
    if width == 200:
        assert line == full.replace("rows 1,250", "[##..................] rows 1,250", 1)


@pytest.mark.parametrize("tty", [True, False])
def test_printer_redraws_on_a_terminal_and_prints_lines_elsewhere(tty, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # what shutil.get_terminal_size() reads first
    tally = Tally(total=10)
    tally.add({"rows": 4})
    stream = io.StringIO()
    printer = ProgressPrinter(tally, stream, tty=tty, interval=0.01)
    with printer:
        threading.Event().wait(0.1)
    text = stream.getvalue()
    if tty:
        assert text.startswith("\r[") and "\x1b[K" in text and text.endswith("\n")
        assert text.count("\n") == 1
        monkeypatch.setenv("COLUMNS", "30")
        narrow = io.StringIO()
        with ProgressPrinter(tally, narrow, tty=True, interval=0.01):
            threading.Event().wait(0.05)
        redraws = narrow.getvalue().strip("\n").split("\r")[1:]
        assert redraws and all(len(r.removesuffix("\x1b[K")) < 30 for r in redraws)
    else:
        assert "\r" not in text and text.splitlines()[-1].startswith("rows 4/10 (40%)")
