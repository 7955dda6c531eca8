"""``dask-llm report CHECKPOINT [--html FILE] [--png DIR]``: the run report (:mod:`dask_llm._report`)."""

from __future__ import annotations

import argparse
import json

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    from .._report import report
    from ._run import parse_storage_options

    result = report(args.checkpoint, parse_storage_options(args.storage_option), html=args.html, png=args.png)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0
