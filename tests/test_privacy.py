"""Pseudonymisation: ``privacy.pseudonymize_user_id`` replaces every user id by its HMAC.

Only the environment-variable key path is tested; the Databricks secret-scope path needs
``pyspark.dbutils``, which exists only on Databricks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import pickle
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs import cluster, embed, evaluate, ingest, sessionize
from jobs.core.config import (
    AppConfig,
    ClusterConfig,
    EncoderConfig,
    LakeConfig,
    NoiseConfig,
    PrivacyConfig,
)
from jobs.core.lake import Lake
from jobs.core.privacy import PrivacyError, Pseudonymizer, resolve_key
from jobs.core.tables import TABLES
from jobs.synthetic import generate

from .conftest import REPO

KEY_ENV = "SEGMENTS_HMAC_KEY"
KEY = "test-only-hmac-key-9f2c4e1a7b3d5f60-not-a-secret"
ON = PrivacyConfig(pseudonymize_user_id=True, key_env=KEY_ENV)
HEX64 = re.compile(r"^[0-9a-f]{64}$")
REDACTED = re.compile(r"^<redacted: (\d+) characters, hmac-sha256 ([0-9a-f]{64})>$")


def test_spark_hmac_equals_pythons_hmac_module(spark: SparkSession) -> None:
    check_hmac(spark)


def check_hmac(spark: SparkSession) -> None:
    """The pseudonymiser's Spark HMAC equals Python's ``hmac`` module (RFC 2104) for awkward
    messages and keys; tests/test_delta_native.py runs it under Spark Connect as well."""
    messages = ["u0000001", "", "üñí©ødé 𝄞 \u0000 end", "a" * 1000, None]
    df = spark.createDataFrame([(i, m) for i, m in enumerate(messages)], "i int, m string")
    keys = [
        b"0123456789abcdef" * 2,  # exactly the minimum length
        "ключ-".encode() * 8,  # non-ASCII
        b"x" * 64,  # one SHA-256 block
        b"a-long-key-" * 20,  # longer than a block: hashed first, as RFC 2104 says
    ]
    for key in keys:
        pseudonymizer = Pseudonymizer(key)
        got = {r["i"]: r["m"] for r in pseudonymizer.pseudonymize(df, "m").collect()}
        for i, message in enumerate(messages):
            if message is None:
                assert got[i] is None
                continue
            expected = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
            assert got[i] == expected == pseudonymizer.hex(message)


def test_the_key_stays_out_of_plans_reprs_and_pickles(spark: SparkSession) -> None:
    key = KEY.encode()
    pseudonymizer = Pseudonymizer(key)
    block = key.ljust(64, b"\x00")
    secrets = [KEY, key.hex()] + [bytes(b ^ pad for b in block).hex() for pad in (0x36, 0x5C)]
    df = pseudonymizer.pseudonymize(spark.createDataFrame([("u1",)], "user_id string"), "user_id")
    assert df.first()[0] == pseudonymizer.hex("u1")  # type: ignore[index]
    plan = df._jdf.queryExecution().toString().lower()
    assert "__hmac_inner" in plan  # the key blocks are a joined row, not literals
    assert not [s for s in secrets if s.lower() in plan]
    assert KEY not in repr(pseudonymizer)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(pseudonymizer)


def test_missing_or_short_key_is_refused_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert resolve_key(PrivacyConfig()) is None  # off: no key needed
    with pytest.raises(
        PrivacyError, match=f"no key was found: set the environment variable {KEY_ENV}"
    ):
        resolve_key(ON)
    monkeypatch.setenv(KEY_ENV, "tiny-key-value")
    with pytest.raises(PrivacyError, match="shorter than 32 bytes") as err:
        resolve_key(ON)
    assert "tiny-key-value" not in str(err.value)
    with pytest.raises(PrivacyError, match="must be set together"):
        resolve_key(dataclasses.replace(ON, secret_scope="scope"))
    monkeypatch.setenv(KEY_ENV, KEY)
    assert resolve_key(ON) == KEY.encode()


def _cli(tmp_path: Path, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "ingest",
            "--set",
            "privacy.pseudonymize_user_id=true",
            "--set",
            f"lake.root={tmp_path / 'lake'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_refuses_to_start_without_a_usable_key(tmp_path: Path) -> None:
    missing = _cli(tmp_path, None)
    assert missing.returncode == 2, missing.stderr
    assert "config error" in missing.stderr and KEY_ENV in missing.stderr
    short = _cli(tmp_path, "tiny-key-value")
    assert short.returncode == 2, short.stderr
    assert "shorter than 32 bytes" in short.stderr
    assert "tiny-key-value" not in short.stderr + short.stdout
    # Refused before any Spark work: no table, no Spark start-up in the output.
    assert not (tmp_path / "lake").exists()
    assert "SparkContext" not in missing.stderr + short.stderr


def test_ingest_refuses_to_run_without_the_key(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    raw = tmp_path / "in.jsonl"
    raw.write_text(_line("e1", "u1", 0) + "\n")
    config = _config(tmp_path / "run", [raw], privacy=ON, generated=False)
    lake = Lake(spark, config.lake)
    with pytest.raises(PrivacyError, match=KEY_ENV):
        ingest.run(spark, lake, config, run_id="r")
    assert not lake.exists("events") and not lake.exists("events_quarantine")


# ----------------------------------------------------------------------- end to end


def _line(event_id: str, user: str | None, minute: int, **extra: object) -> str:
    record: dict[str, object] = {
        "event_id": event_id,
        "event_time": f"2024-03-01T09:{minute:02d}:00Z",
        "type": "view",
        "product_id": "p-7",
        "category_code": "kids.toys",
        "price": 12.5,
    }
    if user is not None:
        record["user"] = user
    record.update(extra)
    return json.dumps(record)


#: Hand-made records whose raw user ids must not survive in events_quarantine.raw.
SECRET_LINES = [
    _line("s1", "u-secret-kept", 1),  # kept: becomes an event, a session, a sequence
    _line("s2", "u-secret-kept", 2, type="cart"),
    _line("s3", "u-secret-located", 3, price=-1),  # quarantined; the id is located and replaced
    _line("s4", "u-secret-cut", 4)[:70],  # malformed: the id cannot be located safely
    _line("s5", None, 5, userId="u-secret-drift"),  # the id sits under a drifted field name
    # The id also appears inside another token, where a whole-token replacement cannot reach.
    _line("s6", "u-secret-embedded", 6, price=-1, product_id="xu-secret-embeddedy"),
]
SECRET_IDS = (
    "u-secret-kept",
    "u-secret-located",
    "u-secret-cut",
    "u-secret-drift",
    "u-secret-embedded",
)


def _config(
    root: Path, extra_inputs: list[Path], *, privacy: PrivacyConfig, generated: bool = True
) -> AppConfig:
    """Generated data (when ``generated``) plus ``extra_inputs``, all in the synthetic mapping."""
    base = AppConfig()
    spec = base.ingest.source.inputs[0]
    synthetic = dataclasses.replace(spec, paths=(str(root / "raw" / "jsonl"),))
    extra = dataclasses.replace(spec, paths=tuple(str(p) for p in extra_inputs))
    inputs = (synthetic, extra) if generated else (extra,)
    return dataclasses.replace(
        base,
        generate=dataclasses.replace(
            base.generate,
            n_users=36,
            n_personas=3,
            n_days=2,
            output_dir=str(root / "raw"),
            ground_truth_path=str(root / "truth.csv"),
            noise=NoiseConfig(malformed_rate=0.03, schema_drift_rate=0.03, bot_users=1),
        ),
        ingest=dataclasses.replace(
            base.ingest, source=dataclasses.replace(base.ingest.source, inputs=inputs)
        ),
        lake=LakeConfig(engine="delta-rs", root=str(root / "lake")),
        encoder=EncoderConfig(max_length=64, batch_size=32),
        cluster=ClusterConfig(k=3, max_iter=10, model_root=str(root / "models")),
        evaluate=dataclasses.replace(
            base.evaluate,
            stability_seeds=0,
            silhouette_sample=200,
            report_dir=str(root / "reports"),
        ),
        privacy=privacy,
    )


@dataclass(frozen=True)
class Runs:
    plain: AppConfig
    private: AppConfig
    pseudonymizer: Pseudonymizer
    #: Every raw user id of the input: the generated users (ground truth) and SECRET_IDS.
    raw_ids: frozenset[str]
    logs: str


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """The same input ingested and sessionized twice, without and with pseudonymisation; the
    pseudonymised lake is also embedded, clustered and evaluated against the ground truth."""
    root = tmp_path_factory.mktemp("privacy")
    secret_file = root / "secret.jsonl"
    secret_file.write_text("\n".join(SECRET_LINES) + "\n")
    plain = _config(root / "plain", [secret_file], privacy=PrivacyConfig())
    generate(plain.generate)
    private = dataclasses.replace(
        _config(root / "plain", [secret_file], privacy=ON),
        lake=LakeConfig(engine="delta-rs", root=str(root / "private-lake")),
    )
    truth = (root / "plain" / "truth.csv").read_text().splitlines()[1:]
    lake = Lake(spark, plain.lake)
    ingest.run(spark, lake, plain, run_id="plain")
    sessionize.run(spark, lake, plain, run_id="plain")
    raw_ids = frozenset(
        [line.split(",")[0] for line in truth]
        + list(SECRET_IDS)
        + [r[0] for r in lake.read("events").select("user_id").distinct().collect()]
    )

    collect = _Collect()
    collect.setFormatter(logging.Formatter("%(name)s %(message)s"))
    jobs_log = logging.getLogger("jobs")
    level = jobs_log.level
    jobs_log.addHandler(collect)
    jobs_log.setLevel(logging.DEBUG)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        try:
            lake = Lake(spark, private.lake)
            for stage in (ingest, sessionize, embed, cluster, evaluate):
                stage.run(spark, lake, private, run_id="20240301T000000Z-private")
        finally:
            jobs_log.removeHandler(collect)
            jobs_log.setLevel(level)
    yield Runs(plain, private, Pseudonymizer(KEY.encode()), raw_ids, "\n".join(collect.lines))


def _as_json(df: DataFrame) -> list[str]:
    return [r[0] for r in df.select(F.to_json(F.struct("*"))).collect()]


@pytest.mark.slow
def test_no_raw_user_id_reaches_any_table_report_or_log(spark: SparkSession, runs: Runs) -> None:
    pattern = re.compile(
        "|".join(re.escape(i) for i in sorted(runs.raw_ids, key=len, reverse=True))
    )
    plain = Lake(spark, runs.plain.lake)
    # The scan finds raw ids where they are: the plain run's tables hold them.
    assert pattern.search(" ".join(_as_json(plain.read("events"))))
    assert pattern.search(" ".join(_as_json(plain.read("events_quarantine"))))

    lake = Lake(spark, runs.private.lake)
    scanned = []
    for table in TABLES:  # every table of the registry
        if not lake.exists(table):
            continue
        rows = _as_json(lake.read(table))  # every column, nested ones included, as text
        leaks = [row[:200] for row in rows if pattern.search(row)]
        assert not leaks, f"raw user ids in {table}: {leaks[:3]}"
        scanned.append(table)
    assert {
        "events",
        "events_quarantine",
        "sessions",
        "user_sequences",
        "embeddings",
        "cluster_assignments",
        "cluster_profiles",
    } <= set(scanned)
    # Files as written: Delta logs (with column statistics) and the evaluation report.
    written = [p for p in Path(runs.private.lake.root or "").rglob("*.json") if p.is_file()]
    written += [p for p in Path(runs.private.evaluate.report_dir).rglob("*.md")]
    assert written
    for path in written:
        text = path.read_text(errors="replace")
        assert not pattern.search(text), path
        assert KEY not in text, path
    # The key is never written or logged, though the run logged plenty.
    lake_bytes = b"".join(
        p.read_bytes() for p in Path(runs.private.lake.root or "").rglob("*") if p.is_file()
    )
    assert KEY.encode() not in lake_bytes
    assert "reconciliation OK" in runs.logs and KEY not in runs.logs


@pytest.mark.slow
def test_tables_equal_the_plain_run_up_to_the_id_mapping(spark: SparkSession, runs: Runs) -> None:
    plain, private = Lake(spark, runs.plain.lake), Lake(spark, runs.private.lake)
    mapping = spark.createDataFrame(
        [(i, runs.pseudonymizer.hex(i)) for i in runs.raw_ids], "user_id string, __h string"
    )

    def mapped(df: DataFrame) -> DataFrame:
        return (
            df.join(mapping, "user_id", "left")
            .withColumn("user_id", F.col("__h"))
            .drop("__h")
            .select(*df.columns)
        )

    events = plain.read("events")
    assert events.where(F.col("user_id") == "u-secret-kept").count() == 2
    assertDataFrameEqual(
        mapped(events).drop("ingest_run_id"), private.read("events").drop("ingest_run_id")
    )
    assert all(HEX64.match(r[0]) for r in private.read("events").select("user_id").collect())
    # session_id hashes the user, so it differs; everything else is the same.
    assertDataFrameEqual(
        mapped(plain.read("sessions")).drop("session_id"),
        private.read("sessions").drop("session_id"),
    )

    def sequences(df: DataFrame) -> DataFrame:
        return df.withColumn("events", F.transform("events", lambda e: e.dropFields("session_id")))

    assertDataFrameEqual(
        mapped(sequences(plain.read("user_sequences"))), sequences(private.read("user_sequences"))
    )


@pytest.mark.slow
def test_quarantined_records_keep_their_text_with_the_id_replaced_or_are_redacted(
    spark: SparkSession, runs: Runs
) -> None:
    hex_of = runs.pseudonymizer.hex
    plain = Lake(spark, runs.plain.lake).read("events_quarantine").collect()
    private = Lake(spark, runs.private.lake).read("events_quarantine").collect()
    by_hmac = {hex_of(r["raw"]): r["raw"] for r in plain}
    restore = [(hex_of(i), i) for i in runs.raw_ids]

    def original(raw: str) -> str:
        """The raw record before pseudonymisation, recovered with the key."""
        redacted = REDACTED.match(raw)
        if redacted:
            before = by_hmac[redacted.group(2)]
            assert len(before) == int(redacted.group(1))
            return before
        for hashed, user in restore:
            raw = raw.replace(hashed, user)
        return raw

    # Same records, same reasons and files: only the raw text is pseudonymised.
    assert Counter((r["reason"], r["source_file"], original(r["raw"])) for r in private) == Counter(
        (r["reason"], r["source_file"], r["raw"]) for r in plain
    )
    by_event = {}
    for r in private:
        match = re.search(r'"event_id": "(s\d)"', original(r["raw"]))
        if match and r["source_file"].endswith("secret.jsonl"):
            by_event[match.group(1)] = r["raw"]
    located = json.loads(SECRET_LINES[2].replace("u-secret-located", hex_of("u-secret-located")))
    assert json.loads(by_event["s3"]) == located
    for unlocatable in ("s4", "s5", "s6"):
        assert REDACTED.match(by_event[unlocatable]), by_event[unlocatable]
    # The generator's own bad records (cut lines, a renamed user field) took both paths too.
    forms = Counter("redacted" if REDACTED.match(r["raw"]) else "replaced" for r in private)
    assert forms["redacted"] > 3 and forms["replaced"] > 1


@pytest.mark.slow
def test_ground_truth_is_pseudonymised_before_evaluation_joins_it(
    spark: SparkSession, runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_truth = evaluate._ground_truth(spark, runs.plain)
    assert plain_truth is not None
    expected = {(runs.pseudonymizer.hex(r["user_id"]), r["persona"]) for r in plain_truth.collect()}
    monkeypatch.setenv(KEY_ENV, KEY)
    truth = evaluate._ground_truth(spark, runs.private)
    assert truth is not None
    got = {(r["user_id"], r["persona"]) for r in truth.collect()}
    assert got == expected
    clustered = {
        r[0]
        for r in Lake(spark, runs.private.lake)
        .read("cluster_assignments")
        .select("user_id")
        .collect()
    }
    # Every clustered user is found in the truth, except the hand-made one that has none.
    assert clustered - {runs.pseudonymizer.hex("u-secret-kept")} <= {u for u, _ in got}
    assert len(clustered & {u for u, _ in got}) == runs.private.generate.n_users
    metrics = Lake(spark, runs.private.lake).read("cluster_metrics")
    assert metrics.where("metric = 'ari_vs_truth' and method = 'embedding'").count() == 1
