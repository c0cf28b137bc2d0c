"""Typed configuration: YAML files in ``conf/`` loaded into frozen dataclasses.

The dataclass defaults below are the canonical defaults; ``conf/base.yaml`` spells every one of
them out with comments (a test keeps the two identical).  Profiles such as ``conf/local.yaml``
overlay only what they change.  Loading order: defaults, then each ``--conf`` file in order,
then each ``--set dotted.key=value``.  Unknown keys and wrong types are rejected with a message
naming the key and the file (or ``--set``) that introduced it.

Merge rule: nested sections (dataclasses) merge key by key; mappings and lists are values and are
replaced whole, so a source mapping in a profile never inherits stray columns from another one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and its origin."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparkConfig:
    """How to obtain a SparkSession when none is active (an active one, e.g. Databricks', wins)."""

    master: str = "local[*]"
    app_name: str = "clickstream-segments"
    #: 0 means "2 x the cores Spark sees", which suits local mode; clusters should set it.
    shuffle_partitions: int = 0
    driver_memory: str = "4g"
    #: Extra ``spark.*`` settings applied when building a local session.
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TableSpec:
    """Where one logical table lives: a path, or a metastore / Unity Catalog name, or both."""

    path: str | None = None
    name: str | None = None
    partition_by: tuple[str, ...] = ()


def _default_tables() -> Mapping[str, TableSpec]:
    return {
        "events": TableSpec(partition_by=("event_date",)),
        "events_quarantine": TableSpec(),
        "sessions": TableSpec(partition_by=("session_date",)),
        "user_sequences": TableSpec(),
        "embeddings": TableSpec(partition_by=("unit", "model_version")),
        "cluster_assignments": TableSpec(partition_by=("run_id",)),
        "cluster_centroids": TableSpec(partition_by=("run_id",)),
        "cluster_metrics": TableSpec(partition_by=("run_id",)),
        "cluster_profiles": TableSpec(partition_by=("run_id",)),
        # Bookkeeping of incremental runs: which raw files ingest has read, which ingest runs
        # sessionize has covered.
        "ingest_log": TableSpec(),
        "sessionize_log": TableSpec(),
    }


@dataclass(frozen=True)
class LakeConfig:
    """Delta Lake storage: which engine writes the tables and where they live (SPEC section 5)."""

    #: auto | spark | delta-rs.  ``auto`` uses Spark's Delta data source when the session has it.
    engine: str = "auto"
    #: Directory under which tables without an explicit path are stored (``<root>/<table>``).
    root: str | None = "data/lake"
    #: Optional ``catalog.schema`` prefix; tables without an explicit name get ``<prefix>.<table>``
    #: (spark engine only).
    catalog_schema: str | None = None
    tables: Mapping[str, TableSpec] = field(default_factory=_default_tables)


@dataclass(frozen=True)
class NoiseConfig:
    """Imperfections the generator plants so that ingest has real work to do."""

    duplicate_rate: float = 0.01
    malformed_rate: float = 0.002
    schema_drift_rate: float = 0.002
    out_of_order_rate: float = 0.05
    late_rate: float = 0.01
    max_late_days: int = 3
    bot_users: int = 5
    #: Share of a human's events drawn from outside the persona's preferences.
    off_persona_rate: float = 0.1


@dataclass(frozen=True)
class GenerateConfig:
    """Synthetic clickstream with planted personas (SPEC section 2, stage ``generate``)."""

    seed: int = 42
    n_users: int = 5000
    n_personas: int = 6
    start_date: str = "2024-03-01"
    n_days: int = 7
    output_dir: str = "data/raw/synthetic"
    ground_truth_path: str = "data/ground_truth/personas.csv"
    #: Any of jsonl, csv, parquet; each format is written to ``<output_dir>/<format>/``.
    formats: tuple[str, ...] = ("jsonl",)
    compress: bool = False
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass(frozen=True)
class InputSpec:
    """One kind of raw file and how its fields map onto the ``events`` contract.

    ``columns`` maps an ``events`` column (``event_id``, ``user_id``, ``event_ts``,
    ``event_type``, ``item_id``, ``category``, ``brand``, ``price``, ``query``,
    ``source_session_id``) to a Spark SQL expression over the raw fields; a bare field name is
    the common case.  Raw fields are read as
    strings, so expressions see the text as it was written.
    """

    paths: tuple[str, ...] = ()
    #: jsonl | csv | parquet (gzip-compressed text files are read transparently).
    format: str = "jsonl"
    #: Reader options, e.g. ``{sep: ";", header: "true"}`` for CSV.
    options: Mapping[str, str] = field(default_factory=dict)
    columns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LookupSpec:
    """A side file joined onto raw rows, e.g. DIGINETICA's item -> category table."""

    path: str = ""
    format: str = "csv"
    options: Mapping[str, str] = field(default_factory=dict)
    #: Events column to join on -> field of the lookup file.
    join_on: Mapping[str, str] = field(default_factory=dict)
    #: Events column to fill (when still empty) -> field of the lookup file.
    columns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceConfig:
    """A source mapping: everything needed to ingest one dataset by configuration alone."""

    name: str = "synthetic"
    inputs: tuple[InputSpec, ...] = (
        InputSpec(
            paths=("data/raw/synthetic/jsonl",),
            format="jsonl",
            columns={
                "event_id": "event_id",
                "user_id": "user",
                "event_ts": "event_time",
                "event_type": "type",
                "item_id": "product_id",
                "category": "category_code",
                "brand": "brand",
                "price": "price",
                "query": "search_query",
            },
        ),
    )
    #: Raw event-type value -> one of view, add_to_cart, remove_from_cart, purchase, search, other.
    event_type_map: Mapping[str, str] = field(
        default_factory=lambda: {
            "view": "view",
            "cart": "add_to_cart",
            "remove_from_cart": "remove_from_cart",
            "purchase": "purchase",
            "search": "search",
        }
    )
    #: quarantine | other: what to do with an event type missing from ``event_type_map``.
    unknown_event_type: str = "quarantine"
    #: Spark datetime pattern for string timestamps; null means ISO-8601 / Spark's default cast.
    timestamp_format: str | None = None
    #: For numeric timestamps: s | ms | us since the epoch.
    timestamp_unit: str = "ms"
    #: Time zone of timestamps that carry no offset.
    timezone: str = "UTC"
    #: Raw values that mean "missing" (compared after trimming).
    null_values: tuple[str, ...] = ("", "NA", "null", "NULL", "None")
    lookups: tuple[LookupSpec, ...] = ()
    #: Events outside this range are quarantined as implausible.
    min_event_ts: str = "2000-01-01T00:00:00Z"
    max_event_ts: str = "2100-01-01T00:00:00Z"
    #: JSON lines and CSV rows longer than this are quarantined as oversize: no clickstream event
    #: is that large, and one such value would ride along in every session and sequence.
    max_record_bytes: int = 1048576


@dataclass(frozen=True)
class IngestConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    #: full: rebuild ``events`` from every configured file; incremental: read only the files not
    #: yet in ``ingest_log`` (new, or changed in size or modification time) and append.
    mode: str = "full"


@dataclass(frozen=True)
class BotConfig:
    """A user is a bot when any session exceeds the rate, or any day exceeds the daily count."""

    enabled: bool = True
    max_events_per_minute: float = 30.0
    #: Sessions shorter than this many events are too short to judge a rate from.
    min_events_for_rate: int = 20
    max_events_per_day: int = 2000


@dataclass(frozen=True)
class SessionizeConfig:
    """Sessionization rules (SPEC section 4); defaults follow GA / Amplitude / Snowplow practice."""

    #: A gap strictly longer than this starts a new session (a gap exactly equal does not).
    inactivity_gap_s: int = 1800
    split_at_midnight: bool = False
    #: Time zone for the midnight split and for ``session_date``.
    timezone: str = "UTC"
    #: Sessions longer than this are split into consecutive windows anchored at their first event.
    max_session_duration_s: int = 86400
    #: Keep the last ``max_events`` events in each sequence (counts keep the full length).
    max_events: int = 200
    bot: BotConfig = field(default_factory=BotConfig)
    #: full: rebuild both tables; incremental: rewrite only the ``session_date`` partitions that
    #: events from ingest runs not yet sessionized can touch, plus ``lookback_hours`` before them.
    mode: str = "full"
    #: How far before the earliest new event sessions are recomputed (late data), as GA4's 72 h.
    lookback_hours: int = 72


@dataclass(frozen=True)
class EncoderConfig:
    """Which transformer turns a rendered sequence into a vector, and how (SPEC section 6)."""

    #: text (a pretrained sentence encoder over rendered text) | sequence (a small BERT over
    #: event tokens, trained by ``train_encoder``).
    kind: str = "text"
    #: A Hugging Face model directory; null means the packaged all-MiniLM-L6-v2 for ``text`` and
    #: ``<lake.root>/../models/sequence-encoder`` for ``sequence``.
    model_path: str | None = None
    #: Tokens per sequence; the most recent events are kept when a rendering is longer.
    max_length: int = 128
    #: Sequences per forward pass.
    batch_size: int = 128
    #: auto | cpu | cuda.  auto takes the task's GPU when Spark assigned one.
    device: str = "auto"
    #: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16.
    precision: str = "auto"
    #: Render item ids too (only useful when items recur across users).
    include_item_ids: bool = False
    #: Upper bounds of the price bands cheap / low / mid / high; above the last is premium.
    price_band_edges: tuple[float, ...] = (20.0, 60.0, 200.0, 600.0)


@dataclass(frozen=True)
class EmbedConfig:
    """The ``embed`` job: which table's sequences become vectors."""

    #: user (rows of user_sequences) | session (rows of sessions).
    unit: str = "user"
    include_bots: bool = False
    #: Rows per Arrow batch handed to the UDF.
    arrow_batch_rows: int = 2048
    #: full: embed every sequence; incremental: embed only sequences whose rendered content
    #: changed (by ``content_hash``) since this model version last embedded them.
    mode: str = "full"


@dataclass(frozen=True)
class TrainEncoderConfig:
    """Self-supervised training: masked-event pre-training of the ``sequence`` encoder (``mlm``)
    or contrastive fine-tuning of the ``text`` encoder (``contrastive``)."""

    #: mlm | contrastive
    mode: str = "mlm"
    output_dir: str = "data/models/sequence-encoder"
    #: Sequences sampled from ``sessions`` for training.
    max_sequences: int = 20000
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 0.001
    mask_probability: float = 0.15
    #: contrastive mode: learning rate, InfoNCE temperature, share of events dropped per view.
    contrastive_learning_rate: float = 2e-5
    temperature: float = 0.05
    event_dropout: float = 0.3
    seed: int = 42
    #: Run the training function through pyspark.ml.torch.distributor.TorchDistributor.
    distributed: bool = False
    num_processes: int = 1


@dataclass(frozen=True)
class ClusterConfig:
    """The ``cluster`` job: K-Means on one model_version of ``embeddings`` (SPEC section 7)."""

    #: One k, or candidates to sweep (each fitted and recorded; ``criterion`` picks one).
    k: int | tuple[int, ...] = 6
    #: silhouette (highest squared-Euclidean silhouette) | elbow (knee of the SSE curve).
    criterion: str = "silhouette"
    max_iter: int = 50
    tol: float = 1e-4
    #: Must fit in 32 bits, as cuML requires.
    seed: int = 42
    #: auto | gpu (spark-rapids-ml) | cpu (Spark MLlib).  auto uses the GPU when cuML imports and
    #: executors have GPUs.
    backend: str = "auto"
    #: Which embeddings to cluster; null = the most recently embedded version of ``embed.unit``.
    model_version: str | None = None
    #: Fitted models are saved (Spark ML format) under ``<model_root>/<run_id>``.
    model_root: str = "data/models/kmeans"
    #: Assign rows with this saved model instead of fitting (``cluster --assign-only --model``).
    assign_with_model: str | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` job: metrics, baselines and profiles of one cluster run (SPEC sec. 8)."""

    #: Which cluster run to evaluate; null = the latest run in ``cluster_assignments``.
    cluster_run_id: str | None = None
    #: CSV ``user_id,persona`` for external metrics; null = ``generate.ground_truth_path`` when
    #: that file exists, otherwise no external metrics.
    ground_truth_path: str | None = None
    #: Rows in the exact-silhouette cross-check sample.
    silhouette_sample: int = 2000
    #: Extra K-Means seeds for the stability metrics.
    stability_seeds: int = 3
    #: Vocabulary cap of the TF-IDF baselines.
    tfidf_vocab_size: int = 512
    #: The report (report.md + PNG plots) goes to ``<report_dir>/<cluster run id>/``.
    report_dir: str = "data/reports"
    seed: int = 7


@dataclass(frozen=True)
class PrivacyConfig:
    """Pseudonymisation of ``user_id`` (SPEC section 9): HMAC-SHA256 under a secret key.  The
    configuration says only where the key is; the key itself never appears in a file or log."""

    pseudonymize_user_id: bool = False
    #: Environment variable holding the key (at least 32 bytes).
    key_env: str = "SEGMENTS_HMAC_KEY"
    #: Databricks secret scope and key, read with ``dbutils.secrets.get`` when running there.
    secret_scope: str | None = None
    secret_key: str | None = None


@dataclass(frozen=True)
class AppConfig:
    """The whole resolved configuration of one run."""

    spark: SparkConfig = field(default_factory=SparkConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sessionize: SessionizeConfig = field(default_factory=SessionizeConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    train_encoder: TrainEncoderConfig = field(default_factory=TrainEncoderConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(conf_files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> AppConfig:
    """Resolve defaults + each YAML file in order + ``dotted.key=value`` overrides."""
    config = AppConfig()
    for conf_file in conf_files:
        path = Path(conf_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        config = _merge(config, data, origin=str(path), prefix="")
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw_value) if raw_value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {override!r}: value is not valid YAML: {exc}") from exc
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        config = _merge(config, nested, origin=f"--set {override}", prefix="")
    return config


def config_to_dict(config: Any) -> Any:
    """Plain-data form of a config (tuples become lists), suitable for YAML/JSON and logging."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config


def log_config(config: AppConfig) -> None:
    """Log the resolved configuration once at job start, so every run records what it ran with."""
    log.info("resolved config:\n%s", yaml.safe_dump(config_to_dict(config), sort_keys=False))


def config_fingerprint(section: Any) -> str:
    """A stable short hash of a config section (used in rule versions and model versions)."""
    import hashlib

    payload = json.dumps(config_to_dict(section), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _merge(current: T, data: Mapping[str, Any], *, origin: str, prefix: str) -> T:
    """Overlay ``data`` onto the dataclass instance ``current`` with type checks."""
    assert dataclasses.is_dataclass(current)
    hints = typing.get_type_hints(type(current))
    known = {f.name for f in dataclasses.fields(current)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            close = ", ".join(sorted(known))
            raise ConfigError(f"{origin}: unknown key '{dotted}' (known keys here: {close})")
        hint = hints[key]
        existing = getattr(current, key)
        if dataclasses.is_dataclass(existing) and isinstance(value, Mapping):
            changes[key] = _merge(existing, value, origin=origin, prefix=f"{dotted}.")
        else:
            changes[key] = _coerce(value, hint, origin=origin, key=dotted)
    return dataclasses.replace(current, **changes)  # type: ignore[type-var]


def _coerce(value: Any, hint: Any, *, origin: str, key: str) -> Any:
    """Check ``value`` against the type ``hint`` and convert YAML shapes (lists, dicts) to it."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(
            f"{origin}: key '{key}' expects {expected}, got {type(value).__name__} {value!r}"
        )

    origin_type = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin_type in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors: list[ConfigError] = []
        for candidate in non_none:
            try:
                return _coerce(value, candidate, origin=origin, key=key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else fail(" or ".join(map(_type_name, non_none)))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise fail(f"a mapping for {hint.__name__}")
        return _merge(hint(), value, origin=origin, prefix=f"{key}.")
    if origin_type is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise fail("a list")
        item_type = args[0]
        return tuple(
            _coerce(v, item_type, origin=origin, key=f"{key}[{i}]") for i, v in enumerate(value)
        )
    if origin_type in (Mapping, dict, typing.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        key_type, value_type = args if args else (str, Any)
        return {
            _coerce(k, key_type, origin=origin, key=f"{key}.<key>"): _coerce(
                v, value_type, origin=origin, key=f"{key}.{k}"
            )
            for k, v in value.items()
        }
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail("a string")
        return str(value)
    if hint is type(None):
        if value is not None:
            raise fail("null")
        return None
    raise ConfigError(f"{origin}: key '{key}' has unsupported type {hint!r}")  # pragma: no cover


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
