"""``generate`` stage: synthetic clickstream with planted personas, written as raw files.

Pure numpy + pyarrow (no Spark), vectorised so that millions of events generate in seconds.

What is planted
---------------
* ``n_users`` human users, each assigned one of ``n_personas`` personas (balanced).  A persona
  has a category mixture concentrated on 4 categories (neighbouring personas share at most one),
  preferred brands, a funnel (P(cart | view), P(purchase | cart), P(remove | cart)), a search
  propensity with typical queries, a session rhythm (sessions per day, events per session,
  inter-event gaps) and a price preference.  A share ``noise.off_persona_rate`` of a human's
  product events come from a uniformly random category.
* ``noise.bot_users`` extra users (persona ``bot``) viewing random items every 0.5-2 s for hours.
* With the defaults (5,000 users over 7 days) about 44 events per human user: ~220k events.

Noise, and how the counts reconcile
-----------------------------------
Every clean event is written exactly once in clean form.  Noise only ever *adds* records:

* ``duplicate_rate`` x clean: exact copies of clean records (same ``event_id``), often in
  another file;
* ``malformed_rate`` x clean: copies cut off halfway (JSON-lines) or missing fields (CSV); not
  representable in Parquet, so Parquet files carry none;
* ``schema_drift_rate`` x clean: copies with one defect each, cycling through: ``user`` renamed
  to ``userId``, ``event_time`` missing, ``price`` written as ``"12,99 EUR"``, ``type`` =
  ``wishlist``, ``event_time`` in 1970.  Each is quarantined by the default ingest mapping.

So ingest of one format must give ``kept = n_events_clean``,
``duplicates = n_duplicates_planted``, ``quarantined = malformed + drift`` of that format.

``out_of_order_rate`` displaces records inside a file; ``late_rate`` writes events into the file
of a later arrival day (1..``max_late_days`` later).  Files: one per arrival day,
``<output_dir>/<format>/events-<YYYY-MM-DD>.<ext>``.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.config import GenerateConfig

log = logging.getLogger(__name__)

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

#: category code -> (median price, brands that sell it)
CATEGORIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "electronics.smartphone": (420.0, ("samsung", "apple", "xiaomi", "huawei")),
    "electronics.audio.headphone": (90.0, ("sony", "apple", "jbl", "xiaomi")),
    "electronics.video.tv": (650.0, ("samsung", "lg", "sony")),
    "electronics.clocks": (180.0, ("casio", "apple", "garmin")),
    "computers.notebook": (900.0, ("lenovo", "hp", "asus", "apple")),
    "computers.peripherals.mouse": (30.0, ("logitech", "hp", "razer")),
    "computers.components.videocards": (520.0, ("asus", "msi", "gigabyte")),
    "appliances.kitchen.refrigerators": (700.0, ("lg", "samsung", "bosch", "indesit")),
    "appliances.kitchen.blender": (60.0, ("philips", "bosch", "moulinex")),
    "appliances.kitchen.coffee_machine": (240.0, ("delonghi", "philips", "krups")),
    "appliances.environment.vacuum": (210.0, ("dyson", "samsung", "philips")),
    "kitchen.cookware.pan": (35.0, ("tefal", "rondell", "moulinex")),
    "kitchen.knives": (45.0, ("rondell", "tefal", "fiskars")),
    "apparel.shoes": (85.0, ("nike", "adidas", "puma")),
    "apparel.shoes.sneakers": (110.0, ("nike", "adidas", "newbalance")),
    "apparel.dress": (70.0, ("zara", "mango", "hm")),
    "apparel.jacket": (140.0, ("columbia", "zara", "thenorthface")),
    "accessories.bag": (95.0, ("michaelkors", "mango", "samsonite")),
    "beauty.fragrance": (65.0, ("dior", "chanel", "shiseido")),
    "beauty.skin_care": (30.0, ("shiseido", "nivea", "loreal")),
    "sport.bicycle": (520.0, ("stels", "giant", "trek")),
    "sport.tennis": (80.0, ("wilson", "head", "babolat")),
    "sport.camping.tent": (160.0, ("columbia", "thenorthface", "coleman")),
    "kids.toys": (28.0, ("lego", "hasbro", "mattel")),
    "kids.carriage": (330.0, ("chicco", "cybex", "peg-perego")),
    "kids.diapers": (22.0, ("pampers", "huggies", "merries")),
    "construction.tools.drill": (120.0, ("bosch", "makita", "dewalt")),
    "construction.tools.saw": (150.0, ("makita", "dewalt", "bosch")),
    "construction.components.faucet": (75.0, ("grohe", "hansgrohe", "lemark")),
    "furniture.living_room.sofa": (480.0, ("ikea", "askona", "hoff")),
    "furniture.bedroom.bed": (420.0, ("ikea", "askona", "ormatek")),
    "auto.accessories.player": (110.0, ("pioneer", "kenwood", "sony")),
}
CATEGORY_NAMES = tuple(CATEGORIES)


@dataclass(frozen=True)
class Persona:
    """A planted behaviour pattern (the ground truth evaluation compares clusters with)."""

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


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "tech_enthusiast",
        (
            "electronics.smartphone",
            "electronics.audio.headphone",
            "computers.notebook",
            "computers.components.videocards",
        ),
        0.12,
        0.35,
        0.10,
        0.08,
        ("iphone 15", "rtx 4070", "noise cancelling"),
        0.45,
        9.0,
        35.0,
        0.4,
    ),
    Persona(
        "home_cook",
        (
            "appliances.kitchen.blender",
            "appliances.kitchen.coffee_machine",
            "kitchen.cookware.pan",
            "kitchen.knives",
        ),
        0.18,
        0.45,
        0.05,
        0.10,
        ("espresso machine", "cast iron pan", "chef knife"),
        0.3,
        7.0,
        50.0,
        0.0,
    ),
    Persona(
        "fashionista",
        ("apparel.dress", "apparel.shoes", "accessories.bag", "beauty.fragrance"),
        0.22,
        0.30,
        0.20,
        0.05,
        ("summer dress", "leather bag", "perfume"),
        0.6,
        14.0,
        25.0,
        0.2,
    ),
    Persona(
        "outdoor_sports",
        ("sport.bicycle", "sport.tennis", "sport.camping.tent", "apparel.jacket"),
        0.10,
        0.40,
        0.05,
        0.06,
        ("mountain bike", "tent 4 person", "tennis racket"),
        0.25,
        8.0,
        45.0,
        0.1,
    ),
    Persona(
        "bargain_hunter",
        ("kitchen.cookware.pan", "computers.peripherals.mouse", "beauty.skin_care", "kids.toys"),
        0.08,
        0.60,
        0.15,
        0.15,
        ("cheap mouse", "discount", "sale"),
        0.75,
        16.0,
        20.0,
        -1.2,
    ),
    Persona(
        "big_spender",
        (
            "electronics.video.tv",
            "appliances.kitchen.refrigerators",
            "furniture.living_room.sofa",
            "electronics.clocks",
        ),
        0.25,
        0.55,
        0.05,
        0.04,
        ("oled tv", "smart fridge"),
        0.2,
        6.0,
        60.0,
        1.2,
    ),
    Persona(
        "parent",
        ("kids.toys", "kids.carriage", "kids.diapers", "furniture.bedroom.bed"),
        0.20,
        0.50,
        0.08,
        0.07,
        ("lego set", "stroller", "diapers size 4"),
        0.4,
        9.0,
        40.0,
        -0.2,
    ),
    Persona(
        "diy_builder",
        (
            "construction.tools.drill",
            "construction.tools.saw",
            "construction.components.faucet",
            "auto.accessories.player",
        ),
        0.14,
        0.40,
        0.06,
        0.09,
        ("cordless drill", "circular saw", "kitchen faucet"),
        0.3,
        8.0,
        55.0,
        0.0,
    ),
)

#: Relative activity per UTC hour (quiet nights, evening peak).
_DIURNAL = np.array(
    [2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 10, 10, 10, 10, 10, 11, 12, 14, 15, 14, 11, 7, 4],
    dtype=float,
)
_N_ITEMS_PER_CATEGORY = 100
_DRIFT_KINDS = ("renamed_user", "missing_time", "text_price", "unknown_type", "epoch_1970")


@dataclass(frozen=True)
class GenerateResult:
    """What one generation wrote (counts are those of the first configured format)."""

    n_events_clean: int
    n_lines_written: int
    n_duplicates_planted: int
    n_malformed_planted: int
    n_schema_drift_planted: int
    n_bot_users: int
    files: tuple[str, ...]
    ground_truth_path: str
    lines_per_format: dict[str, int] = field(default_factory=dict)


# ==================================================================== clean events


def _catalogue(rng: np.random.Generator) -> pa.Table:
    """Items: id, category, brand, base price (log-normal around the category median)."""
    rows: dict[str, list] = {"product_id": [], "category_code": [], "brand": [], "price": []}
    next_id = 100_000
    for category, (median, brands) in CATEGORIES.items():
        prices = np.round(median * rng.lognormal(0.0, 0.45, _N_ITEMS_PER_CATEGORY), 2)
        for i in range(_N_ITEMS_PER_CATEGORY):
            rows["product_id"].append(f"p{next_id}")
            rows["category_code"].append(category)
            rows["brand"].append(brands[i % len(brands)])
            rows["price"].append(float(max(prices[i], 1.0)))
            next_id += 1
    return pa.table(rows)


def _item_choice_tables(
    items: pa.Table, personas: Sequence[Persona], rng: np.random.Generator
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Per (persona, category): item indices and their cumulative choice probabilities."""
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
            # Each persona also has personal favourite items, as real shoppers revisit products.
            weight *= rng.choice([1.0, 4.0], size=idx.size, p=[0.9, 0.1])
            tables[(p_index, c_index)] = (idx, np.cumsum(weight) / weight.sum())
    return tables


def generate_events(config: GenerateConfig) -> tuple[pa.Table, pa.Table]:
    """Clean events and the ground truth, both sorted (no I/O).

    Returns ``(events, truth)``: events with the raw fields plus ``ts_ms`` (int64 epoch ms), sorted
    by (user, time); truth with ``user_id``, ``persona``.
    """
    if not 1 <= config.n_personas <= len(PERSONAS):
        raise ValueError(f"generate.n_personas must be in 1..{len(PERSONAS)}")
    rng = np.random.default_rng(config.seed)
    personas = PERSONAS[: config.n_personas]
    items = _catalogue(rng)
    choice = _item_choice_tables(items, personas, rng)
    start_ms = int(np.datetime64(config.start_date, "ms").astype(np.int64))
    day_ms = 86_400_000

    # ---- users and sessions
    n = config.n_users
    persona_of = rng.permutation(np.arange(n) % len(personas))
    rate = np.array([p.sessions_per_day for p in personas])[persona_of] * config.n_days
    n_sessions = np.maximum(1, rng.poisson(rate))
    session_user = np.repeat(np.arange(n), n_sessions)
    s = session_user.size
    day = rng.integers(0, config.n_days, s)
    hour = rng.choice(24, size=s, p=_DIURNAL / _DIURNAL.sum())
    session_start = start_ms + day * day_ms + hour * 3_600_000 + rng.integers(0, 3_600_000, s)

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
            np.where(is_search, 4, 0),
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
    all_search = kind == 4

    # ---- bots: long runs of rapid views of random items
    n_bots = config.noise.bot_users
    bot_parts_ts, bot_parts_user, bot_parts_item = [], [], []
    for b in range(n_bots):
        n_events = int(rng.integers(2_000, 4_000))
        begin = start_ms + int(rng.integers(0, config.n_days)) * day_ms + 3_600_000 * 2
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
    type_names = np.array(["view", "cart", "purchase", "remove_from_cart", "search"])
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


# ==================================================================== raw records and noise


def _json_lines(table: pa.Table) -> pa.Array:
    """One JSON object per row, keys in FIELDS order (values are safe ASCII by construction)."""
    parts: list[object] = []
    for i, name in enumerate(FIELDS):
        column = table.column(name)
        if name == "price":
            text = pc.cast(column, pa.string())
        else:
            text = pc.binary_join_element_wise('"', column, '"', "")
        parts.append(("{" if i == 0 else ", ") + f'"{name}": ')
        parts.append(pc.fill_null(text, "null"))
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


def _csv_lines(table: pa.Table) -> pa.Array:
    """RFC 4180 lines: every present value quoted (inner quotes doubled), missing values empty."""
    parts: list[object] = []
    for i, name in enumerate(FIELDS):
        column = table.column(name)
        text = pc.cast(column, pa.string()) if name == "price" else column
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
        if i:
            parts.append(",")
        parts.append(pc.fill_null(quoted, ""))
    return pc.binary_join_element_wise(*parts, "")


def _drifted(records: list[dict], kinds: Sequence[str]) -> list[dict]:
    out = []
    for record, kind in zip(records, kinds, strict=True):
        r = dict(record)
        if kind == "renamed_user":
            r = {("userId" if k == "user" else k): v for k, v in r.items()}
        elif kind == "missing_time":
            r.pop("event_time")
        elif kind == "text_price":
            r["price"] = "12,99 EUR"
        elif kind == "unknown_type":
            r["type"] = "wishlist"
        elif kind == "epoch_1970":
            r["event_time"] = "1970-01-01T00:00:00.000Z"
        out.append(r)
    return out


def _record_to_json(record: dict) -> str:
    import json

    return json.dumps(record, separators=(", ", ": "))


def _record_to_csv(record: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="")
    writer.writerow(["" if record.get(f) is None else record.get(f) for f in FIELDS])
    return buffer.getvalue()


def generate(config: GenerateConfig) -> GenerateResult:
    """Generate events, add the configured noise, write raw files and the ground truth."""
    events, truth = generate_events(config)
    noise = config.noise
    rng = np.random.default_rng(config.seed + 1)
    n = events.num_rows
    ts_ms = events.column("ts_ms").to_numpy()
    start_ms = int(np.datetime64(config.start_date, "ms").astype(np.int64))
    event_day = (ts_ms - start_ms) // 86_400_000
    arrival = event_day.copy()
    late = rng.random(n) < noise.late_rate
    arrival[late] += rng.integers(1, noise.max_late_days + 1, int(late.sum()))

    n_dup = round(noise.duplicate_rate * n)
    n_bad = round(noise.malformed_rate * n)
    n_drift = round(noise.schema_drift_rate * n)
    dup_src = rng.choice(n, n_dup, replace=False)
    bad_src = rng.choice(n, n_bad, replace=False)
    drift_src = rng.choice(n, n_drift, replace=False)
    dup_arrival = event_day[dup_src] + rng.integers(0, noise.max_late_days + 1, n_dup)
    drift_kinds = [_DRIFT_KINDS[i % len(_DRIFT_KINDS)] for i in range(n_drift)]

    raw = events.select(list(FIELDS))
    bad_records = raw.take(pa.array(bad_src)).to_pylist()
    drift_records = _drifted(raw.take(pa.array(drift_src)).to_pylist(), drift_kinds)

    out_root = Path(config.output_dir)
    files: list[str] = []
    lines_per_format: dict[str, int] = {}
    for fmt in config.formats:
        if fmt not in ("jsonl", "csv", "parquet"):
            raise ValueError(f"generate.formats: unknown format {fmt!r}")
        folder = out_root / fmt
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if fmt == "parquet":
            body = pa.concat_tables([raw, raw.take(pa.array(dup_src))])
            typed_drift = pa.Table.from_pylist(
                [
                    {f: (None if r.get(f) is None else str(r.get(f))) for f in FIELDS}
                    for r in drift_records
                ],
                schema=pa.schema([(f, pa.string()) for f in FIELDS]),
            )
            body = pa.concat_tables(
                [
                    body.set_column(7, "price", pc.cast(body.column("price"), pa.string())),
                    typed_drift,
                ]
            )
            days = np.concatenate([arrival, dup_arrival, event_day[drift_src]])
            lines = None
        else:
            encode = _json_lines if fmt == "jsonl" else _csv_lines
            one = _record_to_json if fmt == "jsonl" else _record_to_csv
            clean_lines = encode(raw).to_numpy(zero_copy_only=False)
            if fmt == "jsonl":
                bad_lines = [one(r)[: max(5, len(one(r)) // 2)] for r in bad_records]
            else:
                bad_lines = [",".join(one(r).split(",")[:4]) for r in bad_records]
            lines = np.concatenate(
                [
                    clean_lines,
                    clean_lines[dup_src],
                    np.array(bad_lines, dtype=object),
                    np.array([one(r) for r in drift_records], dtype=object),
                ]
            )
            days = np.concatenate([arrival, dup_arrival, event_day[bad_src], event_day[drift_src]])
            body = None
        order = np.argsort(days, kind="stable")
        # Displace a share of records within their file (out-of-order arrival).
        shuffled = rng.random(order.size) < noise.out_of_order_rate
        positions = np.flatnonzero(shuffled)
        order[positions] = order[rng.permutation(positions)]
        order = order[np.argsort(days[order], kind="stable")]
        total = 0
        for day_index in np.unique(days):
            chosen = order[days[order] == day_index]
            date = (np.datetime64(config.start_date) + np.timedelta64(int(day_index), "D")).astype(
                str
            )
            if fmt == "parquet":
                assert body is not None
                path = folder / f"events-{date}.parquet"
                pq.write_table(body.take(pa.array(chosen)), path)
            else:
                assert lines is not None
                text = "\n".join(lines[chosen].tolist()) + "\n"
                if fmt == "csv":
                    text = ",".join(FIELDS) + "\n" + text
                ext = fmt + (".gz" if config.compress else "")
                path = folder / f"events-{date}.{ext}"
                data = text.encode()
                path.write_bytes(gzip.compress(data, mtime=0) if config.compress else data)
            total += chosen.size
            files.append(str(path))
        lines_per_format[fmt] = total

    truth_path = Path(config.ground_truth_path)
    if out_root.resolve() in truth_path.resolve().parents:
        raise ValueError("generate.ground_truth_path must not be inside generate.output_dir")
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    truth_lines = ["user_id,persona"] + [
        f"{u},{p}"
        for u, p in zip(
            truth.column("user_id").to_pylist(), truth.column("persona").to_pylist(), strict=True
        )
    ]
    truth_path.write_text("\n".join(truth_lines) + "\n")

    first = config.formats[0] if config.formats else "jsonl"
    return GenerateResult(
        n_events_clean=n,
        n_lines_written=lines_per_format.get(first, 0),
        n_duplicates_planted=n_dup,
        n_malformed_planted=0 if first == "parquet" else n_bad,
        n_schema_drift_planted=n_drift,
        n_bot_users=noise.bot_users,
        files=tuple(files),
        ground_truth_path=str(truth_path),
        lines_per_format=lines_per_format,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python jobs/generate.py --conf conf/local.yaml`` (no Spark needed)."""
    from jobs.cli import run_stage

    return run_stage("generate", argv)


if __name__ == "__main__":
    sys.exit(main())
