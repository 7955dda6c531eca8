"""The ``dask-llm`` command.

``dask-llm simulate`` serves the built-in OpenAI-compatible simulator, for
demos and for trying a job without an API key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .simulator import _cli as simulator_cli

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dask-llm", description="Enrich large dataframes with LLM output."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate = commands.add_parser(
        "simulate",
        help="serve the OpenAI-compatible simulator",
        description="Serve an OpenAI-compatible chat-completions simulator until Ctrl+C.",
    )
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(handler=simulator_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
