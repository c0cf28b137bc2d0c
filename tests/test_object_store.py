"""Object storage: every path operation works on URIs, proven against a local S3 server.

* The URI rules of :mod:`jobs.core.lake.paths` for every scheme the lake accepts (pure).
* Against a moto S3 server on loopback (``python -m moto.server``, its own process: in this
  process its threads would wait on the GIL that some delta-rs calls hold while they wait on
  the network, e.g. ``DeltaTable.history()`` hangs): delta-rs commits are conditional puts, so
  of two writers of one version exactly one lands; the Lake, ``jobs.explore`` and the upload
  helpers on an ``s3a://`` root; errors that name the table and the settings.
* The round trip (README, "Object storage"): ``generate`` uploads the raw files to
  ``s3a://segments-lake/<prefix>/raw``; ``pipeline --from ingest --to sessionize`` runs Spark
  with hadoop-aws (resolved from Maven Central) on the ``s3a://`` lake with
  ``lake.engine: delta-rs`` (Spark writes the Parquet files through S3A, delta-rs commits
  through its object store, and sessionize reads ingest's tables back through S3A); the tables
  then read alike with delta-rs, polars and DuckDB.  The ``slow`` test runs the whole pipeline
  to ``evaluate`` (model and report on S3) and then an incremental run, a new process reading
  the watermark and tables the first one left.

Credentials are moto's fake ones, in the environment only (never in the configuration).
Skipped only where moto is not installed, or where hadoop-aws is neither in the Ivy cache nor
downloadable (each skip says so).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest
import yaml

from jobs import explore
from jobs.core.config import AppConfig, LakeConfig
from jobs.core.lake import Lake, LakeError
from jobs.core.lake import paths as lake_paths
from jobs.core.lake.paths import Outbox, Storage, native_uri, spark_uris

from .conftest import REPO, require_maven

pytestmark = pytest.mark.object_store

BUCKET = "segments-lake"
#: moto accepts any keys; they reach delta-rs and S3A through the environment only.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}
#: ``python -m jobs.cli`` arguments of the round trip and of the slow test (README shows them).
ROUND_TRIP = (("generate",), ("pipeline", "--from", "ingest", "--to", "sessionize"))
WHOLE_RUN = ("pipeline", "--from", "ingest", "--run-id", "s3-run")
INCREMENTAL_RUN = ("pipeline", "--from", "ingest", "--to", "sessionize")


# ==================================================================== URI rules (pure)


@pytest.mark.parametrize(
    ("configured", "native"),
    [
        ("s3a://b/lake/events", "s3://b/lake/events"),
        ("s3n://b/lake/events", "s3://b/lake/events"),
        ("s3://b/lake/events/", "s3://b/lake/events"),
        ("abfss://c@acct.dfs.core.windows.net/lake", "abfss://c@acct.dfs.core.windows.net/lake"),
        ("gs://b/lake/events", "gs://b/lake/events"),
        ("file:///tmp/a%20b/lake", "/tmp/a b/lake"),
        ("file:/tmp/lake", "/tmp/lake"),
        ("/Volumes/main/clickstream/lake/events", "/Volumes/main/clickstream/lake/events"),
        ("data/lake", os.path.abspath("data/lake")),
    ],
)
def test_native_uri_of_every_scheme(configured: str, native: str) -> None:
    assert native_uri(configured, where="lake.root") == native


def test_dbfs_paths_use_the_driver_mount_or_say_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lake_paths, "DBFS_MOUNT", str(tmp_path / "no-mount"))
    with pytest.raises(LakeError, match=r"^lake\.root: dbfs:/lake is a DBFS path.*lake\.engine"):
        native_uri("dbfs:/lake", where="lake.root")
    monkeypatch.setattr(lake_paths, "DBFS_MOUNT", str(tmp_path))
    assert native_uri("dbfs:/lake/events", where="lake.root") == f"{tmp_path}/lake/events"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/lake", r"ftp://host/lake uses the scheme ftp:, which delta-rs cannot reach"),
        ("s3a:///lake", r"s3a:///lake names no bucket or container; write s3a://<bucket>/"),
        ("file://otherhost/lake", r"names host 'otherhost'; use file:///<path>"),
    ],
)
def test_unreachable_uris_raise_lake_errors_naming_the_setting(uri: str, message: str) -> None:
    with pytest.raises(LakeError, match=rf"^lake\.root: .*{message}"):
        native_uri(uri, where="lake.root")


def test_lake_keeps_uris_as_written_and_refuses_a_bad_one_by_table() -> None:
    no_spark = cast(Any, None)  # the delta-rs engine needs no session to resolve locations
    lake = Lake(no_spark, LakeConfig(engine="delta-rs", root="file:///srv/lake/"))
    assert lake.location("events").path == "file:///srv/lake/events"
    assert Lake(no_spark, LakeConfig(engine="delta-rs", root="s3a://b/l")).location(
        "sessions"
    ).path == ("s3a://b/l/sessions")
    bad = Lake(no_spark, LakeConfig(engine="delta-rs", root="ftp://host/lake"))
    with pytest.raises(
        LakeError,
        match=r"^table events \(lake\.root or lake\.tables\.events\.path\): ftp://host/lake/"
        r"events uses the scheme ftp:",
    ):
        bad.exists("events")


def test_spark_reads_delta_rs_file_uris_in_the_tables_own_spelling() -> None:
    files = ["s3://b/t/d=1/part-0.parquet", "s3://other/abs.parquet", "/dbfs/t/x.parquet"]
    assert spark_uris(files, native_root="s3://b/t", spark_root="s3a://b/t/") == [
        "s3a://b/t/d=1/part-0.parquet",
        "s3a://other/abs.parquet",
        "/dbfs/t/x.parquet",
    ]
    assert spark_uris(files[2:], native_root="/dbfs/t", spark_root="dbfs:/t") == [
        "dbfs:/t/x.parquet"
    ]
    assert spark_uris(["/l/t/a.parquet"], native_root="/l/t", spark_root="/l/t") == [
        "/l/t/a.parquet"
    ]


# ==================================================================== a moto server


@dataclass(frozen=True)
class S3:
    endpoint: str
    #: lake.storage_options for it (no credentials: those are in the environment).
    options: dict[str, str]
    client: Any


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto S3 server on a free loopback port with the bucket ``segments-lake``, and the
    fake credentials in this process's environment (restored afterwards)."""
    boto3 = pytest.importorskip("boto3", reason="boto3 not installed (the test extra has it)")
    pytest.importorskip("moto.server", reason="moto[server] not installed (the test extra has it)")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as env:
            for key, value in FAKE_CREDENTIALS.items():
                env.setenv(key, value)
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            options = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true",
            }
            yield S3(endpoint, options, client)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _keys(s3: S3, prefix: str) -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_delta_rs_commits_on_s3_are_conditional_puts(s3: S3) -> None:
    """delta-rs (>= 1.0) writes a log entry with ``If-None-Match: *``: a writer whose version
    is taken fails instead of overwriting it; no locking provider is configured."""
    from botocore.exceptions import ClientError
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import CommitFailedError

    s3.client.put_object(Bucket=BUCKET, Key="atomic/probe", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.client.put_object(Bucket=BUCKET, Key="atomic/probe", Body=b"2", IfNoneMatch="*")

    uri, options = f"s3://{BUCKET}/atomic/table", s3.options
    write_deltalake(uri, pa.table({"x": [1, 2]}), storage_options=options)
    first, second = (
        DeltaTable(uri, storage_options=options),
        DeltaTable(uri, storage_options=options),
    )
    write_deltalake(first, pa.table({"x": [3]}), mode="append")
    with pytest.raises(CommitFailedError):
        write_deltalake(
            second,
            pa.table({"x": [4]}),
            mode="append",
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    assert sorted(table.to_pyarrow_table().column("x").to_pylist()) == [1, 2, 3]
    log = _keys(s3, "atomic/table/_delta_log/")
    assert log == [f"atomic/table/_delta_log/{v:020d}.json" for v in (0, 1)]


def test_lake_and_explore_on_an_s3a_root(s3: S3) -> None:
    from deltalake import write_deltalake

    metrics = pa.table({"run_id": ["r1", "r1", "r2"], "value": [1.0, 2.0, 3.0]})
    write_deltalake(
        f"s3://{BUCKET}/explore/lake/cluster_metrics",
        metrics,
        partition_by=["run_id"],
        storage_options=s3.options,
    )
    config = LakeConfig(
        engine="delta-rs", root=f"s3a://{BUCKET}/explore/lake", storage_options=s3.options
    )
    lake = Lake(cast(Any, None), config)
    assert (lake.exists("cluster_metrics"), lake.exists("events")) == (True, False)
    assert lake.version("cluster_metrics") == 0
    info = lake.describe("cluster_metrics")
    assert (info.location, info.version, info.rows) == (
        f"s3a://{BUCKET}/explore/lake/cluster_metrics",
        0,
        3,
    )
    assert lake.txn_version("cluster_metrics", "ingest") is None

    found = explore.existing_tables(config)
    assert found == {"cluster_metrics": f"s3://{BUCKET}/explore/lake/cluster_metrics"}
    con = explore.duckdb_views(config)
    assert con.execute(
        "SELECT run_id, sum(value) FROM cluster_metrics GROUP BY 1 ORDER BY 1"
    ).fetchall() == [
        ("r1", 3.0),
        ("r2", 3.0),
    ]
    history = explore.delta_table(config, "cluster_metrics").history()
    assert [h["operation"] for h in history] == ["WRITE"]

    missing = Lake(
        cast(Any, None),
        LakeConfig(engine="delta-rs", root="s3a://no-such-bucket/lake", storage_options=s3.options),
    )
    with pytest.raises(
        LakeError,
        match=r"^table events \(lake\.root or lake\.tables\.events\.path\): storage error "
        r"\(.*NoSuchBucket.*\); check the location, lake\.storage_options",
    ):
        missing.exists("events")


def test_outbox_uploads_local_files_to_s3(s3: S3, tmp_path: Path) -> None:
    storage = Storage(s3.options)
    with Outbox(storage, f"s3a://{BUCKET}/outbox/run-1/", where="evaluate.report_dir") as box:
        assert box.staged and box.native == f"s3://{BUCKET}/outbox/run-1"
        (box.local / "plots").mkdir()
        (box.local / "report.md").write_text("# report\n")
        # Larger than one upload chunk (16 MiB): written in parts.
        (box.local / "plots" / "a.png").write_bytes(b"\x89PNG" * 5_000_000)
        box.publish()
        staged = box.local
        assert box.shown("report.md") == f"s3a://{BUCKET}/outbox/run-1/report.md"
    assert not staged.exists()
    assert _keys(s3, "outbox/") == ["outbox/run-1/plots/a.png", "outbox/run-1/report.md"]
    body = s3.client.get_object(Bucket=BUCKET, Key="outbox/run-1/plots/a.png")["Body"].read()
    assert body == b"\x89PNG" * 5_000_000
    storage.clear_dir(f"s3://{BUCKET}/outbox")
    assert _keys(s3, "outbox/") == []
    with Outbox(storage, str(tmp_path / "local"), where="evaluate.report_dir") as box:
        assert not box.staged and box.local == tmp_path / "local"


# ==================================================================== the round trip


def test_readme_shows_the_overlay_and_the_commands_the_tests_run() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Object storage") :]
    section = section[: section.index("\n## ", 1)]
    example = s3_profile("http://127.0.0.1:5000", prefix="trip", hadoop_aws=_hadoop_aws())
    assert yaml.safe_dump(example, sort_keys=False) in section
    cli = ".venv/bin/python -m jobs.cli"
    for args in ROUND_TRIP:
        assert f"{cli} {' '.join(args)} --conf s3.yaml\n" in section, args
    assert f"{cli} {' '.join(WHOLE_RUN)} --conf s3.yaml\n" in section
    incremental = f"{cli} {' '.join(INCREMENTAL_RUN)} --conf s3.yaml --conf conf/incremental.yaml"
    assert incremental in section


def _hadoop_aws() -> str:
    """hadoop-aws matching the Hadoop client jars pyspark ships (3.4.1 for pyspark 4.0.1)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    (api,) = jars.glob("hadoop-client-api-*.jar")
    return f"org.apache.hadoop:hadoop-aws:{api.stem.removeprefix('hadoop-client-api-')}"


def s3_profile(endpoint: str, *, prefix: str, hadoop_aws: str) -> dict[str, Any]:
    """The overlay of README's "Object storage" (there with endpoint http://127.0.0.1:5000)."""
    root = f"s3a://{BUCKET}/{prefix}"
    return {
        "spark": {
            "master": "local[2]",
            "driver_memory": "1g",
            "shuffle_partitions": 2,
            "packages": [hadoop_aws],
            "extra": {
                "spark.hadoop.fs.s3a.endpoint": endpoint,
                "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
            },
        },
        "lake": {
            "engine": "delta-rs",
            "root": f"{root}/lake",
            "storage_options": {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true",
            },
        },
        "generate": {
            "n_users": 60,
            "n_days": 2,
            "output_dir": f"{root}/raw",
            "ground_truth_path": f"{root}/truth/personas.csv",
        },
        "ingest": {
            "source": {
                "inputs": [
                    {
                        "paths": [f"{root}/raw/jsonl"],
                        "format": "jsonl",
                        # the synthetic source's mapping (the config's default)
                        "columns": dict(AppConfig().ingest.source.inputs[0].columns),
                    }
                ]
            }
        },
        "encoder": {"precision": "fp32"},
        "cluster": {"k": 4, "model_root": f"{root}/models"},
        "evaluate": {
            "stability_seeds": 0,
            "stability_bootstraps": 0,
            "bootstrap_resamples": 100,
            "silhouette_sample": 250,
            "report_dir": f"{root}/reports",
        },
        "mlflow": {"enabled": False},
    }


def _segments(profile: Path, *args: str, overlay: Path | None = None) -> str:
    """``python -m jobs.cli <args> --conf <profile> [--conf <overlay>]`` in its own process
    (the fake credentials in its environment); its logs."""
    confs = [profile] if overlay is None else [profile, overlay]
    command = [sys.executable, "-m", "jobs.cli", *args]
    for conf in confs:
        command += ["--conf", str(conf)]
    env = {**os.environ, **FAKE_CREDENTIALS, "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    logs = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)}:\n{logs[-8000:]}"
    return logs


def _write_profile(s3: S3, tmp_path: Path, prefix: str) -> tuple[Path, LakeConfig]:
    coordinate = _hadoop_aws()
    require_maven(coordinate)
    profile = s3_profile(s3.endpoint, prefix=prefix, hadoop_aws=coordinate)
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    lake = LakeConfig(engine="delta-rs", root=profile["lake"]["root"], storage_options=s3.options)
    return path, lake


def _counts(lake: LakeConfig, tables: list[str]) -> dict[str, int]:
    """Rows per table by DuckDB, checked equal to polars' and delta-rs' own counts."""
    import polars as pl

    con = explore.duckdb_views(lake, tables=tables)
    counts: dict[str, int] = {}
    for table, path in explore.existing_tables(lake, tables).items():
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        by_polars = pl.read_delta(path, storage_options=dict(lake.storage_options)).height
        by_delta_rs = explore.delta_table(lake, table).to_pyarrow_table().num_rows
        assert row is not None and row[0] == by_polars == by_delta_rs, table
        counts[table] = by_polars
    return counts


@pytest.mark.slow  # Spark and delta-rs against moto: about 40 s, the default run's largest
def test_spark_and_delta_rs_share_an_s3a_lake(s3: S3, tmp_path: Path) -> None:
    profile, lake = _write_profile(s3, tmp_path, "trip")
    _segments(profile, *ROUND_TRIP[0])
    raw = _keys(s3, "trip/raw/jsonl/")
    assert raw and all(k.endswith(".jsonl") for k in raw)
    assert _keys(s3, "trip/truth/") == ["trip/truth/personas.csv"]

    # sessionize reads, through S3A, the events table that ingest's delta-rs commit made.
    logs = _segments(profile, *ROUND_TRIP[1])
    assert f"packages={_hadoop_aws()}" in logs and "(delta-rs," in logs
    assert f"overwrite s3a://{BUCKET}/trip/lake/sessions: " in logs

    tables = ["events", "events_quarantine", "ingest_log", "sessions", "user_sequences"]
    counts = _counts(lake, tables)
    assert set(counts) == set(tables) and counts["events"] > 1000
    con = explore.duckdb_views(lake, tables=["events", "sessions", "ingest_log"])
    assert con.execute("SELECT sum(n_events) FROM sessions").fetchone() == (counts["events"],)
    logged = [r[0] for r in con.execute("SELECT source_file FROM ingest_log ORDER BY 1").fetchall()]
    assert logged == [f"s3a://{BUCKET}/{k}" for k in raw]
    # Staged Parquet files were moved into the tables and their folders removed.
    assert not [k for k in _keys(s3, "trip/lake/") if "/_staging/" in k]


@pytest.mark.slow
def test_whole_pipeline_and_an_incremental_run_on_s3(s3: S3, tmp_path: Path) -> None:
    profile, lake = _write_profile(s3, tmp_path, "full")
    _segments(profile, *ROUND_TRIP[0])
    raw = _keys(s3, "full/raw/jsonl/")
    held_back = raw[-1]  # arrives later: read by the incremental run only
    s3.client.copy_object(
        Bucket=BUCKET, Key=f"held/{held_back}", CopySource={"Bucket": BUCKET, "Key": held_back}
    )
    s3.client.delete_object(Bucket=BUCKET, Key=held_back)

    logs = _segments(profile, *WHOLE_RUN)
    assert f"report: s3a://{BUCKET}/full/reports/s3-run/report.md" in logs
    assert "full/reports/s3-run/report.md" in _keys(s3, "full/reports/")
    assert _keys(s3, "full/models/s3-run/metadata/")
    first = _counts(lake, ["events", "cluster_assignments", "cluster_metrics"])
    assert first["cluster_assignments"] > 0 and first["cluster_metrics"] > 0

    s3.client.copy_object(
        Bucket=BUCKET, Key=held_back, CopySource={"Bucket": BUCKET, "Key": f"held/{held_back}"}
    )
    incremental = REPO / "conf" / "incremental.yaml"
    _segments(profile, *INCREMENTAL_RUN, overlay=incremental)
    con = explore.duckdb_views(lake, tables=["ingest_log", "events", "sessions"])
    modes = con.execute("SELECT mode, count(*) FROM ingest_log GROUP BY 1 ORDER BY 1").fetchall()
    assert modes == [("full", len(raw) - 1), ("incremental", 1)]
    events = con.execute("SELECT count(*) FROM events").fetchone()
    assert events is not None and events[0] > first["events"]
    assert con.execute("SELECT sum(n_events) FROM sessions").fetchone() == events
