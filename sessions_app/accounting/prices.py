"""The price table (setting STELLO_PRICES): what one LLM call costs, in billionths of a dollar.

Prices are per million tokens, per model name (`"*"` for every model not listed). Input
tokens that the provider served from its cache are charged at the `cached` price, the rest at
the `input` price. A model without a price costs 0 (its tokens are still counted).
"""

from __future__ import annotations

from django.conf import settings


def price_nanos(provider: str, model: str, input_tokens: int, output_tokens: int,
                cached_tokens: int) -> int:
    """An `engine.usage.PriceFunction` over the settings' table (read per call: tests and
    `override_settings` change it)."""
    table = settings.STELLO["PRICES"]
    price = table.get(model) or table.get("*")
    if not price:
        return 0
    cached = min(max(cached_tokens, 0), input_tokens)
    # USD per million tokens = 1000 nanodollars per token.
    return round(1000 * ((input_tokens - cached) * price["input"] + cached * price["cached"]
                         + output_tokens * price["output"]))
