"""Checkpoints on S3 (a moto server on 127.0.0.1), from worker processes that
share nothing with the driver but the URL and the storage options."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq
import pytest

import dask_llm
from dask_llm import CheckpointError, RetryPolicy, RowError
from dask_llm.simulator import Simulator

from .conftest import endpoint_for

pytestmark = pytest.mark.slow

s3fs = pytest.importorskip("s3fs")

BUCKET = "dask-llm-test"


@pytest.fixture(scope="module")
def s3(moto_s3: str) -> dict[str, Any]:
    """Storage options of a bucket on the session's moto server."""
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_s3, "region_name": "eu-west-1"},
    }
    s3fs.S3FileSystem(**options).mkdir(BUCKET)
    return options


def run_url() -> str:
    return f"s3://{BUCKET}/runs/{uuid.uuid4().hex}/"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def enrich(df: Any, sim: Simulator, url: str, s3: dict[str, Any], **kw: Any) -> Any:
    return dask_llm.enrich(df, "Say: {text}", "ans", "m", endpoint=endpoint_for(sim), threads=4,
                           checkpoint=url, storage_options=s3, **kw)  # fmt: skip


def test_worker_processes_commit_to_s3_and_a_rerun_is_free(
    process_cluster: Any, sim: Simulator, s3: dict[str, Any]
) -> None:
    url = run_url()
    ddf = dd.from_pandas(frame(80), npartitions=4)
    first = enrich(ddf, sim, url, s3).compute()  # the default scheduler: the cluster
    again = enrich(ddf, sim, url, s3).compute()
    assert sim.stats()["success_by_prompt"] == {f"Say: row {i}": 1 for i in range(80)}
    pd.testing.assert_frame_equal(again, first)

    back = dd.read_parquet(url, storage_options=s3).compute()
    pd.testing.assert_frame_equal(back, first, check_dtype=False)
    fs = s3fs.S3FileSystem(**s3)
    table = pq.read_table(url.removeprefix("s3://"), filesystem=fs)
    assert table.column("ans").to_pylist() == [f"Say: row {i}" for i in range(80)]
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(url, refresh=True))
    assert names[0] == "_dask_llm" and len(names) == 5  # 4 parts, no temporaries


def test_a_read_after_a_resume_sees_every_file_there(process_cluster: Any, sim: Simulator, s3: dict[str, Any]) -> None:
    """s3fs caches directory listings per process, in the filesystem instance
    the user's own reads share: a listing left by the run goes stale as other
    processes write. A resume under another partitioning (which writes and
    takes files away), then a file put there by someone else, and a read of
    the checkpoint on the cluster must see every file: none missed by the
    driver's listing, none refused by a worker's."""
    url = run_url()
    enrich(dd.from_pandas(frame(80), npartitions=4), sim, url, s3).compute()
    out = enrich(dd.from_pandas(frame(100), npartitions=3), sim, url, s3).compute()
    assert sim.stats()["success_by_prompt"] == {f"Say: row {i}": 1 for i in range(100)}
    other = s3fs.S3FileSystem(**s3, skip_instance_cache=True)  # another process, in effect
    extra = out.iloc[:5].set_axis(range(1000, 1005))
    with other.open(f"{url}part-99999-extra.parquet", "wb") as f:
        extra.to_parquet(f)
    for _ in range(3):  # every worker opens files, each with its own cache
        back = dd.read_parquet(url, storage_options=s3).compute()
        assert sorted(back.index) == [*range(100), *range(1000, 1005)]


def test_rows_journaled_on_s3_survive_a_failed_run(start_sim: Callable[..., Simulator], s3: dict[str, Any]) -> None:
    url = run_url()
    ddf = dd.from_pandas(frame(150), npartitions=1)
    flaky = start_sim(mode="echo", fail_rate=0.05, seed=3)
    with dask.config.set(scheduler="threads"), pytest.raises(RowError):
        enrich(ddf, flaky, url, s3, on_error="raise", retry=RetryPolicy(max_attempts=1)).compute()
    before = flaky.stats()["success_by_prompt"]
    assert before

    healthy = start_sim(mode="echo")
    with dask.config.set(scheduler="threads"):
        enrich(ddf, healthy, url, s3, retry_errors=True).compute()
    after = healthy.stats()["success_by_prompt"]
    assert not before.keys() & after.keys()
    assert len(before) + len(after) == 150


def test_missing_bucket_fails_before_any_call(sim: Simulator, s3: dict[str, Any]) -> None:
    url = "s3://no-such-bucket/run/"
    with pytest.raises(CheckpointError, match="not writable") as info:
        enrich(dd.from_pandas(frame(10), npartitions=2), sim, url, s3)
    assert url in str(info.value)
    assert sim.stats()["requests"] == 0
    assert not s3fs.S3FileSystem(**s3).exists("no-such-bucket")  # no bucket created on the way
