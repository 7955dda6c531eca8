"""What tokens cost: a price table per model, which the user can override.

Prices change and differ per account (batch discounts, Azure contracts,
self-hosted models at zero), so the table below is only a default: every
function that reports a cost takes ``prices=``, a mapping of model name to
:class:`Price` (or an ``(input, output)`` pair in USD per million tokens)
that is consulted first.

A model is looked up by exact name, then by the longest table entry it
starts with, so a dated snapshot (``gpt-4o-mini-2024-07-18``) finds its
family's price. A model found nowhere has no price: costs are ``None``
(never a silent zero), and a cost cap refuses to start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable", "price_for"]


@dataclass(frozen=True)
class Price:
    """USD per million tokens, prompt (input) and completion (output).

    >>> Price(0.15, 0.60).cost(1_000_000, 500_000)
    0.45
    """

    input: float
    output: float

    def __post_init__(self) -> None:
        for what in ("input", "output"):
            value = getattr(self, what)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ConfigError(f"Price.{what} must be a number >= 0 (USD per million tokens), got {value!r}")

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for so many prompt and completion tokens."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000

    def for_batch(self) -> Price:
        """The Batch API's price: half of both (OpenAI's and Azure's global batch)."""
        return Price(self.input * BATCH_DISCOUNT, self.output * BATCH_DISCOUNT)


#: What the Batch API charges of the synchronous price.
BATCH_DISCOUNT = 0.5


PriceTable = Mapping[str, Price | tuple[float, float]]

#: List prices in USD per million tokens (standard tier, no batch or cache
#: discount), as published by OpenAI in 2025. Check them against your bill.
DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o1": Price(15.00, 60.00),
    "o3": Price(2.00, 8.00),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
}


def _as_price(model: str, value: object) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Price(float(value[0]), float(value[1]))
    raise ConfigError(f"prices[{model!r}] must be a Price or an (input, output) pair, got {value!r}")


def price_for(model: str, prices: PriceTable | None = None) -> Price | None:
    """The price of ``model``: from ``prices`` first, then :data:`DEFAULT_PRICES`;
    ``None`` when neither knows it.

    Raises
    ------
    ConfigError
        An entry of ``prices`` is not a price.
    """
    for table in (prices or {}, DEFAULT_PRICES):
        if model in table:
            return _as_price(model, table[model])
        # Longest prefix: "gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o.
        family = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
        if family is not None:
            return _as_price(family, table[family])
    return None
