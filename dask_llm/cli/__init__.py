"""The ``dask-llm`` command.

::

    dask-llm run INPUT OUTPUT --prompt ... --column ... --model ...   enrich a file
    dask-llm status CHECKPOINT                                        what a checkpoint holds
    dask-llm report CHECKPOINT [--html FILE] [--png DIR]              what a run did: charts, figures
    dask-llm simulate [--port 8000 ...]                               the built-in simulator
    dask-llm bench --base-url URL --model M                           how much concurrency pays

Exit status: 0 success; 1 rows failed (``run``) or an unexpected error;
2 a bad argument, path, template or credential, reported in one line
(``--verbose`` adds the traceback); 130 interrupted by Ctrl+C.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from .._errors import DaskLLMError, vocabulary
from ..simulator import _cli as simulator_cli
from ._args import add_bench_arguments, add_report_arguments, add_run_arguments, add_status_arguments

__all__ = ["build_parser", "main"]

#: Errors that mean "the user asked for something that cannot work":
#: one line and exit 2, no traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    DaskLLMError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
    ImportError,
    ConnectionError,
)


class _Parser(argparse.ArgumentParser):
    """No abbreviated options (``--api-ke`` would otherwise be ``--api-key``
    and escape every rule about secrets), and secrets masked in the usage
    errors argparse prints."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        super().error(mask_secrets(message, _argv))


def mask_secrets(text: str, argv: Sequence[str]) -> str:
    """``text`` with every value in ``argv`` that looks secret replaced by ``***``:
    the word after an option named like a key or secret, the value of a
    ``KEY=VALUE`` with such a key, and anything shaped like an API key."""
    secrets = []
    words = list(argv)
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if word.startswith("-") and _secret_name(name):
            if eq:
                secrets.append(value)
            elif i + 1 < len(words):
                secrets.append(words[i + 1])
        elif eq and _secret_name(name.rsplit(".", 1)[-1]):
            secrets.append(value)
        elif word.startswith(("sk-", "sk_")) and len(word) > 8:
            secrets.append(word)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _secret_name(name: str) -> bool:
    return any(w in name.lower() for w in ("key", "secret", "token", "password", "credential"))


def _lazy(module: str, name: str) -> Any:
    """A command's handler, imported only when that command runs."""

    def handler(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module, __name__), name)(args))

    return handler


#: The words being parsed, for masking them in errors.
_argv: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and cluster logs")
    parser = _Parser(prog="dask-llm", description="Enrich large dataframes with LLM output.", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run", parents=[common], help="enrich a Parquet, CSV or JSON Lines file",
        description="Add a column of LLM answers to every row of INPUT and write OUTPUT.",
    )  # fmt: skip
    add_run_arguments(run)
    run.set_defaults(handler=_lazy("._run", "run"), parser=run)

    status = commands.add_parser(
        "status", parents=[common], help="show what a checkpoint holds",
        description="Partitions and rows done, errors, tokens and cost so far in a checkpoint.",
    )  # fmt: skip
    add_status_arguments(status)
    status.set_defaults(handler=_lazy("._status", "run"))

    report = commands.add_parser(
        "report", parents=[common], help="report on a run: throughput, 429s, latency, cost, slowest rows",
        description="Figures and charts of the run stored in a checkpoint (during the run too): throughput "
        "and 429s over time, latency percentiles, retries, tokens and cost by outcome, the slowest rows.",
    )  # fmt: skip
    add_report_arguments(report)
    report.set_defaults(handler=_lazy("._report", "run"))

    simulate = commands.add_parser(
        "simulate", parents=[common], help="serve the OpenAI-compatible simulator",
        description="Serve an OpenAI-compatible chat-completions simulator until Ctrl+C.",
    )  # fmt: skip
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(handler=simulator_cli.run)

    bench = commands.add_parser(
        "bench", parents=[common], help="measure an endpoint: latency and the concurrency that pays",
        description="Call an endpoint at growing concurrency until throughput stops growing or "
        "429s appear; print latency percentiles and throughput per step.",
    )  # fmt: skip
    add_bench_arguments(bench)
    bench.set_defaults(handler=_lazy("._bench", "run"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dask-llm`` console script; returns the exit status."""
    global _argv
    argv = list(sys.argv[1:] if argv is None else argv)
    _argv = argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with vocabulary("cli"):
            return int(args.handler(args))
    except KeyboardInterrupt:
        from ._run import interrupted_status

        print(f"\ndask-llm {args.command}: interrupted", file=sys.stderr)
        return interrupted_status()
    except Exception as caught:
        exc: BaseException = caught
        if not isinstance(exc, USAGE_ERRORS):
            # A storage problem met while computing (credentials that expired
            # mid-run, a bucket gone): one line too. Anything else is a bug: traceback.
            from ._storage import storage_problem

            problem = storage_problem(exc)
            if problem is None:
                raise
            exc = problem
        if args.verbose:
            traceback.print_exc()
        print(f"dask-llm {args.command}: error: {mask_secrets(_one_line(exc), argv)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (FileNotFoundError, PermissionError)) and exc.filename and exc.filename not in text:
        text = f"{text}: {exc.filename}"
    return text


if __name__ == "__main__":
    sys.exit(main())
