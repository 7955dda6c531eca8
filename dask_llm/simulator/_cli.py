"""Command line of the simulator, shared with the library's ``dask-llm simulate``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from ._config import FAIL_STATUSES, RATE_LIMIT_STYLES, SimulatorConfig
from ._server import SimulatorServer

__all__ = ["LISTENING_PREFIX", "add_arguments", "config_from_args", "config_to_argv", "main", "run"]

#: Start of the line printed once the server is bound; the URL follows it.
LISTENING_PREFIX = "dask-llm simulator listening on "


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to `parser`: ``--host``, ``--port`` and one flag per config field.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser (or subcommand parser) to extend.
    """
    defaults = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind, 0 for a free one (default: %(default)s)")
    parser.add_argument("--mode", choices=("label", "echo"), default=defaults.mode, help="answer a label or echo")
    parser.add_argument("--labels", nargs="+", default=list(defaults.labels), help="labels answered in label mode")
    parser.add_argument("--latency", type=float, default=defaults.latency, help="mean latency in seconds")
    parser.add_argument(
        "--latency-sd", type=float, default=defaults.latency_sd, help="latency standard deviation (0: constant)"
    )
    parser.add_argument("--rpm", type=int, default=defaults.rpm, help="requests per minute limit")
    parser.add_argument("--tpm", type=int, default=defaults.tpm, help="tokens per minute limit")
    parser.add_argument(
        "--burst-seconds", type=float, default=defaults.burst_seconds, help="rate-limit bucket capacity in seconds"
    )
    parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate, help="share of server errors")
    parser.add_argument(
        "--fail-status", type=int, choices=FAIL_STATUSES, default=defaults.fail_status, help="status of server errors"
    )
    parser.add_argument(
        "--rate-limit-rate", type=float, default=defaults.rate_limit_rate, help="share of spurious 429s"
    )
    parser.add_argument("--hang-rate", type=float, default=defaults.hang_rate, help="share of hanging requests")
    parser.add_argument("--hang-seconds", type=float, default=defaults.hang_seconds, help="duration of a hang")
    parser.add_argument(
        "--malformed-rate", type=float, default=defaults.malformed_rate, help="share of truncated JSON bodies"
    )
    parser.add_argument(
        "--invalid-json-rate",
        type=float,
        default=defaults.invalid_json_rate,
        help="share of JSON-format answers cut in half (invalid JSON content)",
    )
    parser.add_argument(
        "--rate-limit-style",
        choices=RATE_LIMIT_STYLES,
        default=defaults.rate_limit_style,
        help="how every 429 hints when to retry (default: %(default)s)",
    )
    parser.add_argument("--always-429", action="store_true", help="answer every chat request 429 and never admit it")
    parser.add_argument(
        "--drip-rate", type=float, default=defaults.drip_rate, help="share of bodies trickled one byte at a time"
    )
    parser.add_argument(
        "--drip-interval", type=float, default=defaults.drip_interval, help="seconds between drip-fed bytes"
    )
    parser.add_argument("--html-rate", type=float, default=defaults.html_rate, help="share of 200 text/html pages")
    parser.add_argument("--empty-rate", type=float, default=defaults.empty_rate, help="share of empty 200 bodies")
    parser.add_argument(
        "--empty-object-rate", type=float, default=defaults.empty_object_rate, help="share of 200 bodies '{}'"
    )
    parser.add_argument("--huge-rate", type=float, default=defaults.huge_rate, help="share of huge 200 bodies")
    parser.add_argument("--huge-bytes", type=int, default=defaults.huge_bytes, help="length of a huge body")
    parser.add_argument("--api-key", default=defaults.api_key, help="API key that requests must carry")
    parser.add_argument("--models", nargs="+", default=list(defaults.models), help="models served (default: any)")
    parser.add_argument(
        "--max-context-tokens",
        type=_optional_int,
        default=defaults.max_context_tokens,
        help="answer 400 context_length_exceeded to longer prompts",
    )
    parser.add_argument(
        "--batch-turnaround",
        type=float,
        default=defaults.batch_turnaround,
        help="seconds from a batch's creation to its completion",
    )
    parser.add_argument(
        "--batch-line-fail-rate",
        type=float,
        default=defaults.batch_line_fail_rate,
        help="share of batch lines answered with a 500 error line",
    )
    parser.add_argument(
        "--batch-expire-after",
        type=float,
        default=defaults.batch_expire_after,
        help="seconds after which an unfinished batch expires",
    )
    parser.add_argument(
        "--batch-enqueued-token-limit",
        type=_optional_int,
        default=defaults.batch_enqueued_token_limit,
        help="most prompt tokens per model in batches validating or in progress",
    )
    parser.add_argument(
        "--seed", type=_optional_int, default=defaults.seed, help="seed of the random draws, 'none' for entropy"
    )
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin closes, so a child simulator dies with its parent",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the config from parsed arguments.

    Raises
    ------
    ValueError
        If a value is out of range.
    """
    return SimulatorConfig(
        mode=args.mode,
        labels=tuple(args.labels),
        latency=args.latency,
        latency_sd=args.latency_sd,
        rpm=args.rpm,
        tpm=args.tpm,
        burst_seconds=args.burst_seconds,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        rate_limit_rate=args.rate_limit_rate,
        hang_rate=args.hang_rate,
        hang_seconds=args.hang_seconds,
        malformed_rate=args.malformed_rate,
        invalid_json_rate=args.invalid_json_rate,
        rate_limit_style=args.rate_limit_style,
        always_429=args.always_429,
        drip_rate=args.drip_rate,
        drip_interval=args.drip_interval,
        html_rate=args.html_rate,
        empty_rate=args.empty_rate,
        empty_object_rate=args.empty_object_rate,
        huge_rate=args.huge_rate,
        huge_bytes=args.huge_bytes,
        api_key=args.api_key,
        models=tuple(args.models),
        max_context_tokens=args.max_context_tokens,
        batch_turnaround=args.batch_turnaround,
        batch_line_fail_rate=args.batch_line_fail_rate,
        batch_expire_after=args.batch_expire_after,
        batch_enqueued_token_limit=args.batch_enqueued_token_limit,
        seed=args.seed,
    )


def config_to_argv(config: SimulatorConfig) -> list[str]:
    """Return the command-line flags that reproduce `config`; the inverse of :func:`config_from_args`."""
    argv = [
        "--mode", config.mode,
        "--labels", *config.labels,
        "--latency", repr(config.latency),
        "--latency-sd", repr(config.latency_sd),
        "--burst-seconds", repr(config.burst_seconds),
        "--fail-rate", repr(config.fail_rate),
        "--fail-status", str(config.fail_status),
        "--rate-limit-rate", repr(config.rate_limit_rate),
        "--hang-rate", repr(config.hang_rate),
        "--hang-seconds", repr(config.hang_seconds),
        "--malformed-rate", repr(config.malformed_rate),
        "--invalid-json-rate", repr(config.invalid_json_rate),
        "--rate-limit-style", config.rate_limit_style,
        "--drip-rate", repr(config.drip_rate),
        "--drip-interval", repr(config.drip_interval),
        "--html-rate", repr(config.html_rate),
        "--empty-rate", repr(config.empty_rate),
        "--empty-object-rate", repr(config.empty_object_rate),
        "--huge-rate", repr(config.huge_rate),
        "--huge-bytes", str(config.huge_bytes),
        "--batch-turnaround", repr(config.batch_turnaround),
        "--batch-line-fail-rate", repr(config.batch_line_fail_rate),
        "--batch-expire-after", repr(config.batch_expire_after),
        "--seed", str(config.seed),
    ]  # fmt: skip
    if config.always_429:
        argv.append("--always-429")
    if config.rpm is not None:
        argv += ["--rpm", str(config.rpm)]
    if config.tpm is not None:
        argv += ["--tpm", str(config.tpm)]
    if config.api_key is not None:
        argv += ["--api-key", config.api_key]
    if config.models:
        argv += ["--models", *config.models]
    if config.max_context_tokens is not None:
        argv += ["--max-context-tokens", str(config.max_context_tokens)]
    if config.batch_enqueued_token_limit is not None:
        argv += ["--batch-enqueued-token-limit", str(config.batch_enqueued_token_limit)]
    return argv


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM.

    Prints ``dask-llm simulator listening on http://HOST:PORT/v1`` once bound
    and ``dask-llm simulator stopped`` on the way out.

    Parameters
    ----------
    args : argparse.Namespace
        Arguments parsed by a parser extended with :func:`add_arguments`.

    Returns
    -------
    int
        Exit status: 0 after a signal, 1 if the address cannot be bound, 2 for an invalid configuration.
    """
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"dask-llm simulator: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config, args.host, args.port, args.exit_with_stdin))
    except KeyboardInterrupt:
        # Only if Ctrl-C lands before the signal handlers are installed.
        print("dask-llm simulator stopped", flush=True)
        return 0


async def _serve(config: SimulatorConfig, host: str, port: int, exit_with_stdin: bool) -> int:
    server = SimulatorServer(config, host, port)
    try:
        await server.start()
    except OSError as exc:
        print(f"dask-llm simulator: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if exit_with_stdin:
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)

    print(f"{LISTENING_PREFIX}http://{host}:{server.port}/v1", flush=True)
    await stop.wait()
    await server.stop()
    print("dask-llm simulator stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dask_llm.simulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m dask_llm.simulator",
        description="OpenAI-compatible HTTP simulator for tests, demos and benchmarks.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
