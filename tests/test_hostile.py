"""Hostile input: every file of the corpus in ``tests/hostile/`` runs through the real ingest.

Each bad record is quarantined with a specific reason, or the stage fails with an
``IngestError`` that names the file; nothing is dropped silently.  Every corpus record's event id
starts with its case's prefix, so records kept in ``events`` are attributed to their file, and
every file's records are counted independently here (its lines) for the reconciliation
``input = kept + duplicates + quarantined``.  The 10 MB single line is generated at test time.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyspark.sql import Row, SparkSession

from jobs import ingest
from jobs.core.config import AppConfig, LakeConfig
from jobs.core.lake import Lake
from jobs.ingest import IngestError
from jobs.sources.accounting import IngestCounts
from jobs.sources.mapping import OVERSIZE_PREVIEW_CHARS

from .conftest import REPO

CORPUS = REPO / "tests" / "hostile"
MAX_RECORD_BYTES = AppConfig().ingest.source.max_record_bytes


@dataclass(frozen=True)
class Case:
    """One corpus file: how many of its records are kept and why the others are rejected."""

    file: str
    #: Every event id in the file starts with this (how kept rows are traced to their file).
    prefix: str
    kept: int
    quarantined: Mapping[str, int] = field(default_factory=dict)
    duplicates: int = 0


JSONL_CASES = [
    Case("truncated.jsonl", "truncated-", kept=1, quarantined={"malformed jsonl record": 8}),
    # Bad bytes in a user id, a lone lead byte, an overlong encoding; a valid U+FFFD is kept.
    Case("invalid_utf8.jsonl", "invalid_utf8-", kept=2, quarantined={"invalid utf-8": 3}),
    Case(
        "wrong_types.jsonl",
        "wrong_types-",
        # A number where text is expected is read as its text (user 12345, price "19.90").
        kept=3,
        quarantined={
            "invalid price": 2,
            "unparseable event_ts: true": 1,
            'unparseable event_ts: {"iso":"2024-03-01T10:00:00Z"}': 1,
            "unknown event_type: 3": 1,
            'unknown event_type: ["view"]': 1,
            "invalid user_id: object or array": 2,
        },
    ),
    # Spark's parser accepts single quotes and keeps one value of a repeated key: neither is
    # JSON ingest can trust.  A key written with an escape (\u0074ype) is the same key; one the
    # mapping does not read, or one inside a nested object or a string, is no problem.  A record
    # that is malformed anyway stays malformed; NaN and Infinity (which Spark reads) hide no key.
    Case(
        "lenient_json.jsonl",
        "lenient_json-",
        kept=5,
        quarantined={
            "malformed jsonl record": 4,
            "duplicate key in jsonl record: user": 2,
            "duplicate key in jsonl record: type": 1,
            "duplicate key in jsonl record: price": 1,
        },
    ),
    Case(
        "missing_fields.jsonl",
        "missing_fields-",
        kept=1,
        quarantined={"missing user_id": 5, "missing event_ts": 2, "missing event_type": 2},
    ),
    Case(
        "absurd_timestamps.jsonl",
        "absurd_timestamps-",
        kept=1,
        # 1970 as text, epoch 0, epoch seconds read as ms, -1, 1999, 2100 (text, with offset,
        # epoch ms), year 99999, and epochs that overflowed the conversion before (1e20, 9e18).
        quarantined={
            "event_ts out of range": 11,
            "unparseable event_ts: 2024-02-30T10:00:00Z": 1,
        },
    ),
    Case(
        "negative_price.jsonl",
        "negative_price-",
        kept=2,  # a price of 0 is fine
        quarantined={"negative price": 3, "invalid price": 2},  # NaN, 1e400 (infinite)
    ),
    Case(
        "unknown_event_type.jsonl",
        "unknown_event_type-",
        kept=2,  # " VIEW " is trimmed and matched case-insensitively
        quarantined={
            "unknown event_type: wishlist": 1,
            "unknown event_type: page_view": 1,
            "unknown event_type: \U0001f4a5": 1,
            "missing event_type": 1,
        },
    ),
    # A byte order mark opens the file and, as after `cat a.jsonl b.jsonl`, the third line: both
    # are stripped, so the first record parses and equals the second line.
    Case("bom.jsonl", "bom-", kept=2, duplicates=1),
    Case("empty.jsonl", "empty-", kept=0),
    Case("blank_lines.jsonl", "blank_lines-", kept=1, quarantined={"empty record": 3}),
    Case(
        "huge_line.jsonl",  # generated: a valid record with a 10 MB search query
        "huge_line-",
        kept=2,
        quarantined={f"oversize record (> {MAX_RECORD_BYTES} bytes)": 1},
    ),
]

CSV_CASES = [
    Case("bom.csv", "bom_csv-", kept=2),
    # The CSV reader replaces bad bytes by U+FFFD before ingest sees them, so a real U+FFFD in a
    # CSV file cannot be told apart and is quarantined too.
    Case("invalid_utf8.csv", "invalid_utf8_csv-", kept=1, quarantined={"invalid utf-8": 2}),
    # Rows written with ';' or tabs, half-and-half, and with extra fields.
    Case(
        "mixed_delimiters.csv",
        "mixed_delimiters-",
        kept=1,
        quarantined={"malformed csv record": 4},
    ),
    Case(
        "truncated.csv",
        "truncated_csv-",
        kept=1,
        # Too few fields, an unclosed quote, a last line cut off; then values that parse.
        quarantined={
            "malformed csv record": 3,
            "negative price": 1,
            "invalid price": 1,
            "event_ts out of range": 1,
        },
    ),
    Case("empty.csv", "empty_csv-", kept=0),
    Case("header_only.csv", "header_only-", kept=0),
]


def config_for(root: Path, paths: list[Path], fmt: str) -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(
        base.ingest.source.inputs[0], paths=tuple(str(p) for p in paths), format=fmt
    )
    source = dataclasses.replace(base.ingest.source, inputs=(spec,))
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=source),
        lake=LakeConfig(engine="delta-rs", root=str(root / "lake")),
    )


def records_in(path: Path, fmt: str) -> int:
    """Records in a raw file, counted without Spark: its lines (CSV: less the header)."""
    lines = len(path.read_bytes().splitlines())
    return lines if fmt == "jsonl" else max(lines - 1, 0)


@dataclass(frozen=True)
class Outcome:
    counts: IngestCounts
    files: dict[str, Path]
    events: list[Row]
    quarantine: list[Row]


def _ingest(spark: SparkSession, root: Path, files: list[Path], fmt: str) -> Outcome:
    config = config_for(root, files, fmt)
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="hostile")
    return Outcome(
        counts,
        {f.name: f for f in files},
        lake.read("events").collect(),
        lake.read("events_quarantine").collect(),
    )


def huge_line_file(folder: Path) -> Path:
    """Two ordinary records around one 10 MB line (no newline at the end of the file)."""

    def record(event_id: str, minute: int, query: str | None = None) -> str:
        return json.dumps(
            {
                "event_id": event_id,
                "user": "u-hostile-2",
                "event_time": f"2024-03-02T10:{minute:02d}:00Z",
                "type": "search" if query else "view",
                "search_query": query,
            }
        )

    path = folder / "huge_line.jsonl"
    big = record("huge_line-big", 1, "x" * (10 * 1024 * 1024))
    path.write_text("\n".join([record("huge_line-1", 0), big, record("huge_line-2", 2)]))
    return path


@pytest.fixture(scope="module")
def jsonl_run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("hostile-jsonl")
    files = [CORPUS / c.file for c in JSONL_CASES if c.file != "huge_line.jsonl"]
    return _ingest(spark, root, [*files, huge_line_file(root)], "jsonl")


@pytest.fixture(scope="module")
def csv_run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("hostile-csv")
    return _ingest(spark, root, [CORPUS / c.file for c in CSV_CASES], "csv")


def _check_case(outcome: Outcome, case: Case, fmt: str) -> None:
    reasons = Counter(
        r["reason"] for r in outcome.quarantine if r["source_file"].endswith("/" + case.file)
    )
    kept = sum(r["event_id"].startswith(case.prefix) for r in outcome.events)
    assert dict(reasons) == dict(case.quarantined)
    assert kept == case.kept
    records = records_in(outcome.files[case.file], fmt)
    assert records == case.kept + case.duplicates + sum(case.quarantined.values())


@pytest.mark.parametrize("case", JSONL_CASES, ids=[c.file for c in JSONL_CASES])
def test_jsonl_case_is_kept_or_quarantined_with_its_reason(jsonl_run: Outcome, case: Case) -> None:
    _check_case(jsonl_run, case, "jsonl")


@pytest.mark.parametrize("case", CSV_CASES, ids=[c.file for c in CSV_CASES])
def test_csv_case_is_kept_or_quarantined_with_its_reason(csv_run: Outcome, case: Case) -> None:
    _check_case(csv_run, case, "csv")


@pytest.mark.parametrize(
    ("run", "cases", "fmt"), [("jsonl_run", JSONL_CASES, "jsonl"), ("csv_run", CSV_CASES, "csv")]
)
def test_every_record_is_accounted_for(
    request: pytest.FixtureRequest, run: str, cases: list[Case], fmt: str
) -> None:
    outcome: Outcome = request.getfixturevalue(run)
    counts = outcome.counts
    records = sum(records_in(path, fmt) for path in outcome.files.values())
    assert records == sum(c.kept + c.duplicates + sum(c.quarantined.values()) for c in cases)
    # The stage's own accounting ...
    assert counts.reconciles
    assert counts.input_rows == records
    assert counts.duplicates_removed == sum(c.duplicates for c in cases)
    # ... agrees with the tables it wrote.
    assert counts.kept == len(outcome.events) == sum(c.kept for c in cases)
    assert counts.quarantined == len(outcome.quarantine)
    assert len(outcome.events) + counts.duplicates_removed + len(outcome.quarantine) == records
    table_reasons = Counter(r["reason"] for r in outcome.quarantine)
    assert dict(table_reasons) == dict(counts.quarantine_reasons)
    expected: Counter[str] = Counter()
    for case in cases:
        expected.update(case.quarantined)
    assert table_reasons == expected
    assert all(r["raw"] is not None and r["source_file"] for r in outcome.quarantine)


def test_what_the_quarantine_keeps_of_hostile_records(jsonl_run: Outcome) -> None:
    by_reason: dict[str, list[str]] = {}
    for r in jsonl_run.quarantine:
        by_reason.setdefault(r["reason"], []).append(r["raw"])
    # Invalid bytes are stored replaced by U+FFFD, so the table stays readable UTF-8.
    bad = by_reason["invalid utf-8"]
    assert any('"user": "u-hostile-\ufffd' in raw for raw in bad)
    # A record with a 10 MB value is kept as a preview that says how large it was.
    (huge,) = by_reason[f"oversize record (> {MAX_RECORD_BYTES} bytes)"]
    size = len(jsonl_run.files["huge_line.jsonl"].read_bytes().splitlines()[1])
    assert huge.startswith('{"event_id": "huge_line-big"')
    assert huge.endswith(f" … [truncated: {size} bytes]")
    assert len(huge) < OVERSIZE_PREVIEW_CHARS + 50
    # Two records on one line are one malformed record, not one kept and one lost.
    assert any(
        '"truncated-4"' in raw and '"truncated-5"' in raw
        for raw in by_reason["malformed jsonl record"]
    )
    events = {r["event_id"]: r for r in jsonl_run.events}
    assert events["wrong_types-number-user"]["user_id"] == "12345"
    assert events["wrong_types-text-price"]["price"] == 19.9
    assert events["bom-1"]["user_id"] == "u-hostile-1"
    assert events["invalid_utf8-4"]["query"] == "\ufffd"  # valid UTF-8 for U+FFFD is data
    assert "truncated-4" not in events and "truncated-5" not in events


#: Inputs that cannot be ingested at all: (files, format, expected IngestError message).
UNUSABLE = [
    (
        ["cut_off.jsonl.gz"],
        "jsonl",
        r"cannot read input file \S*/cut_off\.jsonl\.gz: EOFException: Unexpected end of input",
    ),
    (
        ["csv_header_drift"],
        "csv",
        r"cannot read input file \S*/csv_header_drift/b\.csv: .*CSV header",
    ),
    (["empty.jsonl"], "jsonl", r"input \[.*/empty\.jsonl'\] holds no records"),
    (["empty.csv"], "csv", r"input \[.*/empty\.csv'\]: no CSV header found"),
    (["header_only.csv"], "csv", r"input \[.*/header_only\.csv'\] holds no records"),
]


@pytest.fixture(scope="module")
def good_lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake that one good ingest wrote (every table at version 0), for copies to fail on."""
    root = tmp_path_factory.mktemp("good")
    good = config_for(root, [CORPUS / "bom.jsonl"], "jsonl")
    ingest.run(spark, Lake(spark, good.lake), good, run_id="before")
    return root / "lake"


@pytest.mark.parametrize(("files", "fmt", "message"), UNUSABLE, ids=[u[0][0] for u in UNUSABLE])
def test_unusable_input_fails_naming_the_file_and_leaves_the_tables(
    spark: SparkSession,
    tmp_path: Path,
    good_lake: Path,
    files: list[str],
    fmt: str,
    message: str,
) -> None:
    shutil.copytree(good_lake, tmp_path / "lake")
    config = config_for(tmp_path, [CORPUS / f for f in files], fmt)
    lake = Lake(spark, config.lake)
    before = sorted(map(repr, lake.read("events").collect()))
    assert before  # the good ingest's events
    with pytest.raises(IngestError, match=message):
        ingest.run(spark, lake, config, run_id="hostile")
    # Failing before any commit leaves the previous tables as they were.
    assert lake.version("events") == 0
    assert sorted(map(repr, lake.read("events").collect())) == before
