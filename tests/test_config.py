"""Typed configuration: defaults, overlays, overrides and the errors people will see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from jobs.core.config import AppConfig, ConfigError, InputSpec, config_to_dict, load_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_base_yaml_spells_out_exactly_the_code_defaults() -> None:
    assert load_config([CONF / "base.yaml"]) == AppConfig()


@pytest.mark.parametrize(
    "profile",
    [
        "local.yaml",
        "cluster.yaml",
        "databricks.yaml",
        "cluster-gpu.yaml",
        "incremental.yaml",
        "sources/rees46.yaml",
        "sources/diginetica.yaml",
    ],
)
def test_every_shipped_profile_loads_with_every_setting_it_makes(profile: str) -> None:
    import yaml

    config = load_config([CONF / "base.yaml", CONF / profile])
    written = yaml.safe_load((CONF / profile).read_text())
    # Each value the profile writes is the loaded config's (lists entry by entry; a mapping
    # in a list, e.g. an input, may leave the rest of its keys at their defaults).
    _assert_sets(written, config_to_dict(config), where=profile)


def _assert_sets(written: Any, loaded: Any, *, where: str) -> None:
    if isinstance(written, dict):
        assert isinstance(loaded, dict), where
        for key, value in written.items():
            assert key in loaded, f"{where}.{key}"
            _assert_sets(value, loaded[key], where=f"{where}.{key}")
    elif isinstance(written, list):
        assert isinstance(loaded, list) and len(loaded) == len(written), where
        for i, (value, got) in enumerate(zip(written, loaded, strict=True)):
            _assert_sets(value, got, where=f"{where}[{i}]")
    else:
        assert loaded == written, f"{where}: {loaded!r} != {written!r}"


def test_incremental_profile_switches_the_three_incremental_stages() -> None:
    config = load_config([CONF / "local.yaml", CONF / "incremental.yaml"])
    modes = (config.ingest.mode, config.sessionize.mode, config.embed.mode)
    assert modes == ("incremental", "incremental", "incremental")
    assert AppConfig().ingest.mode == "full"  # full refresh stays the default


def test_databricks_profile_uses_unity_catalog_names() -> None:
    config = load_config([CONF / "databricks.yaml"])
    assert config.lake.engine == "spark"
    assert config.lake.root is None
    assert config.lake.catalog_schema == "main.clickstream"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sessionize:\n  inactivity_gap: 600\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    message = str(err.value)
    assert "sessionize.inactivity_gap" in message and str(bad) in message
    assert "inactivity_gap_s" in message  # the known keys are listed to help


def test_wrong_type_names_key_expected_and_origin(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  n_users: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'generate.n_users' expects an integer"):
        load_config([bad])
    with pytest.raises(ConfigError, match=r"--set spark.master=\[1\]: key 'spark.master'"):
        load_config([], ["spark.master=[1]"])
    with pytest.raises(ConfigError, match="true or false"):
        load_config([], ["sessionize.split_at_midnight=3"])


def test_set_overrides_win_over_files_and_parse_yaml_values(tmp_path: Path) -> None:
    overlay = tmp_path / "o.yaml"
    overlay.write_text("sessionize:\n  inactivity_gap_s: 600\n  max_events: 50\n")
    config = load_config(
        [overlay], ["sessionize.inactivity_gap_s=900", "generate.formats=[jsonl, parquet]"]
    )
    assert config.sessionize.inactivity_gap_s == 900
    assert config.sessionize.max_events == 50  # untouched keys of the section survive
    assert config.generate.formats == ("jsonl", "parquet")
    assert config.generate.n_users == AppConfig().generate.n_users


def test_mappings_are_replaced_whole_not_merged() -> None:
    config = load_config([CONF / "sources" / "rees46.yaml"])
    source = config.ingest.source
    assert source.name == "rees46"
    # The synthetic mapping's `query` / `event_id` columns must not leak into the REES46 one.
    assert "query" not in source.inputs[0].columns
    assert "event_id" not in source.inputs[0].columns
    assert isinstance(source.inputs[0], InputSpec)


def test_missing_file_and_invalid_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config([tmp_path / "nope.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("spark: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([broken])


def test_config_is_frozen() -> None:
    config = AppConfig()
    with pytest.raises(AttributeError):
        config.sessionize.max_events = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("cluster.backend=gpuu", "cluster.backend", "auto, gpu, cpu"),
        ("lake.engine=deltars", "lake.engine", "auto, spark, delta-rs"),
        ("embed.unit=users", "embed.unit", "user, session"),
        ("ingest.mode=incrementl", "ingest.mode", "full, incremental"),
        ("encoder.precision=int4", "encoder.precision", "auto, fp32, bf16, fp16"),
        ("generate.formats=[jsonl, xml]", "generate.formats[1]", "jsonl, csv, parquet"),
    ],
)
def test_enum_settings_are_checked_at_load_time(override: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    message = str(err.value)
    assert f"--set {override}: key '{key}' must be one of {allowed}" in message


def test_enum_in_a_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  source:\n    event_type_map: {click: clicked}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'ingest.source.event_type_map.click'"):
        load_config([bad])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["cluster.k=1"], "cluster.k must be at least 2"),
        (["cluster.k=[4, 1]"], "cluster.k must be at least 2"),
        (["cluster.seed=-1"], "cluster.seed must fit in 32 bits"),
        (["encoder.price_band_edges=[60, 20]"], "encoder.price_band_edges must increase"),
        (["lake.tables={evnts: {path: /tmp/x}}"], r"lake.tables: unknown table\(s\) \['evnts'\]"),
        (
            ["train_encoder.mode=contrastive", "encoder.kind=sequence"],
            "contrastive fine-tunes the text encoder",
        ),
        (
            ["ingest.source.inputs=[{paths: [x.csv], format: csv, explode: events}]"],
            r"ingest.source.inputs\[0\].explode: only JSON lines",
        ),
    ],
)
def test_impossible_combinations_are_refused(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config([], overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "ingest.source.timezone=Europe/Berln",
            "ingest.source.timezone: 'Europe/Berln' is not an IANA zone name or a UTC offset, "
            "e.g. Europe/Berlin (did you mean Europe/Berlin",
        ),
        (
            "sessionize.timezone=+02:00",
            "sessionize.timezone: '+02:00' is not an IANA zone name, e.g. Europe/Berlin",
        ),
        ("sessionize.inactivity_gap_s=0", "sessionize.inactivity_gap_s must be positive, got 0"),
        ("sessionize.max_events=-1", "sessionize.max_events must be positive, got -1"),
        ("sessionize.lookback_hours=-1", "sessionize.lookback_hours must be 0 or more, got -1"),
        (
            "ingest.source.min_event_ts=yesterday",
            "ingest.source.min_event_ts='yesterday': write an ISO-8601 instant",
        ),
        (
            "ingest.source.min_event_ts='2100-01-02'",
            "ingest.source.min_event_ts (2100-01-02) must be before max_event_ts",
        ),
        (
            "ingest.source.max_record_bytes=0",
            "ingest.source.max_record_bytes must be positive, got 0",
        ),
        (
            "ingest.source.event_type_map={View: view, view: view}",
            "ingest.source.event_type_map: keys 'View' and 'view' are the same raw event type",
        ),
    ],
)
def test_values_spark_would_reject_mid_run_are_refused_at_load(override: str, message: str) -> None:
    # Before: a Java stack trace halfway through the run, or every record quarantined.
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("zone", ["+02:00", "UTC+01:00", "GMT-5", "Z", "PST", "America/New_York"])
def test_time_zones_spark_reads_load_for_the_source(zone: str) -> None:
    assert load_config([], [f"ingest.source.timezone={zone}"]).ingest.source.timezone == zone


def test_partitioning_is_not_configuration() -> None:
    # Partition columns belong to the table contract (docs/tables.md), not to a profile.
    with pytest.raises(ConfigError, match=r"unknown key 'lake.tables.events.partition_by'"):
        load_config([], ["lake.tables={events: {partition_by: [user_id]}}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("spark.remote=localhost:15002", "spark.remote='localhost:15002': write sc://host:port"),
        ("spark.remote=http://h:15002", "spark.remote='http://h:15002': write sc://host:port"),
        (
            "spark.packages=[io.delta:delta-spark_2.13]",
            "spark.packages: ['io.delta:delta-spark_2.13']",
        ),
        (
            "spark.driver_java_options=Xmx2g",
            "spark.driver_java_options='Xmx2g': write JVM options, each starting with '-'",
        ),
        (
            """spark.driver_java_options='-Dx="a b'""",
            """spark.driver_java_options='-Dx="a b': No closing quotation""",
        ),
    ],
)
def test_connect_and_package_settings_are_checked_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config([], [override])
    assert str(caught.value).startswith(message)


def test_driver_java_options_load_as_written_and_cannot_be_set_twice() -> None:
    written = '-XX:TieredStopAtLevel=1 -Dsegments.note="two words"'
    loaded = load_config([], [f"spark.driver_java_options={written}"])
    assert loaded.spark.driver_java_options == written
    with pytest.raises(ConfigError, match=r"^spark.driver_java_options and spark.extra's"):
        load_config(
            [],
            [
                "spark.driver_java_options=-Xss4m",
                "spark.extra={spark.driver.extraJavaOptions: -Xss8m}",
            ],
        )


def test_connect_urls_and_local_servers_load() -> None:
    for remote in ("sc://localhost:15002", "sc://h:443/;token=t;use_ssl=true", "local[2]"):
        assert load_config([], [f"spark.remote={remote}"]).spark.remote == remote


def test_the_driver_jvm_starts_with_its_own_options_and_the_added_ones(
    spark: SparkSession,
) -> None:
    # tests/conftest.py builds the session with spark.driver_java_options (TEST_JVM_OPTIONS).
    jvm = spark.sparkContext._jvm  # the JVM's own view of its command line
    arguments = list(
        jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
    )
    assert "-XX:TieredStopAtLevel=1" in arguments and "-XX:+UseG1GC" in arguments
    # Spark's generated methods beyond HotSpot's 8,000 bytes are compiled too (jobs.core.session).
    assert "-XX:-DontCompileHugeMethods" in arguments
    assert any(a.startswith("-Dlog4j2.configurationFile=file:") for a in arguments)
