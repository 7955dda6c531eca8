"""Quickstart: enrich 1,000 support tickets on a LocalCluster.

There is no API key here, so the model is dask-llm's built-in simulator: an
OpenAI-compatible server answering in about one second, with 2% of requests
failing with a 500 (dask-llm retries them). Point ``Endpoint`` at OpenAI,
Azure or a vLLM/Ollama server instead and nothing else changes.

Run:  python examples/quickstart.py [--rows 1000] [--latency 1.0]
"""

from __future__ import annotations

import argparse
import time

import dask.dataframe as dd
import openai
import pandas as pd
from distributed import Client, LocalCluster

import dask_llm
from dask_llm.simulator import Simulator, SimulatorConfig

PROMPT = "Which cloud service is this ticket about? Answer with one word.\n{title}\n{body}"
SERVICES = ["VM", "bucket", "Postgres", "VPC", "IAM role", "invoice"]


def make_tickets(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticket_id": range(n),
            "title": [f"Problem with my {SERVICES[i % len(SERVICES)]} (#{i})" for i in range(n)],
            "body": [f"Since this morning my {SERVICES[(i * 7) % len(SERVICES)]} fails." for i in range(n)],
        }
    )


def sequential_seconds_per_row(endpoint: dask_llm.Endpoint, tickets: pd.DataFrame, sample: int) -> float:
    """The naive way: a for loop over rows, one call at a time."""
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key)
    start = time.perf_counter()
    for row in tickets.head(sample).itertuples():
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT.format(title=row.title, body=row.body)}],
        )
    return (time.perf_counter() - start) / sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=1.0, help="simulated seconds per call")
    parser.add_argument("--sample", type=int, default=8, help="rows timed in the sequential loop")
    args = parser.parse_args()

    config = SimulatorConfig(latency=args.latency, latency_sd=args.latency / 5, fail_rate=0.02, seed=1)
    with (
        Simulator.subprocess(config) as sim,
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True) as cluster,
        Client(cluster) as client,
    ):
        print(f"simulator: {sim.url}   dashboard: {client.dashboard_link}")
        endpoint = dask_llm.Endpoint(base_url=sim.url, api_key="sk-simulated")
        tickets = make_tickets(args.rows)
        ddf = dd.from_pandas(tickets, npartitions=8)

        out = ddf.llm.enrich(prompt=PROMPT, column="service", model="gpt-4o-mini", endpoint=endpoint, threads=32)
        start = time.perf_counter()
        result = out.compute()
        parallel = time.perf_counter() - start

        per_row = sequential_seconds_per_row(endpoint, tickets, args.sample)

    columns = ["ticket_id", "title", "service", "service_attempts", "service_latency_s"]
    print(result[columns].head(10).to_string(index=False))
    print()
    print(result["service"].value_counts().to_string())
    print()
    errors = int(result["service_error"].notna().sum())
    retried = int((result["service_attempts"] > 1).sum())
    sequential = per_row * len(result)
    print(f"rows: {len(result)}  errors: {errors}  rows that needed a retry: {retried}")
    print(
        f"tokens: {int(result['service_prompt_tokens'].sum())} in, {int(result['service_completion_tokens'].sum())} out"
    )
    print(f"sequential loop: {per_row:.2f} s/row measured on {args.sample} rows -> {sequential:,.0f} s for all")
    print(f"dask-llm:        {parallel:,.1f} s  ({sequential / parallel:,.0f}x faster)")


if __name__ == "__main__":
    main()
