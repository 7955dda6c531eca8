"""S3 to S3: enrich a Parquet dataset in a bucket, resumably, and write the
result next to it. Nothing passes through this machine's disk.

    python examples/s3_to_s3.py --input s3://my-bucket/tickets/ \
        --output s3://my-bucket/tickets_enriched/ --checkpoint s3://my-bucket/runs/tickets/

Credentials come from the usual AWS places (environment, ~/.aws, instance
role) on every machine. For an S3-compatible store (MinIO, moto, R2) pass
``--s3-endpoint-url``. The model endpoint is OpenAI by default
(``OPENAI_API_KEY``); ``--base-url`` points it elsewhere.

``--make-input N`` first writes N sample tickets to ``--input`` (creating
the bucket if needed), so the example can run against an empty store. Run it
again and it resumes: it says how many rows the checkpoint already holds,
and calls only the others.

To try it on this machine, with no AWS account and no API key: moto's S3
server and the built-in simulator, each in its own terminal (moto accepts
any credentials, but botocore refuses to sign without some):

    pip install 'dask-llm[s3]' 'moto[server]'
    moto_server -H 127.0.0.1 -p 5000                      # terminal 1
    dask-llm simulate --port 8000                         # terminal 2
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
    python examples/s3_to_s3.py --input s3://demo/tickets/ --output s3://demo/enriched/ \
        --checkpoint s3://demo/runs/tickets/ --s3-endpoint-url http://127.0.0.1:5000 \
        --base-url http://127.0.0.1:8000/v1 --make-input 500

The same run from the shell:

    dask-llm run s3://my-bucket/tickets/ s3://my-bucket/tickets_enriched/ \
        --prompt "Which cloud service is this ticket about? {title}" --column service \
        --model gpt-4o-mini --checkpoint s3://my-bucket/runs/tickets/
"""

from __future__ import annotations

import argparse
from typing import Any

import dask.dataframe as dd
import fsspec
import pandas as pd

import dask_llm

PROMPT = "Which cloud service is this ticket about? Answer with one word.\n{title}"
SERVICES = ["VM", "bucket", "Postgres", "VPC", "IAM role", "invoice"]


def make_tickets(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"ticket_id": range(n), "title": [f"Problem with my {SERVICES[i % 6]} (#{i})" for i in range(n)]}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="s3://bucket/prefix/ of a Parquet dataset")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix/ to write")
    parser.add_argument("--checkpoint", required=True, help="s3://bucket/prefix/ that makes the run resumable")
    parser.add_argument("--s3-endpoint-url", help="an S3-compatible store instead of AWS")
    parser.add_argument("--base-url", help="model endpoint (default: OPENAI_BASE_URL, else OpenAI)")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--make-input", type=int, metavar="N", help="first write N sample tickets to --input")
    args = parser.parse_args()

    # The same options reach the workers: each opens its own S3 connection.
    storage: dict[str, Any] = {}
    if args.s3_endpoint_url:
        storage["client_kwargs"] = {"endpoint_url": args.s3_endpoint_url}
    if args.make_input:
        fs, path = fsspec.core.url_to_fs(args.input, **storage)
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        dd.from_pandas(make_tickets(args.make_input), npartitions=4).to_parquet(
            args.input, storage_options=storage, write_index=False
        )

    # The checkpoint is a Parquet dataset of the rows answered so far.
    fs, path = fsspec.core.url_to_fs(args.checkpoint, **storage)
    if fs.glob(f"{path.rstrip('/')}/part-*.parquet"):
        done = len(dd.read_parquet(args.checkpoint, storage_options=storage))
        print(f"resuming: the checkpoint holds {done:,} answered rows; they are not called again")

    tickets = dd.read_parquet(args.input, storage_options=storage)
    out = dask_llm.enrich(
        tickets, prompt=PROMPT, column="service", model=args.model,
        endpoint=dask_llm.Endpoint(base_url=args.base_url), threads=16,
        # Finished partitions and rows go to S3 as they come: rerun the same
        # command after a crash and only the missing rows are called.
        checkpoint=args.checkpoint, storage_options=storage,
    )  # fmt: skip
    out.to_parquet(args.output, storage_options=storage, write_index=False)

    back = dd.read_parquet(args.output, storage_options=storage)
    errors = int(back["service_error"].count().compute())  # non-null: failed rows
    print(f"wrote {len(back):,} rows to {args.output}  errors: {errors}")


if __name__ == "__main__":
    main()
