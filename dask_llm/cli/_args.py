"""The options of each ``dask-llm`` command, apart from what the commands do.

Kept free of heavy imports: ``dask-llm --help`` builds every parser, and
must not load pandas, pyarrow, dask or openai to print a usage text.
"""

from __future__ import annotations

import argparse

__all__ = ["add_bench_arguments", "add_run_arguments", "add_status_arguments", "parse_scheduler"]

_NAMED = ("sync", "threads", "local")


def parse_scheduler(text: str) -> str:
    """argparse type of ``--scheduler``: a name, or a scheduler address."""
    if text in _NAMED or "://" in text:
        return text
    raise ValueError(f"expected sync, threads, local or a scheduler address like tcp://HOST:8786, got {text!r}")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``dask-llm run``."""
    parser.add_argument("input", metavar="INPUT", help="Parquet, CSV or JSON Lines path, glob or fsspec URL")
    parser.add_argument("output", metavar="OUTPUT", help="*.csv or *.jsonl file, or a Parquet folder (path or URL)")
    what = parser.add_argument_group("what to ask")
    what.add_argument("--prompt", required=True, help='user message template, e.g. "Classify: {text}"')
    what.add_argument("--column", required=True, help="name of the new column")
    what.add_argument("--model", required=True, help="model name (Azure: deployment name)")
    what.add_argument("--system", help="system message template")
    what.add_argument("--temperature", type=float)
    what.add_argument("--max-tokens", type=int)
    where = parser.add_argument_group("endpoint")
    where.add_argument("--base-url", help="OpenAI-compatible API root (default: OPENAI_BASE_URL, else OpenAI)")
    where.add_argument("--api-key", help="API key (default: OPENAI_API_KEY; prefer the variable)")
    where.add_argument(
        "--api-key-env", metavar="NAME",
        help="read the key from this environment variable in every worker process (no secret in the task graph)",
    )  # fmt: skip
    where.add_argument("--azure-endpoint", help="https://RESOURCE.openai.azure.com (selects Azure)")
    where.add_argument("--api-version", help="Azure API version")
    where.add_argument(
        "--timeout", type=float, default=120.0,
        help="seconds one attempt may take in all, the whole answer read (default: %(default)s)",
    )  # fmt: skip
    how = parser.add_argument_group("how fast")
    how.add_argument("--threads", type=int, default=16, help="concurrent calls per partition (default: %(default)s)")
    how.add_argument(
        "--max-attempts", type=int, default=6, help="calls per row at most, retries included (default: %(default)s)"
    )
    how.add_argument("--max-concurrency", type=int, help="most calls in flight across the cluster")
    how.add_argument("--rpm", type=float, help="requests per minute across the cluster")
    how.add_argument("--tpm", type=float, help="tokens per minute across the cluster")
    how.add_argument(
        "--no-budget", action="store_true",
        help="without --rpm/--tpm/--max-concurrency, call without the default adaptive budget",
    )  # fmt: skip
    how.add_argument(
        "--scheduler", type=parse_scheduler, default="threads",
        help="sync, threads, local (a LocalCluster) or tcp://HOST:PORT (default: %(default)s)",
    )  # fmt: skip
    how.add_argument(
        "--workers", type=int, default=4,
        help="partitions at once: threads (threads) or worker processes (local) (default: %(default)s)",
    )  # fmt: skip
    how.add_argument(
        "--partitions", type=int,
        help="split INPUT into this many partitions (default: enough for every worker, and at most "
        "8 calls per thread each)",
    )  # fmt: skip
    how.add_argument(
        "--engine", choices=("dask", "spark"), default="dask",
        help="dask (default) or spark (a Spark session; pip install 'dask-llm[spark]')",
    )  # fmt: skip
    how.add_argument("--master", help="with --engine spark: the Spark master, e.g. local[4] (default: local[*])")
    batch = parser.add_argument_group("Batch API (half the price, answers within 24 h)")
    batch.add_argument(
        "--batch", action="store_true",
        help="send the rows as OpenAI / Azure OpenAI batches; Ctrl+C leaves them running, "
        "and the same command collects them later",
    )  # fmt: skip
    batch.add_argument(
        "--batch-poll-interval", type=float, default=30.0, metavar="SECONDS",
        help="with --batch: seconds between two looks at a running batch (default: %(default)s)",
    )  # fmt: skip
    batch.add_argument("--cancel", action="store_true", help="with --batch: cancel this run's batches and exit")
    keep = parser.add_argument_group("keeping work")
    keep.add_argument("--checkpoint", help="folder or URL that makes the run resumable")
    keep.add_argument("--retry-errors", action="store_true", help="with --checkpoint: call failed rows again")
    keep.add_argument("--overwrite", action="store_true", help="with --checkpoint: discard the run stored there")
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="fsspec option for INPUT, OUTPUT and --checkpoint; VALUE is JSON or text; "
        "dotted keys nest (client_kwargs.endpoint_url=http://...)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-interval", type=float,
        help="seconds between progress updates (default: 0.5 on a terminal, 10 otherwise)",
    )  # fmt: skip


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the --checkpoint folder or URL of a run")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for CHECKPOINT, as for dask-llm run")  # fmt: skip


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the --checkpoint folder or URL of a run")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (path or URL)")
    parser.add_argument("--png", metavar="DIR", help="write one PNG per chart into DIR (needs matplotlib)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for CHECKPOINT and the files written, as for dask-llm run")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of text")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="OpenAI-compatible API root (default: OPENAI_BASE_URL, else OpenAI)")
    parser.add_argument("--api-key", help="API key (default: OPENAI_API_KEY)")
    parser.add_argument("--azure-endpoint", help="https://RESOURCE.openai.azure.com (selects Azure)")
    parser.add_argument("--api-version", help="Azure API version")
    parser.add_argument("--model", required=True, help="model name (Azure: deployment name)")
    parser.add_argument("--prompt", default="Answer with one word: which color is the sky?", help="prompt sent")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each call (default: %(default)s)")
    parser.add_argument("--max-concurrency", type=int, default=256, help="highest level tried (default: %(default)s)")
    parser.add_argument("--max-calls", type=int, default=2000, help="calls in all, at most (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time in all, at most (default: %(default)s)")
    parser.add_argument(
        "--min-growth", type=float, default=0.15,
        help="stop when doubling concurrency adds less than this share of throughput (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default: %(default)s)")
    parser.add_argument("--plot", metavar="PNG", help="write throughput and latency plots to this file")
