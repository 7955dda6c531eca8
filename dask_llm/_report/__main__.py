"""``python -m dask_llm._report CHECKPOINT [--html FILE] [--png DIR]``."""

from __future__ import annotations

import argparse
import sys

from ._cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dask_llm._report",
        description="Report on the run stored in a dask-llm checkpoint: figures, charts, slowest rows, errors.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as exc:  # one line, like the dask-llm commands
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
