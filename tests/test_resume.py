"""Resume is keyed by rows: whatever the next run's partitioning, no row is
paid twice, none is lost, and the checkpoint reads back as the latest run's
rows exactly once.

A run is "killed" here by cancelling it after a number of rows (what Ctrl+C
does: finished rows are journaled, calls in flight complete and are kept).
Real SIGKILLs of the driver and of a worker process are in
``test_checkpoint_crash.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import dask_llm
from dask_llm import CheckpointError
from dask_llm._checkpoint import RunSpec, open_checkpoint
from dask_llm._checkpoint._identity import row_ids
from dask_llm._run._progress import Cancelled, ProgressChannel, Tally, cancel, collect
from dask_llm.simulator import Simulator

from .conftest import endpoint_for

PROMPT = "Say: {text}"
ROWS = 60


def frame(n: int = ROWS, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"row {i}" for i in range(start, start + n)], "n": range(start, start + n)},
        index=pd.RangeIndex(start, start + n),
    )


def run(ddf: Any, sim: Simulator, ckpt: Path | str, *, stop_after: int | None = None, **kw: Any) -> pd.DataFrame | None:
    """Enrich ``ddf`` on the threaded scheduler; with ``stop_after``, cancel
    the run once that many rows have finished (``None`` is returned)."""
    channel = ProgressChannel.new(interval=0.0)
    tally = Tally()
    with dask.config.set(scheduler="threads", num_workers=2), collect(channel, tally):
        out = dask_llm.enrich(
            ddf, PROMPT, "ans", "m", endpoint=endpoint_for(sim), threads=3, checkpoint=str(ckpt),
            progress=channel, **kw,
        )  # fmt: skip
        if stop_after is None:
            return out.compute()
        stopper = threading.Thread(target=_cancel_when, args=(tally, stop_after, channel.topic), daemon=True)
        stopper.start()
        try:
            out.compute()
        except Cancelled:
            pass
        stopper.join(5)
        return None


def _cancel_when(tally: Tally, rows: int, topic: str) -> None:
    deadline = time.monotonic() + 30
    while tally.snapshot().done < rows and time.monotonic() < deadline:
        time.sleep(0.002)
    cancel(topic)


def paid(sim: Simulator) -> dict[str, int]:
    return sim.stats()["success_by_prompt"]


def assert_each_row_paid_once(sim: Simulator, df: pd.DataFrame, case: str = "") -> None:
    counts = paid(sim)
    prompts = [f"Say: {t}" for t in df["text"]]
    assert sorted(counts) == sorted(prompts), f"every row answered {case}"
    twice = {p: c for p, c in counts.items() if c != 1}
    assert not twice, f"rows paid more than once {case}: {twice}"


def assert_reads_back_as(ckpt: Path, expected: pd.DataFrame) -> None:
    back = dd.read_parquet(str(ckpt)).compute().sort_values("n")
    assert len(back) == len(expected), "each row exactly once"
    assert back["n"].tolist() == sorted(expected["n"])
    assert (back["ans"] == "Say: " + back["text"]).all()


@pytest.fixture
def fast_sim(start_sim: Callable[..., Simulator]) -> Simulator:
    return start_sim(mode="echo", latency=0.002)


@pytest.mark.parametrize("first", [1, 3, 8])
@pytest.mark.parametrize("stop_fraction", [0.25, 0.75])
def test_any_repartitioning_pays_only_the_rows_not_yet_answered(
    start_sim: Callable[..., Simulator], tmp_path: Path, first: int, stop_fraction: float
) -> None:
    df = frame()
    clean = None
    for second in (2, 5, 7):
        for variant in ("plain", "shuffled", "appended"):
            sim = start_sim(mode="echo", latency=0.002)
            ckpt = tmp_path / f"{second}-{variant}"
            run(dd.from_pandas(df, npartitions=first), sim, ckpt, stop_after=int(ROWS * stop_fraction))
            answered_first = sum(paid(sim).values())
            assert 0 < answered_first < ROWS
            full = pd.concat([df, frame(15, start=ROWS)]) if variant == "appended" else df
            ddf = dd.from_pandas(full, npartitions=second)
            if variant == "shuffled":
                ddf = ddf.shuffle("text", npartitions=second)
            out = run(ddf, sim, ckpt)
            assert out is not None
            # Calls made equal the rows not yet answered: each row is paid once overall.
            assert_each_row_paid_once(sim, full, f"(then {second} partitions, {variant})")
            out = out.sort_values("n")
            assert (out["ans"] == "Say: " + out["text"]).all() and out["ans_error"].isna().all()
            assert_reads_back_as(ckpt, full)
            if variant == "plain":
                # Same as a clean run, apart from timings.
                clean = clean if clean is not None else _clean_run(start_sim, tmp_path / "clean", df)
                cols = ["text", "n", "ans", "ans_error", "ans_prompt_tokens", "ans_completion_tokens"]
                pd.testing.assert_frame_equal(out[cols], clean[cols])


def _clean_run(start_sim: Callable[..., Simulator], path: Path, df: pd.DataFrame) -> pd.DataFrame:
    out = run(dd.from_pandas(df, npartitions=4), start_sim(mode="echo"), path)
    assert out is not None
    return out.sort_values("n")


def test_a_fully_answered_checkpoint_is_free_under_any_later_partitioning(fast_sim: Simulator, tmp_path: Path) -> None:
    df = frame(200)
    run(dd.from_pandas(df, npartitions=8), fast_sim, tmp_path)
    assert sum(paid(fast_sim).values()) == 200
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-*.parquet")}
    for ddf in (
        dd.from_pandas(df, npartitions=5),
        dd.from_pandas(df, npartitions=3),
        dd.from_pandas(df, npartitions=3).repartition(npartitions=7),
        dd.from_pandas(df.sample(frac=1, random_state=1), npartitions=4),  # another order
        dd.from_pandas(df, npartitions=1),
    ):
        out = run(ddf, fast_sim, tmp_path)
        assert out is not None and len(out) == 200
        assert sum(paid(fast_sim).values()) == 200, "nothing is called again"
        assert_reads_back_as(tmp_path, df)
        # The partitions stand on the earlier files, wherever their boundaries cut.
        assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-*.parquet")} == files, "nothing written"


def test_a_resume_under_another_layout_returns_what_the_first_run_returned(fast_sim: Simulator, tmp_path: Path) -> None:
    # Columns of every kind, a NaN (never equal to itself) and missing values
    # among them: the rows that earlier files hold as they are come back from
    # those files, the others through their identities, alike.
    df = frame(90).assign(
        x=[float("nan") if i == 40 else i / 3 for i in range(90)],
        note=pd.array([None if i % 7 == 0 else f"note {i}" for i in range(90)], dtype="string"),
        kind=pd.Categorical([("a", "b", "c")[i % 3] for i in range(90)]),
        count=pd.array([None if i % 5 == 0 else i for i in range(90)], dtype="Int64"),
    )
    first = run(dd.from_pandas(df, npartitions=8), fast_sim, tmp_path)
    assert first is not None
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-*.parquet")}
    for parts in (3, 5, 1):
        again = run(dd.from_pandas(df, npartitions=parts), fast_sim, tmp_path)
        pd.testing.assert_frame_equal(again, first)
        assert sum(paid(fast_sim).values()) == 90, "nothing is called again"
        assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("part-*.parquet")} == files
    assert_reads_back_as(tmp_path, df)


def test_appended_rows_are_the_only_rows_called(fast_sim: Simulator, tmp_path: Path) -> None:
    run(dd.from_pandas(frame(100), npartitions=4), fast_sim, tmp_path)
    grown = pd.concat([frame(100), frame(40, start=100)])
    run(dd.from_pandas(grown, npartitions=6), fast_sim, tmp_path)
    assert_each_row_paid_once(fast_sim, grown)
    assert_reads_back_as(tmp_path, grown)


def test_rows_that_left_the_input_leave_the_dataset_when_the_run_completes(fast_sim: Simulator, tmp_path: Path) -> None:
    run(dd.from_pandas(frame(100), npartitions=4), fast_sim, tmp_path)
    head = frame(100).iloc[:30]
    with dask.config.set(scheduler="sync"):
        out = dask_llm.enrich(dd.from_pandas(head, npartitions=2), PROMPT, "ans", "m",
                              endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))  # fmt: skip
        out.partitions[0].compute()
        # A part of the run: the earlier files it does not stand on stay.
        assert dd.read_parquet(str(tmp_path)).compute().index.is_unique
        assert len(pq.read_table(tmp_path)) == 100
        out.compute()
    assert sum(paid(fast_sim).values()) == 100
    # The whole run: the files whose rows all left go, and the rows that
    # left a file the run stands on partly are taken out of it.
    assert_reads_back_as(tmp_path, head)
    assert len(list(tmp_path.glob("part-*.parquet"))) == 2


def test_new_rows_sharing_answers_never_take_a_kept_file_away(fast_sim: Simulator, tmp_path: Path) -> None:
    # A growing table whose new rows repeat answered texts: the new partition
    # shares their answers (no call) and would supersede the file that holds
    # them, which the unchanged partitions keep as it is (they write nothing).
    old = dd.from_pandas(frame(40), npartitions=2)
    run(old, fast_sim, tmp_path)
    new = pd.DataFrame({"text": [f"row {i}" for i in range(10)], "n": range(40, 50)}, index=range(40, 50))
    grown = dd.concat([old, dd.from_pandas(new, npartitions=1)])
    with dask.config.set(scheduler="sync"):
        out = dask_llm.enrich(grown, PROMPT, "ans", "m", endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))
        # The unchanged partitions first (a head computed before the rest).
        got = pd.concat([out.partitions[0:2].compute(), out.partitions[2].compute()])
    assert len(got) == 50 and sum(paid(fast_sim).values()) == 40, "the new rows share stored answers"
    assert_reads_back_as(tmp_path, pd.concat([frame(40), new]))


def test_edited_rows_replace_their_earlier_versions(fast_sim: Simulator, tmp_path: Path) -> None:
    # Exactly the rows of one earlier partition edited (same index): no new
    # row shares a file with them, so only their keys find the old versions.
    run(dd.from_pandas(frame(100), npartitions=4), fast_sim, tmp_path)
    edited = frame(100)
    edited.loc[:24, "text"] = [f"edited {i}" for i in range(25)]
    out = run(dd.from_pandas(edited, npartitions=4), fast_sim, tmp_path)
    assert out is not None and sum(paid(fast_sim).values()) == 125, "only the edited rows are called"
    assert_reads_back_as(tmp_path, edited)


@pytest.mark.parametrize("parts", [4, 2])
def test_a_column_the_prompt_does_not_read_reads_back_as_it_is_now(
    fast_sim: Simulator, tmp_path: Path, parts: int
) -> None:
    # A corrected id, a new status: nothing to call again, but the dataset
    # must not keep the old value (same layout: the file's own partition;
    # fewer partitions: a file held whole, which would otherwise be adopted).
    df = frame(100)
    run(dd.from_pandas(df, npartitions=4), fast_sim, tmp_path)
    fixed = df.assign(n=df["n"] + 1000)
    fixed.loc[30:, "n"] = df.loc[30:, "n"]  # the first file, and a few rows of the second
    out = run(dd.from_pandas(fixed, npartitions=parts), fast_sim, tmp_path)
    assert out is not None and out["n"].tolist() == fixed["n"].tolist()
    assert sum(paid(fast_sim).values()) == 100, "nothing is called again"
    back = dd.read_parquet(str(tmp_path)).compute().sort_index()
    assert back["n"].tolist() == fixed["n"].tolist()


def test_an_older_result_computed_again_is_the_latest_run(fast_sim: Simulator, tmp_path: Path) -> None:
    # A notebook cell computed again after a newer one: the dataset follows
    # the run computed last, whichever enrich() call made it.
    df = frame(100)

    def enriched(parts: int) -> Any:
        return dask_llm.enrich(dd.from_pandas(df, npartitions=parts), PROMPT, "ans", "m",
                               endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))  # fmt: skip

    older, newer = enriched(4), enriched(7)
    with dask.config.set(scheduler="threads"):
        for result in (older, newer, older):
            assert len(result.compute()) == 100
            assert_reads_back_as(tmp_path, df)
    assert_each_row_paid_once(fast_sim, df)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_a_look_at_some_partitions_then_the_whole_result_keeps_one_copy(
    fast_sim: Simulator, tmp_path: Path, scheduler: str
) -> None:
    # What a notebook does: peek (tail, one partition), then compute it all.
    # The graph of a peek holds only some partitions; each keeps its number,
    # so its file is the one the whole compute finds, not a second copy.
    df = frame(100)
    with dask.config.set(scheduler=scheduler):
        out = dask_llm.enrich(dd.from_pandas(df, npartitions=4), PROMPT, "ans", "m",
                              endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))  # fmt: skip
        assert out.tail(5)["n"].tolist() == list(range(95, 100))
        assert out.partitions[1].compute()["n"].tolist() == list(range(25, 50))
        assert_reads_back_as(tmp_path, pd.concat([df.iloc[25:50], df.iloc[75:]]))
        assert len(out.compute()) == 100
    assert_reads_back_as(tmp_path, df)
    assert sorted(p.name[:10] for p in tmp_path.glob("part-*.parquet")) == [f"part-0000{i}" for i in range(4)]
    assert_each_row_paid_once(fast_sim, df)


def test_duplicate_partitions_then_one_copy_reads_back_once(fast_sim: Simulator, tmp_path: Path) -> None:
    # The copy that stays finds its file already there; the other copy's
    # file, of the earlier run, holds the same rows and must go.
    part = dd.from_pandas(frame(20), npartitions=1)
    with dask.config.set(scheduler="sync"):
        for ddf, rows in ((dd.concat([part, part]), 40), (part, 20), (part, 20)):
            out = dask_llm.enrich(ddf, PROMPT, "ans", "m", endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))
            assert len(out.compute()) == rows
            assert len(pq.read_table(tmp_path)) == rows
    assert sum(paid(fast_sim).values()) == 20


def test_a_result_computed_again_under_a_fresh_coordinator_keeps_one_copy(fast_sim: Simulator, tmp_path: Path) -> None:
    from dask_llm._coordination import local_coordinator

    a, b = frame(10), frame(10, start=10)
    first_a, kept = dd.from_pandas(a, npartitions=1), dd.from_pandas(b, npartitions=1)
    run(dd.concat([first_a, kept]), fast_sim, tmp_path)
    # kept is partition 1 again, but a renumbered copy of its rows before it
    # supersedes its file first: it writes under a name of its own.
    renumbered = [dd.from_pandas(b.set_axis(range(start, start + 10)), npartitions=1) for start in (50, 70)]
    with dask.config.set(scheduler="sync"):
        out = dask_llm.enrich(dd.concat([renumbered[0], kept, renumbered[1], first_a]), PROMPT, "ans", "m",
                              endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))  # fmt: skip
        first = out.compute()
        assert len(pq.read_table(tmp_path)) == 40
        local_coordinator().state.claims.clear()  # a new scheduler: the run's claims are gone
        again = out.compute()
    back = pq.read_table(tmp_path).to_pandas()
    assert len(first) == len(again) == len(back) == 40, "one copy of each row"
    assert sorted(back.index) == sorted(first.index)
    assert sum(paid(fast_sim).values()) == 20


def test_the_claims_of_a_run_on_earlier_files() -> None:
    from dask_llm._checkpoint import DatasetClaims
    from dask_llm._coordination._state import CLAIMED_RUNS, CoordinatorState

    state = CoordinatorState()
    claims = DatasetClaims("run-0", lambda op, **fields: getattr(state, op)(**fields))
    # A row is stood on by one partition (an exact duplicate elsewhere
    # writes its own copy); the same partition again (a restarted task) keeps it.
    assert claims.keep("f", "0", 6, np.array([0, 1, 2])).tolist() == [True] * 3
    assert claims.keep("f", "1", 6, np.array([2, 3])).tolist() == [False, True]
    assert claims.keep("f", "0", 6, np.array([0, 1, 2])).all()
    # Closed: the rows stood on so far move to the new file, for the same partitions.
    assert claims.close("f", "2", 6, into="g").tolist() == [0, 1, 2, 3]
    assert claims.close("f", "2", 6, into="g").tolist() == [0, 1, 2, 3], "again to its closer"
    assert claims.close("f", "3", 6, into="h") is None, "another partition writes it"
    assert not claims.keep("f", "1", 6, np.array([4])).any(), "nothing more is kept of a closed file"
    assert claims.keep("f", "1", 6, np.array([3, 4])).tolist() == [True, False], "what it kept, it keeps (in g)"
    assert claims.keep("g", "1", 4, np.array([3])).all() and not claims.keep("g", "0", 4, np.array([3])).any()
    assert claims.close("g", "9", 4, into="i", unless_kept=True) is None, "every row kept: nothing to finish"
    # The partition that completes the run finishes it, again if it asks again.
    assert [claims.done(k, 3) for k in (2, 0, 0)] == [False, False, False]
    assert claims.done(1, 3) and claims.done(1, 3) and not claims.done(2, 3)
    # A long-lived scheduler forgets the oldest runs.
    for run in range(1, CLAIMED_RUNS + 1):
        assert DatasetClaims(f"run-{run}", lambda op, **f: getattr(state, op)(**f)).keep("f", "0", 6).all()
    assert len(state.claims) == CLAIMED_RUNS and "run-0" not in state.claims


def test_a_dataset_file_written_again_under_its_name_is_read_again(tmp_path: Path) -> None:
    # Another worker process rewrites a partition's own file with other rows
    # (the rows no adopted file holds): this process must not go on
    # believing the file holds the rows it held when first read.
    from dask_llm._checkpoint._ledger import MEMBERS_DIR, LedgerIndex, members_to_arrow
    from dask_llm._core._store import open_store

    store = open_store(str(tmp_path), {})
    ids = row_ids(frame(6), ["text"])
    name = "part-00000-0123456789abcdef"

    def write(positions: list[int], epoch: str) -> None:
        store.write(f"{MEMBERS_DIR}/{name}.arrow", members_to_arrow(ids.take(np.array(positions)), epoch))
        store.write(f"{name}.parquet", b"")

    write([0, 1, 2, 3], "1-a")
    index = LedgerIndex(store)
    index.refresh(run="3-c")
    assert index.files_holding(ids.hi[:1], run="3-c")[0] == [name]
    write([2, 3], "2-b")  # by another process
    index.refresh()
    members = index.members_of(name)
    assert members is not None and members.tolist() == ids.hi[2:4].tolist()
    assert index.files_holding(ids.hi[:2], run="3-c")[0] == [], "rows 0 and 1 are no longer in the file"
    assert index.files_holding(ids.hi[2:3], run="3-c")[0] == [name]


def test_exact_duplicate_partitions_are_each_kept(fast_sim: Simulator, tmp_path: Path) -> None:
    # Two identical partitions (same rows, same index) under the synchronous scheduler.
    part = dd.from_pandas(frame(50), npartitions=1)
    with dask.config.set(scheduler="sync"):
        out = dask_llm.enrich(dd.concat([part, part]), PROMPT, "ans", "m", endpoint=endpoint_for(fast_sim),
                              checkpoint=str(tmp_path)).compute()  # fmt: skip
    assert len(out) == 100
    assert len(pq.read_table(tmp_path)) == 100
    assert sum(paid(fast_sim).values()) == 50, "identical requests are paid once"


def test_csv_read_with_another_blocksize_calls_nothing_again(fast_sim: Simulator, tmp_path: Path) -> None:
    # dd.read_csv numbers each block's rows from 0, so another blocksize
    # changes every index value: the request content still finds the answers.
    csv = tmp_path / "in.csv"
    frame(300).to_csv(csv, index=False)
    ckpt = tmp_path / "ckpt"
    small = dd.read_csv(str(csv), blocksize=700)
    assert small.npartitions > 3
    run(small, fast_sim, ckpt)
    big = dd.read_csv(str(csv), blocksize=2500)
    assert big.npartitions != small.npartitions
    out = run(big, fast_sim, ckpt)
    assert out is not None and len(out) == 300
    assert_each_row_paid_once(fast_sim, frame(300))
    assert_reads_back_as(ckpt, frame(300))


@pytest.mark.parametrize("dedup", [True, False])
def test_a_reordered_csv_and_back_reads_back_each_row_once(fast_sim: Simulator, tmp_path: Path, dedup: bool) -> None:
    # The reversed file renumbers every row (dd.read_csv counts from 0), so
    # its rows are new identities with answered requests; reading the first
    # file again finds its rows by identity, and the reversed copies in the
    # dataset are superseded by content.
    df = frame(120)
    forward, backward = tmp_path / "a.csv", tmp_path / "rev.csv"
    df.to_csv(forward, index=False)
    df.iloc[::-1].to_csv(backward, index=False)
    ckpt = tmp_path / "ckpt"
    for path, blocksize in ((forward, 600), (backward, 900), (forward, 600), (backward, 1500)):
        out = run(dd.read_csv(str(path), blocksize=blocksize), fast_sim, ckpt, dedup=dedup)
        assert out is not None and len(out) == 120
        assert_reads_back_as(ckpt, df)
    if dedup:
        assert_each_row_paid_once(fast_sim, df)


def test_key_column_identifies_rows_when_dedup_is_off(fast_sim: Simulator, tmp_path: Path) -> None:
    # Without de-duplication a changed index would mean a new row; key= says which column is stable.
    df = frame(80)
    first = df.reset_index(drop=True)
    run(dd.from_pandas(first, npartitions=4), fast_sim, tmp_path, dedup=False, key="n")
    renumbered = df.set_index(pd.RangeIndex(1000, 1080))
    out = run(dd.from_pandas(renumbered, npartitions=3), fast_sim, tmp_path, dedup=False, key="n")
    assert out is not None
    assert_each_row_paid_once(fast_sim, df)
    assert_reads_back_as(tmp_path, df)


def test_pandas_then_dask_on_the_same_checkpoint(fast_sim: Simulator, tmp_path: Path) -> None:
    df = frame(40)
    dask_llm.enrich(df, PROMPT, "ans", "m", endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))
    run(dd.from_pandas(df, npartitions=3), fast_sim, tmp_path)
    assert_each_row_paid_once(fast_sim, df)


def test_every_output_column_survives_a_resume(start_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    sim = start_sim(mode="echo", rate_limit_rate=0.3, seed=3)
    # The 429s are the point here, not waiting for them: short hints, no budget.
    retry = dask_llm.RetryPolicy(max_attempts=10, backoff_initial=0.01, backoff_max=0.05, max_retry_after=0.05)
    first = run(dd.from_pandas(frame(60), npartitions=3), sim, tmp_path, retry=retry, budget=False)
    assert first is not None and first["ans_rate_limited"].sum() > 0
    again = run(dd.from_pandas(frame(60), npartitions=5), sim, tmp_path, retry=retry, budget=False)
    assert again is not None
    cols = [c for c in first.columns if c.startswith("ans")]
    pd.testing.assert_frame_equal(again.sort_values("n")[cols], first.sort_values("n")[cols])
    before = dask_llm.summarize(first, "ans")
    after = dask_llm.summarize(dd.read_parquet(str(tmp_path)), "ans")
    assert after == before


def test_errors_are_kept_until_retried(start_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    sim = start_sim(mode="echo", max_context_tokens=20)  # the long row gets a 400
    df = pd.DataFrame({"text": ["a", "b", "a long row of text " * 10, "c"], "n": range(4)})
    out = run(dd.from_pandas(df, npartitions=2), sim, tmp_path)
    assert out is not None and out["ans_error"].notna().sum() == 1
    again = run(dd.from_pandas(df, npartitions=3), sim, tmp_path)
    assert again is not None and again["ans_error"].notna().sum() == 1
    assert sim.stats()["by_status"].get("400") == 1, "the stored error is not called again"
    run(dd.from_pandas(df, npartitions=3), sim, tmp_path, retry_errors=True)
    assert sim.stats()["by_status"].get("400") == 2


def test_a_retried_error_stays_fixed_in_a_new_process(start_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    from dask_llm._checkpoint import _ledger

    df = frame(80)
    flaky = start_sim(mode="echo", fail_rate=0.3, seed=1)
    once = dask_llm.RetryPolicy(max_attempts=1)
    first = run(dd.from_pandas(df, npartitions=4), flaky, tmp_path, retry=once, budget=False)
    assert first is not None and first["ans_error"].notna().sum() > 0
    sim = start_sim(mode="echo", latency=0.002)
    fixed = run(dd.from_pandas(df, npartitions=4), sim, tmp_path, retry_errors=True)
    assert fixed is not None and fixed["ans_error"].isna().all()
    retried = sum(paid(sim).values())
    for parts in (4, 7):  # the same partitioning, and another
        _ledger._indexes.clear()  # what a new process sees: only the files
        again = run(dd.from_pandas(df, npartitions=parts), sim, tmp_path)
        assert again is not None and again["ans_error"].isna().all(), "the fixed answers are what was saved"
        assert sum(paid(sim).values()) == retried, "nothing is paid again"
        assert_reads_back_as(tmp_path, df)


def test_two_runs_with_different_specs_racing_on_a_new_path(tmp_path: Path) -> None:
    for attempt in range(20):
        url = str(tmp_path / f"race-{attempt}")
        outcomes = race(url, None)
        assert sorted(outcomes) == ["error", "ok"], outcomes


def test_the_race_on_s3(moto_s3: str) -> None:
    import boto3

    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_s3, "region_name": "us-east-1"},
    }
    boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="race")  # fmt: skip
    for attempt in range(10):
        outcomes = race(f"s3://race/run-{attempt}", options)
        assert sorted(outcomes) == ["error", "ok"], outcomes


def race(url: str, options: dict[str, Any] | None) -> list[str]:
    """Two runs with different prompts claim ``url`` at the same moment."""
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def claim(prompt: str) -> None:
        spec = RunSpec(prompt=prompt, system=None, model="m", params={}, columns={"ans": "string"})
        barrier.wait()
        try:
            open_checkpoint(url, options, spec, retry_errors=False, overwrite=False, npartitions=1)
            outcomes.append("ok")
        except CheckpointError:
            outcomes.append("error")

    threads = [threading.Thread(target=claim, args=(p,)) for p in ("Say: {text}", "Shout: {text}")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_a_checkpoint_of_the_first_format_is_refused_in_one_line(fast_sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "_dask_llm").mkdir()
    (tmp_path / "_dask_llm" / "manifest.json").write_text('{"format": 1, "run": "abc"}')
    with pytest.raises(CheckpointError) as info:
        run(frame(4), fast_sim, tmp_path)
    message = str(info.value)
    assert "\n" not in message and "format 1" in message and "overwrite=True" in message
    assert fast_sim.stats()["requests"] == 0


def test_row_identity_ignores_partitioning_and_string_dtype() -> None:
    df = frame(30)
    whole = row_ids(df, ["text"])
    parts = [row_ids(df.iloc[a:b], ["text"]) for a, b in ((0, 7), (7, 19), (19, 30))]
    assert np.array_equal(np.concatenate([p.hi for p in parts]), whole.hi)
    as_object = row_ids(df.astype({"text": object}), ["text"])
    as_arrow = row_ids(df.astype({"text": "string[pyarrow]"}), ["text"])
    assert np.array_equal(as_object.hi, as_arrow.hi) and np.array_equal(as_object.lo, as_arrow.lo)
    # Exact duplicates within a partition are told apart; equal content shares its content hash.
    dup = pd.DataFrame({"text": ["x", "x", "y"]}, index=[0, 0, 1])
    ids = row_ids(dup, ["text"])
    assert len(set(ids.hi)) == 3 and ids.content[0] == ids.content[1]
    # Another index value is another row.
    assert row_ids(df.set_index(df.index + 1), ["text"]).hi[0] != whole.hi[0]


def test_row_identities_are_those_existing_checkpoints_hold() -> None:
    # Pinned values of the checkpoint format: a change here would make every
    # existing checkpoint call all its rows again.
    df = pd.DataFrame({"text": ["row 0", "é ☃", None, "row 0"], "n": [1, 2, 3, 1]}, index=[10, 11, 12, 10])
    for dtype in (object, "string[python]", "string[pyarrow]"):
        ids = row_ids(df.astype({"text": dtype}), ["text", "n"])
        assert [hex(h) for h in ids.hi] == [
            "0x6a09d18baaf95c4f",
            "0x1bb4e865b4faa9e9",
            "0x66ce4c064fb86f46",
            "0x84d33249796d38b",
        ]
        assert hex(ids.lo[0]) == "0x91beb957067b6a90"


@pytest.mark.parametrize("dtype", [object, "string[python]", "string[pyarrow]"])
def test_a_text_that_reads_like_a_missing_value_is_its_own_request(
    fast_sim: Simulator, tmp_path: Path, dtype: Any
) -> None:
    # pandas hashes a missing value as the text "None" (or "nan"): those texts
    # must not take a missing cell's answer, nor the other way round.
    texts = pd.Series(["None", None, "nan", "\x00None", "x", None], dtype=dtype)
    content = row_ids(pd.DataFrame({"text": texts}), ["text"]).content
    assert len(set(content[:5].tolist())) == 5 and content[1] == content[5]
    df = pd.DataFrame({"text": texts, "n": range(6)})
    out = run(dd.from_pandas(df, npartitions=2), fast_sim, tmp_path)
    assert out is not None
    assert out["ans"].tolist() == ["Say: None", "Say: ", "Say: nan", "Say: \x00None", "Say: x", "Say: "]


def test_arrow_integers_are_hashed_as_integers(fast_sim: Simulator, tmp_path: Path) -> None:
    import pyarrow as pa

    big = [2**53, 2**53 + 1, None]
    as_arrow = pd.DataFrame({"oid": pd.array(pa.array(big, pa.int64()), dtype=pd.ArrowDtype(pa.int64()))})
    as_masked = pd.DataFrame({"oid": pd.array(big, dtype="Int64")})
    ids = row_ids(as_arrow, ["oid"])
    assert ids.content[0] != ids.content[1], "2**53 + 1 is not 2**53"
    assert np.array_equal(ids.hi, row_ids(as_masked, ["oid"]).hi), "int64[pyarrow] is Int64"
    one = row_ids(pd.DataFrame({"oid": pd.array(pa.array([1, None]), dtype=pd.ArrowDtype(pa.int64()))}), ["oid"])
    assert one.content[0] != row_ids(pd.DataFrame({"oid": [1.0]}), ["oid"]).content[0], "1 is not 1.0"
    # End to end: "Order 1.0" answered first never answers "Order 1".
    floats = pd.DataFrame({"oid": [1.0, 2.5]})
    dask_llm.enrich(floats, "Order {oid}", "ans", "m", endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))
    ints = pd.DataFrame({"oid": pd.array(pa.array([1, None, 2**53 + 1]), dtype=pd.ArrowDtype(pa.int64()))})
    out = dask_llm.enrich(ints, "Order {oid}", "ans", "m", endpoint=endpoint_for(fast_sim), checkpoint=str(tmp_path))
    assert out["ans"].tolist() == ["Order 1", "Order ", f"Order {2**53 + 1}"]


def test_cells_holding_lists_have_identities() -> None:
    # A prompt may read a column of lists or dicts (tags, extracted fields).
    df = pd.DataFrame({"tags": pd.Series([["a", "b"], ["a", "b"], {"k": 1}, "plain"], dtype=object)})
    ids = row_ids(df, ["tags"])
    assert len(set(ids.hi)) == 4 and ids.content[0] == ids.content[1] != ids.content[2]
    assert np.array_equal(row_ids(df, ["tags"]).hi, ids.hi)
    # A cell's identity is its own, whatever the other cells: a column of
    # lists all of one length hashes each list as a column of mixed cells does.
    same_length = row_ids(pd.DataFrame({"tags": pd.Series([[1, 2], [3, 4]], dtype=object)}), ["tags"])
    mixed = row_ids(pd.DataFrame({"tags": pd.Series([[1, 2], "x"], dtype=object)}), ["tags"])
    assert same_length.content[0] == mixed.content[0]
