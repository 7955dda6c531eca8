"""The request budget: concurrency, requests and tokens per minute, for a whole cluster.

- ``_value``: :class:`Budget`, the value that travels in the task graph;
- ``_limiter``: the seam the runner talks to (:class:`Limiter`);
- ``_alloc``: the allocator, the authoritative shares (pure logic, hosted by
  a coordinator);
- ``_reservoir``: a process's local token buckets;
- ``_leases``: concurrency slots;
- ``_process``: a process's limiter, which renews its share from the
  allocator through the job's coordinator (passed in, never imported).

May import: ``_config``, ``_errors``; ``distributed`` nowhere (the
allocator is reached through the coordinator passed in).
"""

from ._limiter import Limiter, Unlimited
from ._value import Budget, adaptive_budget

__all__ = ["Budget", "Limiter", "Unlimited", "adaptive_budget"]
