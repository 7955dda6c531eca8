"""Random sequences of runs on one checkpoint, as a user's notebook makes them.

Each step changes the input (rows appended, prompt texts edited, a column
the prompt does not read edited, a shuffle, or nothing), picks another
partitioning, sometimes peeks first (``tail()``, one partition), and then
computes the whole result. After every step: the calls made are exactly the
requests not answered before, the result is right, and
``dd.read_parquet(checkpoint)`` holds each input row once, as it is now.

The sequences come from fixed seeds, so a failure is reproducible; the
distributed case runs partitions in two worker processes at once, whose
ledger indexes see each other's files only through the storage.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

import dask_llm
from dask_llm.simulator import Simulator

from .conftest import endpoint_for

OPS = ("same", "append", "edit", "other-column", "shuffle")


def play(seed: int, sim: Simulator, ckpt: Path, schedulers: tuple[str, ...]) -> None:
    rng = random.Random(seed)
    texts = {i: f"row {i}" for i in range(rng.choice([30, 61]))}
    extra: dict[int, int] = {}
    answered: set[str] = set()
    steps: list[tuple[Any, ...]] = []
    for step in range(6):
        op = rng.choice(OPS)
        if op == "append":
            start = max(texts) + 1
            texts.update({i: f"row {i}" for i in range(start, start + rng.randint(1, 15))})
        elif op == "edit":
            for i in rng.sample(sorted(texts), 3):
                texts[i] += " edited"
        elif op == "other-column":
            for i in rng.sample(sorted(texts), 5):
                extra[i] = extra.get(i, 0) + 1
        df = pd.DataFrame(
            {"text": list(texts.values()), "n": list(texts), "x": [extra.get(i, 0) for i in texts]},
            index=list(texts),
        )
        if op == "shuffle":
            df = df.sample(frac=1, random_state=seed * 10 + step)
        parts, scheduler, peek = rng.choice([1, 2, 3, 5, 8]), rng.choice(schedulers), rng.random() < 0.3
        steps.append((op, parts, scheduler, peek))
        before = sim.stats()["requests"]
        local = dask.config.set(scheduler=scheduler) if scheduler != "distributed" else contextlib.nullcontext()
        with local:
            out = dask_llm.enrich(dd.from_pandas(df, npartitions=parts, sort=op != "shuffle"), "S: {text}", "ans",
                                  "m", endpoint=endpoint_for(sim), checkpoint=str(ckpt))  # fmt: skip
            if peek:
                out.tail(3)
                out.partitions[0].compute()
            result = out.compute()
        calls = sim.stats()["requests"] - before
        wanted = set(df["text"]) - answered
        answered |= wanted
        case = f"seed {seed}, steps {steps}"
        assert calls == len(wanted), f"calls {calls} for {len(wanted)} new requests: {case}"
        assert sorted(result["n"]) == sorted(df["n"]) and (result["ans"] == "S: " + result["text"]).all(), case
        back = dd.read_parquet(str(ckpt)).compute().sort_values("n")
        assert back["n"].tolist() == sorted(df["n"]), f"each row once: {case}"
        expected = df.sort_values("n")
        assert back["text"].tolist() == expected["text"].tolist(), f"the latest texts: {case}"
        assert back["x"].tolist() == expected["x"].tolist(), f"the latest other column: {case}"
        assert (back["ans"] == "S: " + back["text"]).all(), case


@pytest.mark.parametrize("seed", range(8))
def test_a_sequence_of_runs_on_the_local_schedulers(start_sim: Any, tmp_path: Path, seed: int) -> None:
    play(seed, start_sim(mode="echo"), tmp_path / "ckpt", ("threads", "sync"))


@pytest.mark.parametrize("seed", [11, 3, 7])
def test_a_sequence_of_runs_on_worker_processes(
    start_sim: Any, tmp_path: Path, process_cluster: Any, seed: int
) -> None:
    play(seed, start_sim(mode="echo"), tmp_path / "ckpt", ("distributed",))
