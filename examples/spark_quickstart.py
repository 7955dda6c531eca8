"""Enrich a Spark DataFrame: the same enrichment, budget and checkpoint as on Dask.

    python examples/spark_quickstart.py                 # against the built-in simulator
    python examples/spark_quickstart.py --base-url URL --model M   # against a real endpoint (OPENAI_API_KEY)

Needs ``pip install 'dask-llm[spark]'`` and Java 17. The Python workers must
run this interpreter: PYSPARK_PYTHON is set below, before the session starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from pyspark.sql import SparkSession

import dask_llm
from dask_llm.simulator import Simulator, SimulatorConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: the built-in simulator)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    spark = SparkSession.builder.master(args.master).config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    tickets = spark.createDataFrame(
        [(i, f"Ticket {i}: my VM does not boot after the update") for i in range(args.rows)], "id long, text string"
    ).repartition(4)

    with Simulator(SimulatorConfig(latency=0.2)) as sim:
        endpoint = dask_llm.Endpoint(base_url=args.base_url or sim.url, api_key=None if args.base_url else "sim")
        checkpoint = tempfile.mkdtemp(prefix="dask-llm-spark-")
        out = dask_llm.enrich(
            tickets,
            "Which cloud service is this ticket about? Answer with one word.\n{text}",
            column="service",
            model=args.model,
            endpoint=endpoint,
            threads=16,
            budget=dask_llm.Budget(rpm=3000),  # one budget across every executor
            checkpoint=checkpoint,  # resumable: a re-run calls only what is missing
        )
        output = os.path.join(tempfile.mkdtemp(prefix="dask-llm-spark-out-"), "labeled")
        start = time.perf_counter()
        out.write.parquet(output)  # the action: nothing was called before it
        print(f"enriched {args.rows} rows in {time.perf_counter() - start:.1f} s into {output}")
        out.groupBy("service").count().orderBy("service").show()  # a second action: restored, not paid again
    spark.stop()


if __name__ == "__main__":
    main()
