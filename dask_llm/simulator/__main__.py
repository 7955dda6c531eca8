"""``python -m dask_llm.simulator``: serve the simulator until SIGINT or SIGTERM.

The library's ``dask-llm simulate`` subcommand reuses :func:`add_arguments` and :func:`run`.
"""

import sys

from ._cli import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
