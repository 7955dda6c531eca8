"""Structured output: a Pydantic model in, typed columns out.

    export OPENAI_API_KEY=sk-...
    python examples/structured_output.py

The model is asked for JSON that fits ``Triage``; every answer is validated
(an answer that does not fit is retried, then reported in
``triage_error``), and each field becomes a typed column: ``service`` a
category, ``severity`` an integer, ``urgent`` a boolean. ``--base-url``
points at any OpenAI-compatible server that supports ``response_format``
(vLLM, recent Ollama, the simulator: ``dask-llm simulate``).
"""

from __future__ import annotations

import argparse
import time
from typing import Literal

import dask.dataframe as dd
import pandas as pd
import pydantic

import dask_llm


class Triage(pydantic.BaseModel):
    service: Literal["compute", "storage", "database", "network", "billing"]
    severity: int = pydantic.Field(ge=1, le=5, description="1 = cosmetic, 5 = outage")
    urgent: bool


TICKETS = [
    "Our production Postgres is down since 3am, all writes fail",
    "Invoice for March lists two charges for the same VM",
    "Uploads to the bucket are slow from Europe",
    "Can you rename our VPC? Not urgent",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="default: OPENAI_BASE_URL, else OpenAI")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()

    tickets = pd.DataFrame({"ticket": [f"#{i}: {TICKETS[i % len(TICKETS)]}" for i in range(args.rows)]})
    start = time.perf_counter()
    out = dask_llm.enrich(
        dd.from_pandas(tickets, npartitions=2),
        prompt="Triage this support ticket.\n{ticket}",
        column="triage", model=args.model, output=Triage,
        endpoint=dask_llm.Endpoint(base_url=args.base_url), threads=8,
    ).compute()  # fmt: skip
    elapsed = time.perf_counter() - start

    print(out[["ticket", "service", "severity", "urgent"]].head(8).to_string(index=False))
    print(out[["service", "severity", "urgent"]].dtypes.to_string())
    print(dask_llm.summarize(out, "triage", model=args.model, wall_time=elapsed))


if __name__ == "__main__":
    main()
