"""The configuration sections: frozen dataclasses whose defaults are the canonical defaults.

``conf/base.yaml`` spells every default out with comments (a test keeps the two identical);
profiles such as ``conf/local.yaml`` overlay only what they change (see :mod:`.loader`).
Enum-like settings are ``Literal`` types, so a wrong value is refused when the file is loaded,
naming the key, the file and the allowed values.  The rules behind the settings are documented
in ``conf/base.yaml`` (every setting with a comment) and the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

LakeEngine = Literal["auto", "spark", "delta-rs"]
InputFormat = Literal["jsonl", "json", "ndjson", "csv", "parquet"]
GenerateFormat = Literal["jsonl", "csv", "parquet"]
EventType = Literal["view", "add_to_cart", "remove_from_cart", "purchase", "search", "other"]
UnknownEventType = Literal["quarantine", "other"]
EpochUnit = Literal["s", "ms", "us"]
RunMode = Literal["full", "incremental"]
EncoderKind = Literal["text", "sequence", "auto"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Unit = Literal["user", "session"]
TrainMode = Literal["mlm", "contrastive"]
Criterion = Literal["silhouette", "elbow"]
ClusterBackend = Literal["auto", "gpu", "cpu"]
ClusterAlgorithm = Literal["kmeans", "bisecting_kmeans"]
Protocol = Literal["auto", "future", "session_suffix"]


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
    #: JVM options added to the driver's own (G1 GC and the log4j2 file that keeps Spark's
    #: logs at the chosen level) when this process starts the JVM, e.g.
    #: ``-XX:TieredStopAtLevel=1`` for short local runs whose time goes to JIT compilation.
    driver_java_options: str = ""
    #: Extra ``spark.*`` settings applied when building a local session.
    extra: Mapping[str, str] = field(default_factory=dict)
    #: Spark Connect: ``sc://host:port`` (a Connect server) or ``local[N]`` (start a local one);
    #: null = a classic session.  An active session, classic or Connect, is reused either way.
    remote: str | None = None
    #: Maven coordinates added to ``spark.jars.packages`` of a session we build (e.g.
    #: ``org.apache.hadoop:hadoop-aws:3.4.1``); ``lake.engine: spark`` adds delta-spark's itself.
    packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    """Where one logical table lives: a path, or a metastore / Unity Catalog name, or both."""

    path: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class LakeConfig:
    """Delta Lake storage: which engine writes the tables and where they live."""

    #: auto | spark | delta-rs.  ``auto`` uses Spark's Delta data source when the session has it.
    engine: LakeEngine = "auto"
    #: Directory under which tables without an explicit path are stored (``<root>/<table>``).
    root: str | None = "data/lake"
    #: Optional ``catalog.schema`` prefix; tables without an explicit name get ``<prefix>.<table>``
    #: (spark engine only).
    catalog_schema: str | None = None
    #: Per-table overrides of the location (keys: the table names in docs/tables.md).  Columns,
    #: key and partitioning are part of each table's contract, not configuration.
    tables: Mapping[str, TableSpec] = field(default_factory=dict)
    #: Object-store options for the delta-rs engine and Python-side path checks (delta-rs keys,
    #: e.g. ``AWS_ENDPOINT_URL``, ``AWS_REGION``); credentials belong in the environment.
    storage_options: Mapping[str, str] = field(default_factory=dict)


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
    """Synthetic clickstream with planted personas."""

    seed: int = 42
    n_users: int = 5000
    n_personas: int = 6
    start_date: str = "2024-03-01"
    n_days: int = 7
    output_dir: str = "data/raw/synthetic"
    ground_truth_path: str = "data/ground_truth/personas.csv"
    #: Any of jsonl, csv, parquet; each format is written to ``<output_dir>/<format>/``.
    formats: tuple[GenerateFormat, ...] = ("jsonl",)
    compress: bool = False
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass(frozen=True)
class InputSpec:
    """One kind of raw file and how its fields map onto the ``events`` contract.

    ``columns`` maps an ``events`` column (``event_id``, ``user_id``, ``event_ts``,
    ``event_type``, ``item_id``, ``category``, ``brand``, ``price``, ``query``,
    ``source_session_id``) to a Spark SQL expression over the raw fields; a bare field name is
    the common case, and a dotted path reads a field inside a JSON object
    (``properties.product_id``).  Raw fields are read as strings, so expressions see the text
    as it was written.
    """

    paths: tuple[str, ...] = ()
    #: jsonl | csv | parquet (gzip-compressed text files are read transparently).
    format: InputFormat = "jsonl"
    #: Reader options, e.g. ``{sep: ";", header: "true"}`` for CSV.
    options: Mapping[str, str] = field(default_factory=dict)
    columns: Mapping[str, str] = field(default_factory=dict)
    #: JSON lines only: a field holding an array of events (a name, or a dotted path such as
    #: ``payload.events``).  Each element becomes one event; in ``columns`` the field's name
    #: then stands for the element (``events.ts``) and the record's other fields keep theirs
    #: (``session``).  A record with no elements is quarantined (``no elements in events``).
    #: null: each record is one event.
    explode: str | None = None


@dataclass(frozen=True)
class LookupSpec:
    """A side file joined onto raw rows, e.g. DIGINETICA's item -> category table."""

    path: str = ""
    format: InputFormat = "csv"
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
    event_type_map: Mapping[str, EventType] = field(
        default_factory=lambda: {
            "view": "view",
            "cart": "add_to_cart",
            "remove_from_cart": "remove_from_cart",
            "purchase": "purchase",
            "search": "search",
        }
    )
    #: quarantine | other: what to do with an event type missing from ``event_type_map``.
    unknown_event_type: UnknownEventType = "quarantine"
    #: Spark datetime pattern for string timestamps; null means ISO-8601 / Spark's default cast.
    timestamp_format: str | None = None
    #: For numeric timestamps: s | ms | us since the epoch.
    timestamp_unit: EpochUnit = "ms"
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
    #: Order of events with equal timestamps within a file: a Spark SQL expression over the raw
    #: fields giving an integer (e.g. ``step``, a click-order field); null keeps file order.
    order_by: str | None = None
    #: Collapse events identical on every mapped column into one (the first in source order),
    #: counted apart as ``collapsed``.  Off: only identical raw records (or the same event id
    #: with the same content) are duplicates, as records differing in any field are events.
    collapse_mapped_duplicates: bool = False


@dataclass(frozen=True)
class IngestConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    #: full: rebuild ``events`` from every configured file; incremental: read only the files not
    #: yet in ``ingest_log`` (new, or changed in size or modification time) and append.
    mode: RunMode = "full"


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
    """Sessionization rules; defaults follow GA / Amplitude / Snowplow practice."""

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
    mode: RunMode = "full"
    #: How far before the earliest new event sessions are recomputed (late data), as GA4's 72 h.
    lookback_hours: int = 72


@dataclass(frozen=True)
class EncoderConfig:
    """Which transformer turns a rendered sequence into a vector, and how."""

    #: text (a pretrained sentence encoder over rendered text) | sequence (a small BERT over
    #: event tokens, trained by ``train_encoder``) | auto (text when most events name a category
    #: or brand in words, else sequence with item buckets; README, "Encoder and embeddings").
    kind: EncoderKind = "text"
    #: A Hugging Face model directory; null means the packaged all-MiniLM-L6-v2 for ``text`` and
    #: ``<lake.root>/../models/sequence-encoder`` for ``sequence``.
    model_path: str | None = None
    #: Tokens per sequence; the most recent events are kept when a rendering is longer.
    max_length: int = 128
    #: Sequences per forward pass.
    batch_size: int = 128
    #: auto | cpu | cuda.  auto takes the task's GPU when Spark assigned one.
    device: Device = "auto"
    #: auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16 | fp16.
    precision: Precision = "auto"
    #: Render item ids too (only useful when items recur across users).
    include_item_ids: bool = False
    #: Upper bounds of the price bands cheap / low / mid / high; above the last is premium.
    price_band_edges: tuple[float, ...] = (20.0, 60.0, 200.0, 600.0)


@dataclass(frozen=True)
class EmbedConfig:
    """The ``embed`` job: which table's sequences become vectors."""

    #: user (rows of user_sequences) | session (rows of sessions).
    unit: Unit = "user"
    include_bots: bool = False
    #: Rows per Arrow batch handed to the UDF.
    arrow_batch_rows: int = 2048
    #: full: embed every sequence; incremental: embed only sequences whose rendered content
    #: changed (by ``content_hash``) since this model version last embedded them.
    mode: RunMode = "full"


@dataclass(frozen=True)
class TrainEncoderConfig:
    """Self-supervised training: masked-event pre-training of the ``sequence`` encoder (``mlm``)
    or contrastive fine-tuning of the ``text`` encoder (``contrastive``)."""

    #: mlm | contrastive
    mode: TrainMode = "mlm"
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
    """The ``cluster`` job: K-Means on one model_version of ``embeddings``."""

    #: One k, or candidates to sweep (each fitted and recorded; ``criterion`` picks one).
    k: int | tuple[int, ...] = 6
    #: silhouette (highest squared-Euclidean silhouette) | elbow (knee of the SSE curve).
    criterion: Criterion = "silhouette"
    max_iter: int = 50
    #: Convergence: Lloyd iterations stop once no centre moves more than ``tol`` (Euclidean
    #: distance, MLlib's meaning), in the driver's restarts and the Spark passes alike; the GPU
    #: backend hands it to cuML, whose test is its own.
    tol: float = 1e-4
    #: Must fit in 32 bits, as cuML requires.
    seed: int = 42
    #: CPU K-Means: k-means++ restarts on the start sample; the lowest-cost one is refined.
    n_init: int = 3
    #: CPU K-Means: rows sampled to the driver for the k-means++ start (all rows when fewer).
    init_sample: int = 20000
    #: kmeans (Lloyd, k-means|| start) | bisecting_kmeans (divisive hierarchical: MLlib's
    #: BisectingKMeans, CPU only).  Every refit in evaluate uses the same algorithm.
    algorithm: ClusterAlgorithm = "kmeans"
    #: auto | gpu (spark-rapids-ml) | cpu (Spark MLlib).  auto uses the GPU when cuML imports and
    #: executors have GPUs.
    backend: ClusterBackend = "auto"
    #: Which embeddings to cluster; null = the most recently embedded version of ``embed.unit``.
    model_version: str | None = None
    #: Fitted models are saved (Spark ML format) under ``<model_root>/<run_id>``.
    model_root: str = "data/models/kmeans"
    #: Assign rows with this saved model instead of fitting (``cluster --assign-only --model``).
    assign_with_model: str | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` job: metrics, baselines, the future backtest and profiles of one run."""

    #: Which cluster run to evaluate; null = the most recently created run.
    cluster_run_id: str | None = None
    #: CSV ``user_id,persona`` for external metrics; null = the generator's personas
    #: (``generate.ground_truth_path``) when ``ingest.source.name`` is ``synthetic``, else none.
    ground_truth_path: str | None = None
    #: Rows in the exact-silhouette cross-check sample.
    silhouette_sample: int = 2000
    #: Extra K-Means seeds for the seed-refit stability metrics (0 = none).
    stability_seeds: int = 3
    #: Bootstrap refits for per-segment stability (Jaccard, clusterboot); 0 = none.
    stability_bootstraps: int = 3
    #: auto | future | session_suffix: the leakage-free backtest (README, "Evaluation").
    protocol: Protocol = "auto"
    #: future: the cutoff is the last event time minus these days; null = use holdout_fraction.
    holdout_days: float | None = None
    #: future: share of events (by time) after the cutoff, when holdout_days is null.
    holdout_fraction: float = 0.2
    #: session_suffix: sessions with at least this many events are split ...
    suffix_min_events: int = 4
    #: ... and this share of their events (at least one) is the suffix to predict.
    suffix_share: float = 0.5
    #: Fewest units with both history and future a protocol needs to be scored.
    min_protocol_users: int = 30
    #: Bootstrap resamples (over units) for the confidence intervals.
    bootstrap_resamples: int = 1000
    #: TF-IDF baselines: vocabulary cap (a memory bound, logged when reached) ...
    tfidf_vocab_size: int = 65536
    #: ... tokens in fewer documents than this are dropped (they cannot group users) ...
    tfidf_min_df: float = 2.0
    #: ... and tokens in more than this share of documents too (they separate no one).
    tfidf_max_df: float = 0.95
    #: aggregate_baseline: shares of this many most frequent (history) categories.
    aggregate_top_categories: int = 10
    #: The report (report.md + PNG plots) goes to ``<report_dir>/<cluster run id>/``.
    report_dir: str = "data/reports"
    seed: int = 7


@dataclass(frozen=True)
class PrivacyConfig:
    """Pseudonymisation of ``user_id``: HMAC-SHA256 under a secret key.  The
    configuration says only where the key is; the key itself never appears in a file or log."""

    pseudonymize_user_id: bool = False
    #: Environment variable holding the key (at least 32 bytes).
    key_env: str = "SEGMENTS_HMAC_KEY"
    #: Databricks secret scope and key, read with ``dbutils.secrets.get`` when running there.
    secret_scope: str | None = None
    secret_key: str | None = None


@dataclass(frozen=True)
class MlflowConfig:
    """MLflow tracking of ``cluster`` / ``evaluate`` runs and the segment assigner model."""

    enabled: bool = True
    #: null = ``databricks`` on Databricks, else a local store under ``data/mlruns``.
    tracking_uri: str | None = None
    #: Experiment name (on Databricks a workspace path such as ``/Shared/clickstream-segments``).
    experiment_name: str = "clickstream-segments"
    #: Register the segment assigner under this name (Unity Catalog: ``catalog.schema.model``).
    registered_model_name: str | None = None


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
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
