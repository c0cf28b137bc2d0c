"""The generated product catalogue and how each persona picks items from it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from jobs.synthetic.personas import CATEGORIES, CATEGORY_NAMES, Persona

#: Items generated per category; product ids run from ``p100000`` in catalogue order.
N_ITEMS_PER_CATEGORY = 100
_FIRST_PRODUCT_ID = 100_000

#: (item indices into the catalogue, their cumulative choice probabilities)
ChoiceTable = tuple[np.ndarray, np.ndarray]


def build_catalogue(rng: np.random.Generator) -> pa.Table:
    """Items: ``product_id``, ``category_code``, ``brand``, ``price`` (EUR, >= 1.0).

    ``N_ITEMS_PER_CATEGORY`` rows per category of :data:`CATEGORIES`, in its order; prices are
    log-normal around the category's median, brands cycle through the category's brands.
    """
    rows: dict[str, list] = {"product_id": [], "category_code": [], "brand": [], "price": []}
    next_id = _FIRST_PRODUCT_ID
    for category, (median, brands) in CATEGORIES.items():
        prices = np.round(median * rng.lognormal(0.0, 0.45, N_ITEMS_PER_CATEGORY), 2)
        for i in range(N_ITEMS_PER_CATEGORY):
            rows["product_id"].append(f"p{next_id}")
            rows["category_code"].append(category)
            rows["brand"].append(brands[i % len(brands)])
            rows["price"].append(float(max(prices[i], 1.0)))
            next_id += 1
    return pa.table(rows)


def item_choice_tables(
    items: pa.Table, personas: Sequence[Persona], rng: np.random.Generator
) -> dict[tuple[int, int], ChoiceTable]:
    """Per (persona index, category index): item indices and their cumulative probabilities.

    An item's weight is its price relative to the category median raised to the persona's
    ``price_preference``, x3 for the persona's favourite brands and x4 for one item in ten (the
    persona's personal favourites: real shoppers revisit products).
    """
    categories = np.array(items.column("category_code").to_pylist())
    brands = np.array(items.column("brand").to_pylist())
    prices = np.array(items.column("price").to_pylist())
    tables = {}
    for p_index, persona in enumerate(personas):
        favourite = {b for c in persona.categories for b in CATEGORIES[c][1][:2]}
        for c_index, category in enumerate(CATEGORY_NAMES):
            idx = np.flatnonzero(categories == category)
            rel = prices[idx] / np.median(prices[idx])
            weight = rel**persona.price_preference
            weight *= np.where(np.isin(brands[idx], list(favourite)), 3.0, 1.0)
            weight *= rng.choice([1.0, 4.0], size=idx.size, p=[0.9, 0.1])
            tables[(p_index, c_index)] = (idx, np.cumsum(weight) / weight.sum())
    return tables
