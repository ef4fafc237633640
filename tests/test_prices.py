"""The price table: what a call costs, in billionths of a dollar."""

from __future__ import annotations

from sessions_app.accounting.prices import price_nanos

PRICES = {"m": {"input": 2.0, "output": 8.0, "cached": 0.5},
          "*": {"input": 1.0, "output": 1.0, "cached": 1.0}}


def test_cached_input_is_charged_at_the_cached_price(settings) -> None:
    settings.STELLO = {**settings.STELLO, "PRICES": PRICES}
    # (1000 - 400) x 2 + 400 x 0.5 + 100 x 8 = 2200 per million = 2_200_000 nanodollars
    assert price_nanos("openai", "m", 1000, 100, 400) == 2_200_000


def test_other_models_take_the_star_price_and_no_table_costs_nothing(settings) -> None:
    settings.STELLO = {**settings.STELLO, "PRICES": PRICES}
    assert price_nanos("anthropic", "other", 10, 10, 0) == 20_000
    settings.STELLO = {**settings.STELLO, "PRICES": {}}
    assert price_nanos("openai", "m", 1000, 100, 400) == 0


def test_cached_tokens_never_exceed_the_input(settings) -> None:
    settings.STELLO = {**settings.STELLO, "PRICES": PRICES}
    assert price_nanos("openai", "m", 10, 0, 50) == 10 * 500
