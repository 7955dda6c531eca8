"""Checkpoint and resume in one process: local disk and ``memory://``.

What a user relies on: a re-run calls the model only for rows the checkpoint
does not hold; the checkpoint reads back as one Parquet dataset; a bad or
foreign path is refused before any call. The simulator's per-prompt success
counts are the proof of what was paid for.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dask
import dask.dataframe as dd
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dask_llm
from dask_llm import CheckpointError, ConfigError, RetryPolicy, RowError
from dask_llm.simulator import Simulator

from .conftest import endpoint_for

PROMPT = "Say: {text}"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)], "n": range(n)})


def prompts(n: int) -> set[str]:
    return {f"Say: row {i}" for i in range(n)}


def paid(sim: Simulator) -> dict[str, int]:
    """Successful (billable) answers per prompt."""
    return sim.stats()["success_by_prompt"]


def enrich(df: pd.DataFrame | dd.DataFrame, sim: Simulator, checkpoint: object, **kw: object) -> object:
    kw.setdefault("threads", 4)
    return dask_llm.enrich(df, PROMPT, "ans", "m", endpoint=endpoint_for(sim), checkpoint=checkpoint, **kw)


@pytest.fixture(autouse=True)
def threaded_scheduler() -> Iterator[None]:
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


def part_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("part-*.parquet"))


def test_rerun_calls_nothing_and_reads_back_as_one_dataset(sim: Simulator, tmp_path: Path) -> None:
    ddf = dd.from_pandas(frame(60), npartitions=4)
    first = enrich(ddf, sim, tmp_path).compute()
    assert paid(sim) == dict.fromkeys(prompts(60), 1)

    again = enrich(ddf, sim, tmp_path).compute()
    assert sim.stats()["requests"] == 60  # the re-run called nothing
    pd.testing.assert_frame_equal(again, first)

    # One file per partition, named in input order; nothing else visible.
    files = part_files(tmp_path)
    assert len(files) == 4 and [f[:10] for f in files] == [f"part-0000{i}" for i in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_dask_llm", *files]

    table = pq.read_table(tmp_path)
    assert table.num_rows == 60
    assert table.schema.field("ans_error").type == pa.large_string()  # all null, still a string
    back = table.to_pandas()
    assert back["ans"].tolist() == [f"Say: row {i}" for i in range(60)]
    assert back.index.tolist() == list(range(60))
    pd.testing.assert_frame_equal(dd.read_parquet(tmp_path).compute(), first, check_dtype=False)


def test_pandas_input_is_checkpointed_too(sim: Simulator, tmp_path: Path) -> None:
    first = enrich(frame(10), sim, tmp_path)
    again = enrich(frame(10), sim, tmp_path)
    assert sim.stats()["requests"] == 10
    pd.testing.assert_frame_equal(again, first)
    assert len(part_files(tmp_path)) == 1


@pytest.fixture(params=["local", "memory"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, fsspec.AbstractFileSystem]]:
    """A checkpoint URL on local disk or ``memory://``, and its filesystem."""
    if request.param == "local":
        yield str(tmp_path), fsspec.filesystem("file")
        return
    fs = fsspec.filesystem("memory")
    root = f"/dask-llm-test-{uuid.uuid4().hex}"
    try:
        yield f"memory://{root}/run", fs
    finally:
        fs.rm(root, recursive=True)


def test_rows_finished_before_a_failure_are_not_paid_again(
    start_sim: Callable[..., Simulator], location: tuple[str, fsspec.AbstractFileSystem]
) -> None:
    # The first run stops at its first failed row (on_error="raise"), in the
    # middle of its only partition: nothing is committed, rows are journaled.
    url, fs = location
    flaky = start_sim(mode="echo", fail_rate=0.05, seed=3)
    ddf = dd.from_pandas(frame(200), npartitions=1)
    with pytest.raises(RowError):
        enrich(ddf, flaky, url, on_error="raise", retry=RetryPolicy(max_attempts=1)).compute()
    assert not fs.glob(f"{url}/part-*")
    assert fs.glob(f"{url}/_dask_llm/journal/*/*.jsonl")
    before = paid(flaky)
    assert 0 < len(before) < 200

    # The row that failed is stored as an error; retry_errors calls it again.
    healthy = start_sim(mode="echo")
    out = enrich(ddf, healthy, url, retry_errors=True).compute()
    after = paid(healthy)
    assert not before.keys() & after.keys()  # no finished row paid twice
    assert before.keys() | after.keys() == prompts(200)
    assert out["ans_error"].isna().all()
    assert out["ans"].tolist() == [f"Say: row {i}" for i in range(200)]
    assert len(fs.glob(f"{url}/part-*.parquet")) == 1
    assert not fs.glob(f"{url}/_dask_llm/journal/*/*")  # the commit dropped the journal


def test_stored_errors_are_kept_unless_retry_errors(start_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    ddf = dd.from_pandas(frame(40), npartitions=8)
    flaky = start_sim(mode="echo", fail_rate=0.3, seed=1)
    first = enrich(ddf, flaky, tmp_path, retry=RetryPolicy(max_attempts=1)).compute()
    failed = set(PROMPT.format(text=t) for t in first.loc[first["ans_error"].notna(), "text"])
    assert 0 < len(failed) < 40

    # Every file has one schema, whether its error column is all null or not.
    schemas = {pq.read_schema(tmp_path / f).remove_metadata() for f in part_files(tmp_path)}
    assert len(schemas) == 1

    healthy = start_sim(mode="echo")
    kept = enrich(ddf, healthy, tmp_path).compute()
    assert healthy.stats()["requests"] == 0
    pd.testing.assert_frame_equal(kept, first)

    retried = enrich(ddf, healthy, tmp_path, retry_errors=True).compute()
    assert set(paid(healthy)) == failed  # exactly the failed rows were called
    assert retried["ans_error"].isna().all()
    assert pq.read_table(tmp_path).column("ans_error").null_count == 40
    assert len(part_files(tmp_path)) == 8  # re-committed in place


def test_changed_prompt_is_refused_unless_overwrite(sim: Simulator, tmp_path: Path) -> None:
    ddf = dd.from_pandas(frame(10), npartitions=2)
    enrich(ddf, sim, tmp_path).compute()
    for change in ({"model": "other-model"}, {"temperature": 0.5}, {"system": "Be terse."}):
        with pytest.raises(CheckpointError, match="holds another run") as info:
            dask_llm.enrich(ddf, PROMPT, "ans", change.pop("model", "m"), endpoint=endpoint_for(sim),
                            checkpoint=tmp_path, **change)  # fmt: skip
        assert str(tmp_path) in str(info.value) and "overwrite=True" in str(info.value)
    with pytest.raises(CheckpointError, match="prompt was 'Say: {text}', now 'Echo: {text}'"):
        dask_llm.enrich(ddf, "Echo: {text}", "ans", "m", endpoint=endpoint_for(sim), checkpoint=tmp_path)
    with pytest.raises(CheckpointError, match="column was 'ans', now 'label'"):
        dask_llm.enrich(ddf, PROMPT, "label", "m", endpoint=endpoint_for(sim), checkpoint=tmp_path)

    out = dask_llm.enrich(ddf, "Echo: {text}", "ans", "m", endpoint=endpoint_for(sim),
                          checkpoint=tmp_path, overwrite=True).compute()  # fmt: skip
    assert out["ans"].str.startswith("Echo: ").all()
    assert sim.stats()["requests"] == 20  # the new run called every row
    assert pq.read_table(tmp_path).num_rows == 10  # the old run's files are gone


def test_unwritable_path_fails_before_any_call(sim: Simulator, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    bad = blocker / "checkpoint"
    with pytest.raises(CheckpointError, match="is not writable") as info:
        enrich(dd.from_pandas(frame(10), npartitions=2), sim, bad)
    assert str(bad) in str(info.value)
    assert sim.stats()["requests"] == 0


def test_a_directory_of_other_files_is_refused(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(CheckpointError, match="not a dask-llm checkpoint.*'data.csv'"):
        enrich(frame(4), sim, tmp_path)
    with pytest.raises(CheckpointError):
        enrich(frame(4), sim, tmp_path, overwrite=True)  # never deletes foreign data
    assert (tmp_path / "data.csv").exists() and sim.stats()["requests"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"], "the folder is left as it was"


def test_memory_filesystem(sim: Simulator) -> None:
    url = f"memory://dask-llm-test-{uuid.uuid4().hex}/run"
    fs = fsspec.filesystem("memory")
    try:
        ddf = dd.from_pandas(frame(30), npartitions=3)
        first = enrich(ddf, sim, url).compute()
        again = enrich(ddf, sim, url).compute()
        assert sim.stats()["requests"] == 30
        pd.testing.assert_frame_equal(again, first)
        files = sorted(f for f in fs.ls(url, detail=False) if f.rsplit("/", 1)[1].startswith("part-"))
        assert len(files) == 3
        table = pa.concat_tables(pq.read_table(fs.open(f, "rb")) for f in files)
        assert table.column("ans").to_pylist() == [f"Say: row {i}" for i in range(30)]
    finally:
        fs.rm(url.split("/run")[0], recursive=True)


def test_partitions_that_send_the_same_prompts_are_distinct(sim: Simulator, tmp_path: Path) -> None:
    # Keyed by content, not number, yet two partitions with equal prompts but
    # different rows must not share a file, or the dataset would lose rows.
    df = pd.DataFrame({"text": ["same"] * 8, "n": range(8)})
    out = enrich(dd.from_pandas(df, npartitions=2), sim, tmp_path).compute()
    assert len(part_files(tmp_path)) == 2
    assert sorted(pq.read_table(tmp_path).column("n").to_pylist()) == list(range(8))
    assert out["n"].tolist() == list(range(8))


def test_checkpoint_options_need_a_checkpoint(sim: Simulator) -> None:
    for kw in ({"storage_options": {}}, {"retry_errors": True}, {"overwrite": True}):
        with pytest.raises(ConfigError, match="need checkpoint="):
            dask_llm.enrich(frame(2), PROMPT, "ans", "m", endpoint=endpoint_for(sim), **kw)


def test_checkpoint_error_is_public_and_picklable() -> None:
    assert "CheckpointError" in dask_llm.__all__
    assert issubclass(CheckpointError, dask_llm.DaskLLMError)
    err = pickle.loads(pickle.dumps(CheckpointError("checkpoint path 'x' is not writable")))
    assert isinstance(err, CheckpointError) and "'x'" in str(err)
