"""``dask-llm run --engine spark``: the same run on a Spark session.

INPUT is read by Spark (``spark.read``), enriched through ``mapInArrow``
with the coordinator in this process (see ``dask_llm._engines._spark``), and
written by Spark into a hidden folder beside OUTPUT; a Parquet OUTPUT is
that folder renamed, a CSV or JSON Lines OUTPUT its part files joined. The
progress line counts what every executor reports through the coordinator;
the summary reads the output's metadata columns back.

Paths are what the session's Hadoop file systems accept (local paths here;
``s3a://`` and the like need the cluster's own Hadoop jars).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ._io import auto_partitions

__all__ = ["run_spark"]


def run_spark(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    """Run the enrichment described by ``args`` on Spark; ``kwargs`` are ``enrich()``'s."""
    import pandas as pd

    from .._api import enrich
    from .._cost._summary import RunSummary
    from .._engines._spark import driver_coordinator
    from .._run._progress import Tally, collect
    from ._io import format_of, is_json_array, output_format
    from ._progress_line import ProgressPrinter
    from ._run import (
        _print_interrupted,
        _save_run_info,
        cost_function,
        interrupted_status,
        print_summary,
        summarize_run,
    )

    err = sys.stderr
    fmt_in, fmt_out = format_of(args.input), output_format(args.output)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers must run this interpreter
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError("--engine spark needs pyspark: pip install 'dask-llm[spark]' (and Java 17)") from None
    spark = (
        SparkSession.builder.master(args.master or "local[*]")
        .appName("dask-llm run")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    if not Path(args.input.rstrip("/").split("*")[0] or ".").exists() and "://" not in args.input:
        raise FileNotFoundError(f"input {args.input!r} does not exist")
    reader = spark.read
    if fmt_in == "csv":
        sdf = reader.csv(args.input, header=True, inferSchema=True)
    elif fmt_in == "jsonl":
        sdf = reader.json(args.input, multiLine=is_json_array(args.input))
    else:
        sdf = reader.parquet(args.input)
    total = sdf.count()
    parallel = spark.sparkContext.defaultParallelism
    partitions = args.partitions or auto_partitions(total, parallel, args.threads)
    sdf = sdf.repartition(partitions)
    out = enrich(sdf, args.prompt, args.column, args.model, **kwargs)
    if args.checkpoint:
        _save_run_info(args, kwargs.get("storage_options") or {}, total, partitions)
    target = args.output.rstrip("/")
    parts = str(Path(target).parent / f".{Path(target).name}.parts-{uuid.uuid4().hex[:12]}")
    err.write(
        f"dask-llm run: {total:,} rows in {partitions} partitions, model {args.model} at "
        f"{kwargs['endpoint'].display_url}; Spark {spark.sparkContext.master} "
        f"({parallel} tasks at once)\n"
    )
    err.flush()
    channel = kwargs["progress"]
    tally = Tally(total)
    tty = err.isatty()
    interval = args.progress_interval or (0.5 if tty else 10.0)
    printer = ProgressPrinter(tally, err, tty, interval, cost_function(args.model))
    from distributed import Client

    start = time.monotonic()
    with Client(driver_coordinator(spark), set_as_default=False) as client, collect(channel, tally, client):
        try:
            with printer:
                writer = out.write.mode("overwrite")
                if fmt_out == "csv":
                    writer.csv(parts, header=False)
                elif fmt_out == "jsonl":
                    writer.json(parts)
                else:
                    writer.parquet(parts)
                wall = time.monotonic() - start
                deadline = time.monotonic() + 2.0
                while tally.snapshot().done < total and time.monotonic() < deadline:
                    time.sleep(0.05)
        except KeyboardInterrupt:
            _stop_spark(spark, channel.topic)
            shutil.rmtree(parts, ignore_errors=True)
            _print_interrupted(args, tally.snapshot(), err)
            return interrupted_status()
        except BaseException:
            shutil.rmtree(parts, ignore_errors=True)
            raise
    _finish(parts, target, fmt_out, out.columns)
    names = [f"{args.column}{s}" for s in ("_error", "_attempts", "_prompt_tokens", "_completion_tokens",
                                          "_rate_limited")]  # fmt: skip
    if fmt_out == "csv":
        frame = pd.read_csv(target, usecols=names)
    elif fmt_out == "jsonl":
        frame = pd.read_json(target, lines=True)[names]
    else:
        frame = pd.read_parquet(target, columns=names)
    summary = summarize_run(RunSummary.from_frame(frame, args.column, model=args.model), wall, tally.snapshot())
    print_summary(summary, tally.snapshot(), args.output, sys.stdout)
    spark.stop()
    if summary.rows_failed:
        err.write(f"dask-llm run: {summary.rows_failed:,} of {summary.rows:,} rows failed\n")
        return 1
    return 0


def _finish(parts: str, target: str, fmt: str, columns: list[str]) -> None:
    if fmt == "parquet":
        if Path(target).exists():
            shutil.rmtree(target)
        os.replace(parts, target)
        for name in Path(target).iterdir():
            if name.name.startswith(("_SUCCESS", ".")) and name.is_file():
                name.unlink()
        return
    files = sorted(p for p in Path(parts).iterdir() if p.name.startswith("part-"))
    with open(target, "wb") as out:
        if fmt == "csv":
            import pandas as pd

            out.write(pd.DataFrame(columns=columns).to_csv(index=False).encode())
        for part in files:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    shutil.rmtree(parts, ignore_errors=True)


def _stop_spark(spark: Any, topic: str) -> None:
    """Ctrl+C: ask every executor's pools to stop (calls in flight cut short,
    finished rows journaled), then cancel the jobs."""
    from .._coordination._protocol import STOP_TOPIC
    from .._coordination._server import _servers

    for server in list(_servers.values()):
        server.log_event(STOP_TOPIC, {"topic": topic})
    time.sleep(1.5)  # the pools stop within a second; then Spark may kill the tasks
    spark.sparkContext.cancelAllJobs()
