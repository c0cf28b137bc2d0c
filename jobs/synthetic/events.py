"""Clean synthetic events and their ground truth, in memory (numpy + pyarrow, no I/O).

Human users each get one persona (balanced); their sessions start at a random day and an hour
drawn from the persona-independent :data:`~jobs.synthetic.personas.DIURNAL` profile, hold a
geometric number of views and searches with log-normal gaps, and carts / purchases / removals
follow some views by the persona's funnel.  Bots view random items every 0.5-2 s for hours.
Every random draw comes from one generator seeded with ``generate.seed``, in a fixed order, so
the same config gives the same events.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.core.config import GenerateConfig
from jobs.synthetic.catalogue import build_catalogue, item_choice_tables
from jobs.synthetic.personas import CATEGORY_NAMES, DIURNAL, PERSONAS

#: The fields of a raw record, in the order every format writes them.
FIELDS = (
    "event_id",
    "user",
    "event_time",
    "type",
    "product_id",
    "category_code",
    "brand",
    "price",
    "search_query",
)
DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
#: Event kinds in the order events of one instant sort by (a view before its cart).
_TYPE_NAMES = ("view", "cart", "purchase", "remove_from_cart", "search")
_SEARCH = 4


def start_ms(config: GenerateConfig) -> int:
    """``generate.start_date`` at 00:00 UTC, in epoch milliseconds."""
    return int(np.datetime64(config.start_date, "ms").astype(np.int64))


def generate_events(config: GenerateConfig) -> tuple[pa.Table, pa.Table]:
    """Clean events and the ground truth, both sorted (no I/O).

    Returns ``(events, truth)``: events with the raw fields (``event_id``, ``user``,
    ``event_time`` as ISO-8601 UTC text with milliseconds, ``type``, ``product_id``,
    ``category_code``, ``brand``, ``price`` in EUR, ``search_query``) plus ``ts_ms`` (int64 epoch
    ms), sorted by (user, time); truth with ``user_id``, ``persona`` (``bot`` for bots), one row
    per user.  Raises ``ValueError`` when ``n_personas`` is not in 1..len(PERSONAS).
    """
    if not 1 <= config.n_personas <= len(PERSONAS):
        raise ValueError(f"generate.n_personas must be in 1..{len(PERSONAS)}")
    rng = np.random.default_rng(config.seed)
    personas = PERSONAS[: config.n_personas]
    items = build_catalogue(rng)
    choice = item_choice_tables(items, personas, rng)
    start = start_ms(config)

    # ---- users and sessions
    n = config.n_users
    persona_of = rng.permutation(np.arange(n) % len(personas))
    rate = np.array([p.sessions_per_day for p in personas])[persona_of] * config.n_days
    n_sessions = np.maximum(1, rng.poisson(rate))
    session_user = np.repeat(np.arange(n), n_sessions)
    s = session_user.size
    day = rng.integers(0, config.n_days, s)
    hour = rng.choice(24, size=s, p=DIURNAL / DIURNAL.sum())
    session_start = start + day * DAY_MS + hour * _HOUR_MS + rng.integers(0, _HOUR_MS, s)

    # ---- base events (views and searches) per session
    mean_len = np.array([p.events_per_session for p in personas])[persona_of[session_user]]
    length = rng.geometric(1.0 / mean_len)  # >= 1, mean = the persona's mean
    ev_session = np.repeat(np.arange(s), length)
    ev_user = session_user[ev_session]
    ev_persona = persona_of[ev_user]
    gap_median = np.array([p.gap_median_s for p in personas])[ev_persona]
    gaps = np.minimum(rng.lognormal(np.log(gap_median), 0.8), 1500.0) * 1000.0
    first = np.r_[True, ev_session[1:] != ev_session[:-1]]
    gaps[first] = 0.0
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[first], length)
    ts = session_start[ev_session] + cum.astype(np.int64)

    p_search = np.array([p.p_search for p in personas])[ev_persona]
    is_search = rng.random(ts.size) < p_search
    off = rng.random(ts.size) < config.noise.off_persona_rate
    fav_category = np.array([[CATEGORY_NAMES.index(c) for c in p.categories] for p in personas])
    category = fav_category[ev_persona, rng.integers(0, fav_category.shape[1], ts.size)]
    category = np.where(off, rng.integers(0, len(CATEGORY_NAMES), ts.size), category)
    item = np.zeros(ts.size, dtype=np.int64)
    uniform = rng.random(ts.size)
    for (p_index, c_index), (idx, cdf) in choice.items():
        mask = (ev_persona == p_index) & (category == c_index)
        if mask.any():
            item[mask] = idx[np.minimum(np.searchsorted(cdf, uniform[mask]), idx.size - 1)]

    # ---- funnel: carts follow some views, purchases / removals follow some carts
    views = np.flatnonzero(~is_search)
    p_cart = np.array([p.p_cart for p in personas])[ev_persona[views]]
    carts = views[rng.random(views.size) < p_cart]
    p_buy = np.array([p.p_purchase for p in personas])[ev_persona[carts]]
    roll = rng.random(carts.size)
    buys = carts[roll < p_buy]
    p_remove = np.array([p.p_remove for p in personas])[ev_persona[carts]]
    removes = carts[(roll >= p_buy) & (rng.random(carts.size) < p_remove)]

    src = np.concatenate([np.arange(ts.size), carts, buys, removes])
    kind = np.concatenate(
        [
            np.where(is_search, _SEARCH, 0),
            np.full(carts.size, 1),
            np.full(buys.size, 2),
            np.full(removes.size, 3),
        ]
    )
    delay = np.concatenate(
        [
            np.zeros(ts.size, dtype=np.int64),
            rng.integers(5_000, 60_000, carts.size),
            rng.integers(70_000, 300_000, buys.size),
            rng.integers(70_000, 300_000, removes.size),
        ]
    )
    all_ts = ts[src] + delay
    all_user = ev_user[src]
    all_item = item[src]
    all_search = kind == _SEARCH

    # ---- bots: long runs of rapid views of random items
    n_bots = config.noise.bot_users
    bot_parts_ts, bot_parts_user, bot_parts_item = [], [], []
    for b in range(n_bots):
        n_events = int(rng.integers(2_000, 4_000))
        begin = start + int(rng.integers(0, config.n_days)) * DAY_MS + _HOUR_MS * 2
        bot_parts_ts.append(begin + np.cumsum(rng.integers(500, 2_000, n_events)))
        bot_parts_user.append(np.full(n_events, n + b))
        bot_parts_item.append(rng.integers(0, items.num_rows, n_events))
    if n_bots:
        all_ts = np.concatenate([all_ts, *bot_parts_ts])
        all_user = np.concatenate([all_user, *bot_parts_user])
        all_item = np.concatenate([all_item, *bot_parts_item])
        kind = np.concatenate([kind, np.zeros(sum(p.size for p in bot_parts_ts), dtype=int)])
        all_search = np.concatenate([all_search, np.zeros(kind.size - all_search.size, bool)])

    order = np.lexsort((kind, all_ts, all_user))
    all_ts, all_user, all_item, kind, all_search = (
        all_ts[order],
        all_user[order],
        all_item[order],
        kind[order],
        all_search[order],
    )
    total = all_ts.size
    type_names = np.array(_TYPE_NAMES)
    persona_names = [p.name for p in personas] + ["bot"]
    user_persona = np.concatenate([persona_of, np.full(n_bots, len(personas))])
    queries = [p.queries for p in personas] + [("",)]
    query_pick = rng.integers(0, 8, total)
    query_col = np.full(total, None, dtype=object)
    query_col[all_search] = [
        queries[user_persona[u]][q % len(queries[user_persona[u]])]
        for u, q in zip(all_user[all_search], query_pick[all_search], strict=True)
    ]

    item_ids = np.array(items.column("product_id").to_pylist(), dtype=object)
    item_cat = np.array(items.column("category_code").to_pylist(), dtype=object)
    item_brand = np.array(items.column("brand").to_pylist(), dtype=object)
    item_price = np.array(items.column("price").to_pylist())
    price = np.round(item_price[all_item] * rng.uniform(0.97, 1.03, total), 2)

    def product(values: np.ndarray) -> pa.Array:
        out = values[all_item].astype(object)
        out[all_search] = None
        return pa.array(out, type=pa.string())

    user_ids = np.char.add("u", np.char.zfill(all_user.astype(str), 7))
    event_ids = [f"e{config.seed:04x}{i:012x}" for i in range(total)]
    iso = np.datetime_as_string(all_ts.astype("datetime64[ms]"), unit="ms")
    events = pa.table(
        {
            "event_id": pa.array(event_ids, type=pa.string()),
            "user": pa.array(user_ids, type=pa.string()),
            "event_time": pc.binary_join_element_wise(pa.array(iso), "Z", ""),
            "type": pa.array(type_names[kind], type=pa.string()),
            "product_id": product(item_ids),
            "category_code": product(item_cat),
            "brand": product(item_brand),
            "price": pa.array(np.where(all_search, np.nan, price), from_pandas=True),
            "search_query": pa.array(query_col, type=pa.string()),
            "ts_ms": pa.array(all_ts, type=pa.int64()),
        }
    )
    truth_users = np.char.add("u", np.char.zfill(np.arange(n + n_bots).astype(str), 7))
    truth = pa.table(
        {
            "user_id": pa.array(truth_users, type=pa.string()),
            "persona": pa.array([persona_names[p] for p in user_persona], type=pa.string()),
        }
    )
    return events, truth
