"""What a run costs, and the means of paying less.

- ``_pricing``: the price table and ``Price``;
- ``_spend``: ``SpendCap``, its ledger (hosted by the job's coordinator) and
  the runner's gate;
- ``_summary``: ``summarize()`` and ``RunSummary``, from the output columns;
- ``_cache``: ``ResponseCache``, answers shared across processes and runs.

May import: ``_core``, ``_config``, ``_errors``.
"""
