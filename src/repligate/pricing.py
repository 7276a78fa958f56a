"""Unit prices per model, set by the operator as data (never code), and the usage
report priced by them.

Prices come from ``REPLIGATE_USAGE_PRICES`` (JSON) and/or ``REPLIGATE_USAGE_PRICES_FILE``
(a JSON file; the variable's entries win). Keys are a model (``owner/name``), an owner's
models (``owner/*``) or every model (``*``); the most specific wins. Each holds any of:

    per_prediction       each prediction that ran
    per_image            each still image produced
    per_megapixel_step   each million pixels × denoising steps (images and video frames)
    per_frame            each frame of an animation or video
    per_video_second     each second of animation or video
    per_predict_second   each second the model ran

    {"stability-ai/sdxl": {"per_image": "0.002", "per_megapixel_step": "0.00004"},
     "*": {"per_predict_second": "0.000225"}}

Amounts are decimals (strings keep them exact); a model with no price shows no cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from repligate.settings import Settings
from repligate.store.usage import Totals

By = Literal["key", "model"]


class ModelPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_prediction: Decimal = Field(default=Decimal(0), ge=0)
    per_image: Decimal = Field(default=Decimal(0), ge=0)
    per_megapixel_step: Decimal = Field(default=Decimal(0), ge=0)
    per_frame: Decimal = Field(default=Decimal(0), ge=0)
    per_video_second: Decimal = Field(default=Decimal(0), ge=0)
    per_predict_second: Decimal = Field(default=Decimal(0), ge=0)

    def cost(self, totals: Totals) -> Decimal:
        return (
            self.per_prediction * totals.ran
            + self.per_image * totals.images
            + self.per_megapixel_step * Decimal(totals.pixel_steps) / 1_000_000
            + self.per_frame * totals.frames
            + self.per_video_second * Decimal(str(totals.video_seconds))
            + self.per_predict_second * Decimal(str(totals.predict_seconds))
        )


class PriceList:
    def __init__(self, prices: dict[str, ModelPrice]) -> None:
        self.prices = prices

    @classmethod
    def from_settings(cls, settings: Settings) -> PriceList:
        """ValueError naming the entry when a price is not valid."""
        raw: dict[str, Any] = {}
        if settings.usage_prices_file is not None:
            try:
                raw.update(json.loads(settings.usage_prices_file.read_text()))
            except (OSError, ValueError) as exc:
                raise ValueError(f"usage prices file {settings.usage_prices_file}: {exc}") from exc
        raw.update(settings.usage_prices)
        prices = {}
        for model, entry in raw.items():
            try:
                prices[model] = ModelPrice.model_validate(entry)
            except ValidationError as exc:
                raise ValueError(f"usage price of {model!r}: {exc}") from exc
        return cls(prices)

    def price_for(self, model: str) -> ModelPrice | None:
        owner = model.split("/", 1)[0]
        for name in (model, f"{owner}/*", "*"):
            if name in self.prices:
                return self.prices[name]
        return None


@dataclass
class ReportRow:
    """One line of the report: a key's or a model's sums, and their cost."""

    name: str
    predictions: int = 0
    ran: int = 0
    predict_seconds: float = 0.0
    images: int = 0
    pixel_steps: int = 0
    frames: int = 0
    video_seconds: float = 0.0
    output_bytes: int = 0
    cost: Decimal = Decimal(0)
    # Models among these sums that have no price (their part costs nothing here).
    unpriced: set[str] = field(default_factory=set)

    def add(self, totals: Totals, price: ModelPrice | None) -> None:
        self.predictions += totals.predictions
        self.ran += totals.ran
        self.predict_seconds += totals.predict_seconds
        self.images += totals.images
        self.pixel_steps += totals.pixel_steps
        self.frames += totals.frames
        self.video_seconds += totals.video_seconds
        self.output_bytes += totals.output_bytes
        if price is None:
            self.unpriced.add(totals.model)
        else:
            self.cost += price.cost(totals)


def report(totals: Iterable[Totals], prices: PriceList, by: By) -> list[ReportRow]:
    """Rows per key (named ``name (id)``) or per model, each priced model by model."""
    rows: dict[str, ReportRow] = {}
    for entry in totals:
        name = f"{entry.key_name} ({entry.api_key_id})" if by == "key" else entry.model
        rows.setdefault(name, ReportRow(name)).add(entry, prices.price_for(entry.model))
    return [rows[name] for name in sorted(rows)]
