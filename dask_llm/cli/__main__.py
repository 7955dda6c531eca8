"""``python -m dask_llm.cli``: the ``dask-llm`` command."""

import sys

from . import main

sys.exit(main())
