"""Reading CSV input files, every field as text (:func:`jobs.sources.readers.read_raw`'s CSV
reader).

RFC 4180 quoting with doubled quotes; a record with line breaks inside a quoted field is read
with Spark's multiLine reader, chosen when any line holds an odd number of quotes; a record that
an unclosed quote made swallow the lines after it becomes those lines again, each parsed alone,
so an unclosed quote costs one record, not the rest of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import InputSpec
from jobs.sources.columns import BAD_UTF8, CORRUPT, RAW, RECORD_BYTES, SOURCE_FILE
from jobs.sources.errors import IngestError, reading
from jobs.sources.nested import explode_path


def read_csv(spark: SparkSession, spec: InputSpec, paths: list[str]) -> DataFrame:
    explode_path(spec)  # refuses ``explode`` (JSON lines only) before any file is read
    # RFC 4180: a quote inside a quoted field is written twice (Spark's default escape, a
    # backslash, would keep both).  Reader options in the mapping override these defaults.
    options = {"header": "true", "escape": '"', **dict(spec.options)}
    header = reading(lambda: spark.read.options(**options).csv(paths).columns)
    if not header:
        raise IngestError(f"input {list(paths)}: no CSV header found (empty files?)")
    lowered = {k.lower(): v for k, v in options.items()}
    quote, escape = lowered.get("quote", '"'), lowered.get("escape", '"')
    if "multiline" not in lowered:
        # A quoted field may hold line breaks (RFC 4180), but Spark reads such records only
        # with multiLine, which cannot split a file across tasks: use it when a record needs it.
        multi_line, odd_files = _quote_scan(spark, options, paths, quote=quote, escape=escape)
        options["multiLine"] = str(multi_line).lower()
    else:
        multi_line = lowered["multiline"].strip().lower() == "true"
        odd_files = (
            _quote_scan(spark, options, paths, quote=quote, escape=escape)[1] if multi_line else []
        )
    schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in header]
        + [T.StructField(CORRUPT, T.StringType())]
    )
    df = (
        spark.read.schema(schema)
        .options(**options)
        # Columns are matched by header name in every file, so a file whose header drifted
        # fails with an error naming it instead of shifting values into wrong columns.
        .option("enforceSchema", "false")
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .csv(paths)
    )
    df = df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE))
    if multi_line:
        df = _reopen_unclosed_tail(
            spark, df, header, options, paths, odd_files, quote=quote, escape=escape
        )
        df = _split_broken_records(df, header, options)
    sep = lowered.get("sep", lowered.get("delimiter", ","))
    values = [F.col(f"`{c}`") for c in header]
    rendered = F.to_csv(F.struct(*values), {"sep": sep, "quote": quote, "escape": escape})
    # The CSV reader decodes the bytes itself and replaces invalid UTF-8 by U+FFFD, so that
    # character is the only trace left; a file that really contains U+FFFD is quarantined too.
    bad_utf8 = reduce(
        lambda a, b: a | b,
        [F.coalesce(c.contains("\ufffd"), F.lit(False)) for c in [*values, F.col(CORRUPT)]],
    )
    # The row's size without rendering it: its fields plus one separator between each.
    size = reduce(lambda a, b: a + b, [F.coalesce(F.octet_length(c), F.lit(0)) for c in values])
    return df.select(
        F.coalesce(F.col(CORRUPT), rendered).alias(RAW),
        F.col(SOURCE_FILE),
        *values,
        F.col(CORRUPT),
        F.coalesce(F.octet_length(CORRUPT), size + (len(header) - 1))
        .cast("long")
        .alias(RECORD_BYTES),
        bad_utf8.alias(BAD_UTF8),
    )


#: Reader options that choose the files or split their lines: the quote scan uses them too.
_FILE_OPTIONS = (
    "linesep",
    "pathglobfilter",
    "recursivefilelookup",
    "modifiedbefore",
    "modifiedafter",
)


def _odd_quotes(quote: str, escape: str, line: Column | None = None) -> Column:
    """Whether a text line (``line``, by default the text reader's ``value``) holds an odd
    number of ``quote`` characters, escaped quotes aside (a doubled quote counts two)."""
    line = F.col("value") if line is None else line
    if escape and escape != quote:
        line = F.replace(line, F.lit(escape + quote), F.lit(""))
    return (F.length(line) - F.length(F.replace(line, F.lit(quote), F.lit("")))) % 2 == 1


def _text_lines(spark: SparkSession, options: Mapping[str, str], paths: list[str]) -> DataFrame:
    """The files' lines as the text reader reads them (``value``), with the reader options
    that choose the files or split their lines."""
    text_options = {k: v for k, v in options.items() if k.lower() in _FILE_OPTIONS}
    return spark.read.options(**text_options).text(paths)


def _quote_scan(
    spark: SparkSession, options: Mapping[str, str], paths: list[str], *, quote: str, escape: str
) -> tuple[bool, list[str]]:
    """Whether any line of the files holds an odd number of ``quote`` characters (escaped
    quotes aside), and the files that have such a line.  A record continues on the next line
    only inside a quoted field, and the line where it breaks then holds an odd count (RFC 4180,
    section 2, rule 6; a doubled quote counts two); an unclosed quote gives one too.  The
    file's total is no test of an unclosed quote: an inch mark elsewhere (``27" monitor``) makes
    it even again.  One scan of the text (an aggregation per file); no CSV parsing."""
    if not quote or quote == "\u0000":
        return False, []
    odd = _odd_quotes(quote, escape).cast("int")
    per_file = (
        _text_lines(spark, options, paths)
        .select(F.col("_metadata.file_path").alias(SOURCE_FILE), odd.alias("__odd"))
        .groupBy(SOURCE_FILE)
        .agg(F.max("__odd").alias("__any"))
        .where(F.col("__any") == 1)
    )
    rows = reading(per_file.collect)
    return bool(rows), sorted(r[SOURCE_FILE] for r in rows)


#: The most text :func:`_reopen_unclosed_tail` brings to the driver for one file's unclosed tail.
_TAIL_LIMIT_CHARS = 16 << 20


def _reopen_unclosed_tail(
    spark: SparkSession,
    df: DataFrame,
    header: list[str],
    options: Mapping[str, str],
    paths: list[str],
    odd_files: list[str],
    *,
    quote: str,
    escape: str,
) -> DataFrame:
    """Rows of a multiLine CSV read (file order within each file), with the last record of
    each of ``odd_files`` (:func:`_quote_scan`: a line of it holds an odd number of quotes)
    replaced by its lines, each parsed as a record of its own, when that record swallowed the
    end of the file.

    A quote opened in a record's last field and never closed makes the record run to the end
    of the file: it still has the header's field count and parses, with every following line
    inside that field (those records would be lost without a trace).  Such a record spans
    several lines, and its last field ends where the file's last line with text ends
    (:func:`_runs_to_end`).  A last record that spans one line, or whose field was closed (a
    quoted line break: the closing quote follows the field's text), is left as it is, whatever
    made a line's quotes odd (e.g. a ``27" monitor`` inch mark inside an unquoted field, which
    the parser keeps as a character).  The lines the record spans are counted from its own fields
    (a line break inside a field is a line of the file; one at the very end is the file's last
    line ending), so they are the file's last lines.  Of those, the first (the one that opened
    the quote) is a malformed record and the others are parsed alone, as
    :func:`_split_broken_records` does; blank lines are skipped.  Nothing runs without such a
    file; with one, its last record's span and then those lines (at most
    :data:`_TAIL_LIMIT_CHARS`, else :class:`IngestError` naming the file and line) come to the
    driver."""
    if not odd_files:
        return df
    numbered = df.withColumn("__row", F.monotonically_increasing_id())
    breaks = reduce(
        lambda a, b: a + b,
        [
            F.size(F.split(F.coalesce(F.col(f"`{c}`"), F.lit("")), r"\r\n|\r|\n")) - 1
            for c in header
        ],
    )
    at_end = F.coalesce(F.col(f"`{header[-1]}`").rlike(r"(\r\n|\r|\n)$"), F.lit(False))
    spanned = breaks + 1 - F.when(at_end, 1).otherwise(0)
    last_records = reading(
        numbered.where(F.col(SOURCE_FILE).isin(odd_files))
        .groupBy(SOURCE_FILE)
        .agg(
            F.max(
                F.struct(
                    "__row",
                    spanned.alias("lines"),
                    F.col(CORRUPT),
                    # The last field's last line with text: all the driver needs of it.
                    F.regexp_extract(
                        F.coalesce(F.col(f"`{header[-1]}`"), F.lit("")), r"([^\r\n]*)[\r\n]*$", 1
                    ).alias("ending"),
                )
            ).alias("__last")
        )
        .collect
    )
    # One that does not parse (a CORRUPT text) is split by the next step.
    candidates = {
        r[SOURCE_FILE]: r["__last"]
        for r in last_records
        if r["__last"]["lines"] > 1 and r["__last"][CORRUPT] is None
    }
    if not candidates:
        return df
    scan = (
        _text_lines(spark, options, paths)
        .where(F.col("_metadata.file_path").isin(sorted(candidates)))
        .select(
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            F.col("_metadata.file_block_start").alias("__block"),
            F.monotonically_increasing_id().alias("__line"),
            F.col("value"),
        )
    )
    in_order = Window.partitionBy(SOURCE_FILE).orderBy("__block", "__line")
    backwards = Window.partitionBy(SOURCE_FILE).orderBy(F.desc("__block"), F.desc("__line"))
    spans = F.create_map(*[x for f, r in candidates.items() for x in (F.lit(f), F.lit(r["lines"]))])
    tails = reading(
        scan.withColumn("__number", F.row_number().over(in_order))
        .withColumn("__from_end", F.row_number().over(backwards))
        .where(F.col("__from_end") <= spans[F.col(SOURCE_FILE)])
        .groupBy(SOURCE_FILE)
        .agg(
            F.array_sort(F.collect_list(F.struct("__block", "__line", "value"))).alias("__t"),
            F.min("__number").alias("__from"),
            F.sum(F.length("value")).alias("__chars"),
        )
        .collect
    )
    # A record whose field ends where the file does swallowed its end; a closed multi-line
    # one, read right, ends with its closing quote (plus any blank lines, which the CSV
    # reader skips), which is not part of the field.
    tails = [
        t
        for t in tails
        if _runs_to_end(
            [line["value"] for line in t["__t"]],
            candidates[t[SOURCE_FILE]]["ending"],
            quote=quote,
            escape=escape,
        )
    ]
    if not tails:
        return df
    for tail in tails:
        if tail["__chars"] > _TAIL_LIMIT_CHARS:
            raise IngestError(
                f"input {tail[SOURCE_FILE]}: the quote opened on line {tail['__from']} is never "
                f"closed, so the rest of the file ({tail['__chars']:,} characters) reads as one "
                "field; close it, or set the CSV reader's quote/escape options in the mapping"
            )
    ddl, line_options = _line_parsing(header, options)
    fields = [*header, CORRUPT]
    # The line that left the quote open is malformed, however it parses.
    malformed = [F.lit(None).cast("string").alias(c) for c in header]
    records = F.array(_as_read(fields))
    for tail in tails:
        opener, *rest = [t["value"] for t in tail["__t"]]
        parts = [F.struct(*malformed, F.lit(opener).alias(CORRUPT))]
        parts += [F.from_csv(F.lit(text), ddl, line_options) for text in rest if text != ""]
        swallowed = (F.col(SOURCE_FILE) == tail[SOURCE_FILE]) & (
            F.col("__row") == candidates[tail[SOURCE_FILE]]["__row"]
        )
        records = F.when(swallowed, F.array(*parts)).otherwise(records)
    return _records_in_place(numbered, records, fields)


def _runs_to_end(lines: list[str], ending: str, *, quote: str, escape: str) -> bool:
    """Whether a record whose last field's last line of text is ``ending`` runs to the end of
    a file whose last lines are ``lines``: the file's last line with text, its escaped quotes
    read as the parser reads them, ends with ``ending`` (a field closed on that line would be
    followed by its closing quote)."""
    last = next((line for line in reversed(lines) if line != ""), "")
    if escape:
        last = last.replace(escape + quote, quote)
    return last.endswith(ending)


def _split_broken_records(
    df: DataFrame, header: list[str], options: Mapping[str, str]
) -> DataFrame:
    """Rows of a multiLine CSV read, with each record that spans several lines and still does
    not parse (too few or too many fields, typically after an unclosed quote swallowed the lines
    that follow it) replaced by its lines, each parsed as a record of its own, the way the
    line-by-line reader reads them: an unclosed quote costs one record, not the rest of the
    file.  Blank lines inside such a record are skipped, as that reader skips them.  Same
    columns as ``df`` (the header's fields, ``__corrupt``, ``__source_file``), rows in order."""
    ddl, line_options = _line_parsing(header, options)
    corrupt = F.col(CORRUPT)
    lines = F.filter(F.split(corrupt, r"\r\n|\r|\n"), lambda text: text != "")
    broken = F.coalesce(corrupt.rlike(r"[\r\n]"), F.lit(False))
    fields = [*header, CORRUPT]
    records = F.when(broken, F.transform(lines, lambda text: F.from_csv(text, ddl, line_options)))
    return _records_in_place(df, records.otherwise(F.array(_as_read(fields))), fields)


def _as_read(fields: list[str]) -> Column:
    """A row's ``fields`` as one struct, as the CSV reader read them."""
    return F.struct(*[F.col(f"`{c}`").alias(c) for c in fields])


def _records_in_place(df: DataFrame, records: Column, fields: list[str]) -> DataFrame:
    """``fields`` and ``__source_file`` of each struct in every row's ``records`` array, rows
    in place (an explode keeps the file read's order and its ``_metadata`` for positions)."""
    exploded = df.select(F.col(SOURCE_FILE), F.explode(records).alias("__record"))
    return exploded.select(*[F.col("__record")[c].alias(c) for c in fields], F.col(SOURCE_FILE))


def _line_parsing(header: list[str], options: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The schema (DDL) and ``from_csv`` options that parse one line of a CSV file as the
    line-by-line reader would (corrupt text into ``__corrupt``)."""
    ddl = ", ".join(f"`{c.replace('`', '``')}` STRING" for c in [*header, CORRUPT])
    dropped = ("header", "multiline", "enforceschema", "mode", "columnnameofcorruptrecord")
    line_options = {k: v for k, v in options.items() if k.lower() not in dropped}
    line_options.update(mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT)
    return ddl, line_options
