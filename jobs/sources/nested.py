"""Nested JSON records: dotted paths into objects, and arrays of events exploded into rows.

A mapping expression reads a field inside a JSON object by its dotted path, e.g.
``properties.product_id`` (any depth; a name with unusual characters goes in backquotes).
``ingest.source.inputs[].explode`` names a field holding an array of events (e.g. ``events``, or
a dotted path to one); each element becomes one event.  The exploded field's name then stands
for one element, so ``events.ts`` is the ``ts`` of the element while the record's other fields
keep their own names (``session``): no name can mean two things.  README ("Bring your own log")
shows a whole mapping.

Record-level problems (malformed, blank, oversize, invalid UTF-8, a repeated key) quarantine the
record as one row, unexploded.  A record whose array is missing, null or empty, or is not an
array, yields one row quarantined with the reason in ``__explode_reason``; so does an element
that is not an object when the mapping reads fields of it.  Pure transforms: no file or table
is read here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import InputSpec
from jobs.sources.columns import (
    BAD_UTF8,
    CORRUPT,
    ELEMENT,
    ELEMENTS_PER_RECORD,
    EXPLODE_REASON,
    RAW,
    RECORD_BYTES,
)
from jobs.sources.errors import IngestError

#: Field paths a mapping reads: each name maps to the names read inside it; a name with no
#: children is read whole, as text.
PathTree = dict[str, "PathTree"]

#: Formats whose records may be exploded (the JSON-lines readers).
EXPLODABLE_FORMATS = ("jsonl", "json", "ndjson")

_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NAME = r"`[^`]+`|[A-Za-z_][A-Za-z0-9_]*"
_PART = re.compile(_NAME)
_PATH = re.compile(rf"(?:{_NAME})(?:\s*\.\s*(?:{_NAME}))*")


def split_path(path: str) -> tuple[str, ...]:
    """The names of a dotted path: ``a.b.`c.d``` -> ``("a", "b", "c.d")``."""
    return tuple(part.strip("`") for part in _PART.findall(path))


def referenced_paths(expressions: Iterable[str]) -> PathTree:
    """The field paths Spark SQL ``expressions`` may read, as a tree (``properties.product_id``
    -> ``{"properties": {"product_id": {}}}``).

    Over-approximated, which is harmless: a name that is really a function, keyword or lambda
    variable just becomes an unused all-null field.  Text inside quotes is ignored.  A field
    read both whole and by a path inside it is read as an object (the path wins).
    """
    tree: PathTree = {}
    for expression in expressions:
        for match in _PATH.finditer(_QUOTED.sub("''", expression)):
            node = tree
            for part in split_path(match.group()):
                node = node.setdefault(part, {})
    return tree


def called_names(expressions: Iterable[str]) -> set[str]:
    """Names that the Spark SQL ``expressions`` only ever call (``concat`` in
    ``concat('s-', session)``): function names, which :func:`referenced_paths` also lists.  A
    name used both ways (a field ``date`` and ``date(ts)``) is not in it."""
    called: set[str] = set()
    read: set[str] = set()
    for expression in expressions:
        text = _QUOTED.sub("''", expression)
        for match in _PATH.finditer(text):
            first = split_path(match.group())[0]
            (called if text[match.end() :].lstrip().startswith("(") else read).add(first)
    return called - read


def record_schema(tree: PathTree, text_at: tuple[str, ...] = ()) -> T.StructType:
    """A ``from_json`` schema for the fields of ``tree``: a name read whole is a string (an
    object or array arrives as its JSON text), one read by paths inside it a struct; the field
    at the path ``text_at`` stays text whatever is read inside it (the array to explode)."""
    fields = []
    for name, children in sorted(tree.items()):
        inner = text_at[1:] if text_at[:1] == (name,) else ()
        leaf = not children or text_at == (name,)
        kind = T.StringType() if leaf else record_schema(children, inner)
        fields.append(T.StructField(name, kind))
    return T.StructType(fields)


def field_value(name: str, text: Column, tree: PathTree, explode: tuple[str, ...]) -> Column:
    """The top-level field ``name`` as the mapping reads it: its JSON ``text``, or, when paths
    inside it are read, that text parsed into a struct (see :func:`record_schema`).  A value
    of another shape (``"properties": "n/a"``) gives null fields, not a malformed record."""
    if not tree[name] or explode == (name,):
        return text
    return F.from_json(
        text, record_schema(tree[name], explode[1:] if explode[:1] == (name,) else ())
    )


def explode_path(spec: InputSpec) -> tuple[str, ...]:
    """``spec.explode`` as path names, () when unset.  Raises :class:`IngestError` when the
    input is not JSON lines or the setting is not a field name or dotted path."""
    if spec.explode is None:
        return ()
    where = f"input {list(spec.paths)}: ingest.source.inputs[].explode {spec.explode!r}"
    if spec.format not in EXPLODABLE_FORMATS:
        raise IngestError(f"{where}: only JSON-lines inputs can be exploded, not {spec.format}")
    if not _PATH.fullmatch(spec.explode.strip()):
        raise IngestError(f"{where}: expected a field name or dotted path such as events")
    return split_path(spec.explode)


def explode_records(raw: DataFrame, spec: InputSpec, *, max_record_bytes: int) -> DataFrame:
    """One row per event: each element of the ``spec.explode`` array, or the record itself.

    ``raw`` is a JSON-lines :func:`jobs.sources.readers.read_raw` result.  Adds ``__element``
    (the element's index in the array; 0 for a record that is one event) and
    ``__explode_reason`` (see the module docstring; null otherwise).  For an element, the
    exploded field holds that element (a struct of the fields the mapping reads inside it, or
    its text when the mapping reads it whole) and ``__raw`` is the record cut down to it: the
    parent fields the mapping reads (as text; also those beside a nested array, inside the same
    object) and the array holding only this element, e.g.
    ``{"session":"12","events":[{"aid":5,"ts":1659304800025,"type":"clicks"}]}``.  Oversize,
    malformed, blank and invalid-UTF-8 records are not exploded (their reason is decided per
    record).  Without ``explode`` the rows are unchanged, ``__element`` 0.
    """
    path = explode_path(spec)
    if not path:
        kept = raw if ELEMENT in raw.columns else raw.withColumn(ELEMENT, F.lit(0))
        return kept.withColumn(EXPLODE_REASON, F.lit(None).cast("string"))
    name, root = ".".join(path), path[0]
    node = referenced_paths(spec.columns.values())
    for part in path:
        node = node.get(part, {})
    text = F.col(f"`{root}`")
    for part in path[1:]:
        text = text.getField(part)
    problem = F.coalesce(
        (F.col(RECORD_BYTES) > max_record_bytes) | F.col(BAD_UTF8) | F.col(CORRUPT).isNotNull(),
        F.lit(False),
    )
    fields = [c for c in raw.columns if not c.startswith("__") and c != root]
    parent = F.to_json(F.struct(*[F.col(f"`{c}`") for c in fields])) if fields else F.lit("{}")
    # Per record, before the explode: only small values are copied into every element's row
    # (the record's text is dropped for records that explode, the array's text always).
    if len(path) == 1:
        rest = [F.col(f"`{c}`") for c in raw.columns if c not in (root, RAW, ELEMENT)]
    else:
        blanked = F.col(f"`{root}`").withField(".".join(path[1:]), F.lit(None).cast("string"))
        rest = [
            blanked.alias(root) if c == root else F.col(f"`{c}`")
            for c in raw.columns
            if c not in (RAW, ELEMENT)
        ]
    parsed = F.from_json(text, T.ArrayType(T.StringType()))
    records = raw.select(
        *rest,
        F.col(RAW),
        text.isNotNull().alias("__present"),
        F.when(~problem, parsed).alias("__elements"),
        F.when(~problem, parent).alias("__parent"),
        problem.alias("__problem"),
    )
    elements = F.col("__elements")
    has_elements = F.coalesce(F.size(elements) > 0, F.lit(False))
    record_reason = (
        F.when(F.col("__problem"), None)
        .when(~F.col("__present") | (F.size(elements) == 0), F.lit(f"no elements in {name}"))
        .when(elements.isNull(), F.lit(f"{name} is not an array"))
    )
    temporary = ("__present", "__elements", "__problem", RAW)
    rows = records.select(
        *[F.col(f"`{c}`") for c in records.columns if c not in temporary],
        F.when(has_elements, None).otherwise(F.col(RAW)).alias(RAW),
        record_reason.alias(EXPLODE_REASON),
        F.posexplode_outer(F.when(has_elements, elements)).alias("__pos", "__item"),
    )
    item, pos = F.col("__item"), F.col("__pos")
    is_object = F.coalesce(item.startswith("{"), F.lit(False))
    value = F.when(is_object, F.from_json(item, record_schema(node))) if node else item
    in_array = F.when(
        is_object | item.startswith("["), F.concat(F.lit("["), item, F.lit("]"))
    ).otherwise(F.to_json(F.array(item)))
    head = F.when(F.col("__parent") == "{}", F.lit("{")).otherwise(
        F.regexp_replace("__parent", r"\}$", ",")
    )
    if len(path) == 1:
        element_raw = F.concat(head, F.lit(f"{json.dumps(root)}:"), in_array, F.lit("}"))
    else:
        # The root object keeps the other fields the mapping reads inside it (payload.user
        # beside payload.events): without them, the same element of two users' records had one
        # raw text, so one event id, and the second was quarantined as a conflict.  The array's
        # place is marked with a text no record holds (a NUL-delimited name), written out by
        # to_json, then replaced by the element.
        marker = "\u0000clickstream-segments:element\u0000"
        marked = F.to_json(F.col(f"`{root}`").withField(".".join(path[1:]), F.lit(marker)))
        inner = F.replace(marked, F.lit(json.dumps(marker)), in_array)
        element_raw = F.concat(head, F.lit(f"{json.dumps(root)}:"), inner, F.lit("}"))
    bad_element = F.when(
        pos >= F.lit(ELEMENTS_PER_RECORD),
        F.lit(f"element beyond the first {ELEMENTS_PER_RECORD:,} of {name}"),
    ).when(
        pos.isNotNull() & F.lit(bool(node)) & ~is_object,
        F.lit(f"element of {name} is not an object"),
    )
    exploded = value if len(path) == 1 else F.col(f"`{root}`").withField(".".join(path[1:]), value)
    out = {
        root: exploded,
        RAW: F.when(pos.isNotNull(), element_raw).otherwise(F.col(RAW)),
        EXPLODE_REASON: F.coalesce(F.col(EXPLODE_REASON), bad_element),
    }
    columns = [c for c in raw.columns if c != ELEMENT]
    return rows.select(
        *[out.get(c, F.col(f"`{c}`")).alias(c) for c in columns],
        F.coalesce(pos, F.lit(0)).cast("int").alias(ELEMENT),
        out[EXPLODE_REASON].alias(EXPLODE_REASON),
    )
