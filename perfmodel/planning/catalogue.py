"""The GPUs a plan may buy, with their prices: ``specs/prices.yaml`` joined to ``specs/hardware/``.

Prices are data (US dollars per GPU-hour, each with its source and date) kept beside the
specs, and meant to be edited; ``--prices FILE`` reads another file of the same schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

from perfmodel.errors import InputError, SpecError
from perfmodel.paths import SPECS_DIR
from perfmodel.specs.files import read_mapping
from perfmodel.specs.hardware import GPUSpec, load_gpu

#: The price list shipped with perfmodel (examples: edit it).
PRICES_FILE = SPECS_DIR / "prices.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Price(_Strict):
    """One GPU's price: US dollars per GPU-hour, where it comes from and when."""

    usd_per_gpu_hour: PositiveFloat
    source: str
    date: str


class PriceList(_Strict):
    """The whole price file: GPU name (as in specs/hardware/) -> price."""

    currency: str = "USD"
    note: str = ""
    gpus: dict[str, Price] = Field(default_factory=dict)


@dataclass(frozen=True)
class Offer:
    """A GPU the planner may use: its spec and its price (US dollars per GPU-hour)."""

    gpu: GPUSpec
    usd_per_gpu_hour: float
    price_source: str

    @property
    def name(self) -> str:
        return self.gpu.name


def load_prices(path: Path | str | None = None) -> PriceList:
    """The price list at ``path`` (default: ``specs/prices.yaml``), validated."""
    path = Path(path) if path is not None else PRICES_FILE
    data = read_mapping(path, InputError, what="price file ", expected="a mapping with a 'gpus' key")
    try:
        prices = PriceList(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InputError(f"price file {path}: invalid field '{loc}': {err['msg']}") from None
    for name in prices.gpus:
        try:
            load_gpu(name)
        except SpecError:
            raise InputError(f"price file {path}: unknown GPU '{name}' (names as in specs/hardware/)") from None
    return prices


def offers(gpus: list[str], prices: PriceList, prices_path: Path | str | None = None,
           require_price: bool = True) -> list[Offer]:
    """The requested GPUs (names or aliases) with their prices, each GPU once (a GPU without a
    price is refused, or has a NaN price when ``require_price`` is False)."""
    found: dict[str, Offer] = {}
    where = prices_path or PRICES_FILE
    by_name = {load_gpu(name).name: price for name, price in prices.gpus.items()}
    for name in gpus:
        try:
            spec = load_gpu(name)
        except SpecError as exc:
            raise InputError(str(exc)) from None
        price = by_name.get(spec.name)
        if price is None and not require_price:
            found[spec.name] = Offer(gpu=spec, usd_per_gpu_hour=float("nan"), price_source="no price")
            continue
        if price is None:
            raise InputError(f"no price for GPU '{spec.name}' in {where} (add one, or pass --prices FILE)")
        found[spec.name] = Offer(gpu=spec, usd_per_gpu_hour=price.usd_per_gpu_hour,
                                 price_source=f"{price.source}, {price.date}")
    return list(found.values())
