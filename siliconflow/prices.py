"""What pictures cost: a price in yuan per picture (per video for a video model), for each model.

SiliconFlow no longer reports balances, so what the community spends is estimated here: each
picture SiliconFlow drew (each video job it took) times its model's price. The built-in prices are
estimates of SiliconFlow's list prices as known on PRICES_AS_OF; `MODEL_PRICES` (`model=price,…`,
yuan) overrides them or adds models. A model with no price counts 0 and is reported as unpriced.
Pure: no I/O, nothing of ours imported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

PRICES_AS_OF = "2026-12-07"

# Yuan per picture; the Wan2.2 video models per video. Estimates as known on PRICES_AS_OF.
DEFAULT_PRICES: dict[str, float] = {
    "Kwai-Kolors/Kolors": 0.0,  # free
    "Qwen/Qwen-Image": 0.3,
    "Qwen/Qwen-Image-Edit": 0.3,
    "Qwen/Qwen-Image-Edit-2509": 0.3,
    "black-forest-labs/FLUX.1-schnell": 0.0,  # free
    "black-forest-labs/FLUX.1-dev": 0.14,
    "black-forest-labs/FLUX.1-Kontext-dev": 0.14,
    "black-forest-labs/FLUX.1-Kontext-pro": 0.28,
    "black-forest-labs/FLUX.1-Kontext-max": 0.56,
    "black-forest-labs/FLUX.2-pro": 0.35,
    "black-forest-labs/FLUX.2-flex": 0.35,
    "Tongyi-MAI/Z-Image-Turbo": 0.1,
    "Wan-AI/Wan2.2-T2V-A14B": 2.0,
    "Wan-AI/Wan2.2-I2V-A14B": 2.0,
}

MAX_PRICE = 10_000.0  # yuan for one picture or video: anything above is a typo
MICRO = 1_000_000  # the ledger counts millionths of a yuan, so that sums stay exact


def parse_prices(raw: str) -> tuple[tuple[str, float], ...]:
    """`Qwen/Qwen-Image=0.3,my/model=1.5` as (model, yuan) pairs; empty: none.

    Raises ValueError naming the first bad entry: not `model=price`, a price that is not a
    finite number from 0 to MAX_PRICE, or a model named twice."""
    pairs: dict[str, float] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        model, sep, price = (piece.strip() for piece in entry.partition("="))
        shown = entry if len(entry) <= 80 else entry[:77] + "..."
        if not sep or not model or any(ch.isspace() for ch in model):
            raise ValueError(f"{shown!r} is not model=price (yuan), like Qwen/Qwen-Image=0.3")
        try:
            value = float(price)
        except ValueError:
            raise ValueError(f"{shown!r}: the price is not a number of yuan") from None
        if not math.isfinite(value) or not 0 <= value <= MAX_PRICE:
            raise ValueError(f"{shown!r}: the price must be a number of yuan from 0 to {MAX_PRICE:g}")
        if model in pairs:
            raise ValueError(f"{model!r} is given twice")
        pairs[model] = value
    return tuple(pairs.items())


class Prices:
    """The price table in effect: the built-in estimates, then MODEL_PRICES over them."""

    def __init__(self, overrides: Iterable[tuple[str, float]] = ()):
        self._table = {**DEFAULT_PRICES, **dict(overrides)}

    def of(self, model: str) -> float | None:
        """Yuan for one picture (one video) of `model`; None when it has no price."""
        return self._table.get(model)

    def table(self) -> dict[str, float]:
        return dict(sorted(self._table.items()))


def micro(yuan: float) -> int:
    """Yuan as whole millionths, what the ledger adds up."""
    return round(yuan * MICRO)


def yuan(millionths: int) -> float:
    """Millionths of a yuan as yuan, to the fen (2 decimals): what the admin API shows."""
    return round(millionths / MICRO, 2)
