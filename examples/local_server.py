"""A local model server: vLLM, Ollama, llama.cpp or LM Studio, no API key.

    ollama serve & ollama pull llama3.2
    python examples/local_server.py --base-url http://localhost:11434/v1 --model llama3.2

    vllm serve Qwen/Qwen2.5-1.5B-Instruct --port 8000
    python examples/local_server.py --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-1.5B-Instruct

A local server is limited by its GPU, not by a rate limit: find how many
calls in flight it takes before throughput stops growing with
``dask-llm bench --base-url URL --model M``, then use about that many
(here ``--threads``). From the shell:

    dask-llm run reviews.csv scored.csv --prompt "Sentiment of: {review}" --column sentiment \
        --model llama3.2 --base-url http://localhost:11434/v1 --max-concurrency 8
"""

from __future__ import annotations

import argparse

import dask.dataframe as dd
import pandas as pd

import dask_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://localhost:11434/v1", help="default: Ollama's")
    parser.add_argument("--model", default="llama3.2")
    parser.add_argument("--threads", type=int, default=8, help="calls in flight per partition")
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()

    reviews = pd.DataFrame({"review": [f"Order {i}: delivery took {i % 9 + 1} days, the box was "
                                       f"{'fine' if i % 3 else 'crushed'}." for i in range(args.rows)]})  # fmt: skip
    out = dask_llm.enrich(
        dd.from_pandas(reviews, npartitions=2),
        prompt="Is this review positive, negative or neutral? One word.\n{review}",
        column="sentiment", model=args.model,
        endpoint=dask_llm.Endpoint(base_url=args.base_url),  # no api_key: local servers need none
        threads=args.threads, temperature=0.0, max_tokens=5,
    ).compute()  # fmt: skip
    print(out[["review", "sentiment"]].head().to_string(index=False))
    print(f"rows: {len(out)}  errors: {int(out['sentiment_error'].notna().sum())}")


if __name__ == "__main__":
    main()
