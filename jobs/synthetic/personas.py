"""The generator's planted world, loaded from ``personas.yaml`` next to this module.

The data file holds the product catalogue (category -> median price and brands), the personas
and the hourly activity profile; this module gives them types and checks them once at import.
The file is read through :mod:`importlib.resources`, so it is found inside an installed wheel
and inside a ``--py-files`` archive alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

DATA_FILE = "personas.yaml"


@dataclass(frozen=True)
class Persona:
    """A planted behaviour pattern (the ground truth evaluation compares clusters with).

    Probabilities are in 0..1: ``p_cart`` = P(cart | view), ``p_purchase`` = P(purchase | cart),
    ``p_remove`` = P(remove | cart, no purchase), ``p_search`` = P(search) per base event.
    ``sessions_per_day`` and ``events_per_session`` are means; ``gap_median_s`` is the median
    gap between a session's events in seconds.
    """

    name: str
    categories: tuple[str, ...]
    p_cart: float
    p_purchase: float
    p_remove: float
    p_search: float
    queries: tuple[str, ...]
    sessions_per_day: float
    events_per_session: float
    gap_median_s: float
    #: > 0 prefers expensive items, < 0 cheap ones.
    price_preference: float


@dataclass(frozen=True)
class World:
    """Everything ``personas.yaml`` defines, typed."""

    #: category code -> (median price in EUR, brands that sell it), in file order.
    categories: dict[str, tuple[float, tuple[str, ...]]]
    personas: tuple[Persona, ...]
    #: Relative activity per UTC hour, 24 values.
    diurnal: np.ndarray


_FLOAT_FIELDS = (
    "p_cart",
    "p_purchase",
    "p_remove",
    "p_search",
    "sessions_per_day",
    "events_per_session",
    "gap_median_s",
    "price_preference",
)


def parse_world(data: dict[str, Any]) -> World:
    """Type and check the mapping read from ``personas.yaml``.

    Raises ``ValueError`` naming the entry when a persona uses an unknown category, a
    probability lies outside 0..1 or the hourly profile does not have 24 values.
    """
    categories = {
        str(code): (float(entry["median_price"]), tuple(str(b) for b in entry["brands"]))
        for code, entry in data["categories"].items()
    }
    personas = []
    for entry in data["personas"]:
        persona = Persona(
            name=str(entry["name"]),
            categories=tuple(str(c) for c in entry["categories"]),
            queries=tuple(str(q) for q in entry["queries"]),
            **{f: float(entry[f]) for f in _FLOAT_FIELDS},
        )
        unknown = [c for c in persona.categories if c not in categories]
        if unknown:
            raise ValueError(
                f"{DATA_FILE}: persona {persona.name} has unknown categories {unknown}"
            )
        for f in ("p_cart", "p_purchase", "p_remove", "p_search"):
            if not 0.0 <= getattr(persona, f) <= 1.0:
                raise ValueError(f"{DATA_FILE}: persona {persona.name}: {f} must be in 0..1")
        personas.append(persona)
    diurnal = np.array(data["diurnal"], dtype=float)
    if diurnal.shape != (24,):
        raise ValueError(f"{DATA_FILE}: diurnal must hold 24 hourly values")
    return World(categories, tuple(personas), diurnal)


def load_world() -> World:
    """Read and check ``personas.yaml`` (shipped inside the ``jobs.synthetic`` package)."""
    text = resources.files("jobs.synthetic").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse_world(yaml.safe_load(text))


WORLD = load_world()
#: category code -> (median price, brands that sell it)
CATEGORIES = WORLD.categories
CATEGORY_NAMES = tuple(CATEGORIES)
PERSONAS = WORLD.personas
DIURNAL = WORLD.diurnal
