"""``report CHECKPOINT [--html FILE] [--png DIR]``: the run report from the command line.

:func:`add_arguments` and :func:`run` follow the other commands (``status``),
so that ``dask-llm report`` is one ``add_parser`` away; until then,
``python -m dask_llm._report CHECKPOINT ...`` runs it.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the --checkpoint folder or URL of a run")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (path or URL)")
    parser.add_argument("--png", metavar="DIR", help="write one PNG per chart into DIR (needs matplotlib)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec option for CHECKPOINT, as for dask-llm run")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of text")


def run(args: argparse.Namespace) -> int:
    import json

    from ..cli._run import parse_storage_options
    from . import report

    result = report(args.checkpoint, parse_storage_options(args.storage_option), html=args.html, png=args.png)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    sys.stdout.flush()
    return 0
