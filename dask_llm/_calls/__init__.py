"""One call to an OpenAI-compatible endpoint, and what its failure means.

- ``_attempt``: an attempt bounded in time and size, stoppable from outside
  (a guarded network backend under the ``openai`` client);
- ``_client``: the per-process client cache, one attempt, and the
  classification of failures (with every provider's retry hints);
- ``_breaker``: the circuit breaker that stops a job against an endpoint
  that answers nothing right.

May import: ``_config``, ``_errors``, ``openai`` (and its ``httpcore2``).
"""
