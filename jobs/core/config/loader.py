"""Loading YAML profiles and ``--set`` overrides into the typed sections of :mod:`.sections`.

Loading order: the dataclass defaults, then each ``--conf`` file in order, then each
``--set dotted.key=value``.  Unknown keys, wrong types and values outside a ``Literal`` enum are
rejected with a message naming the key, the file (or ``--set``) that introduced it and what is
allowed; :func:`check_combinations` then refuses impossible combinations of valid values.

Merge rule: nested sections (dataclasses) merge key by key; mappings and lists are values and are
replaced whole, so a source mapping in a profile never inherits stray columns from another one.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import logging
import re
import shlex
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from jobs.core.config.sections import AppConfig, ConfigError

log = logging.getLogger("jobs.config")

T = TypeVar("T")


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
    check_combinations(config)
    return config


_REMOTE = re.compile(r"sc://[^/\s;]+(/;[^\s]*)?|local(\[(\d+|\*)(,\d+)?\])?")
_MAVEN = re.compile(r"[\w.\-]+:[\w.\-]+:[\w.\-]+")


def check_combinations(config: AppConfig) -> None:
    """Refuse settings that are valid one by one but impossible together (or out of range)."""
    from jobs.core.tables import TABLES  # lazy: the contracts need pyspark's type classes

    unknown = sorted(set(config.lake.tables) - set(TABLES))
    if unknown:
        raise ConfigError(
            f"lake.tables: unknown table(s) {unknown}; the tables are {', '.join(TABLES)} "
            "(docs/tables.md)"
        )
    remote = config.spark.remote
    if remote is not None and not _REMOTE.fullmatch(remote):
        raise ConfigError(
            f"spark.remote={remote!r}: write sc://host:port (a Spark Connect server) or "
            "local / local[N] / local[*] (start a local one), or null for a classic session"
        )
    written = config.spark.driver_java_options
    try:
        java_options = shlex.split(written)  # as Spark splits it: whitespace, quotes kept
    except ValueError as exc:  # an unclosed quote
        raise ConfigError(f"spark.driver_java_options={written!r}: {exc}") from None
    if any(not option.startswith("-") for option in java_options):
        raise ConfigError(
            f"spark.driver_java_options={written!r}: write JVM options, each starting with '-' "
            "(e.g. -XX:TieredStopAtLevel=1)"
        )
    if java_options and "spark.driver.extraJavaOptions" in config.spark.extra:
        raise ConfigError(
            "spark.driver_java_options and spark.extra's spark.driver.extraJavaOptions are both "
            "set: the second replaces the driver's own options (G1 GC, the log4j2 file) and "
            "the first adds to them; keep one"
        )
    bad = [p for p in config.spark.packages if not _MAVEN.fullmatch(p)]
    if bad:
        raise ConfigError(f"spark.packages: {bad} are not Maven coordinates group:artifact:version")
    ks = config.cluster.k if isinstance(config.cluster.k, tuple) else (config.cluster.k,)
    if not ks or any(k < 2 for k in ks):
        raise ConfigError(f"cluster.k must be at least 2 (each candidate), got {config.cluster.k}")
    if not 0 <= config.cluster.seed < 2**32:
        raise ConfigError(f"cluster.seed must fit in 32 bits (cuML), got {config.cluster.seed}")
    if config.cluster.n_init < 1:
        raise ConfigError(f"cluster.n_init must be at least 1, got {config.cluster.n_init}")
    if config.cluster.init_sample < max(ks):
        raise ConfigError(
            f"cluster.init_sample={config.cluster.init_sample} must be at least the largest "
            f"cluster.k ({max(ks)})"
        )
    if config.cluster.algorithm == "bisecting_kmeans" and config.cluster.backend == "gpu":
        raise ConfigError(
            "cluster.algorithm=bisecting_kmeans runs on Spark MLlib only (spark-rapids-ml has no "
            "bisecting K-Means): use cluster.backend=auto or cpu"
        )
    if config.encoder.max_length < 8:
        raise ConfigError(f"encoder.max_length must be at least 8, got {config.encoder.max_length}")
    if config.encoder.batch_size < 1:
        raise ConfigError(f"encoder.batch_size must be positive, got {config.encoder.batch_size}")
    edges = config.encoder.price_band_edges
    if list(edges) != sorted(edges) or len(set(edges)) != len(edges):
        raise ConfigError(f"encoder.price_band_edges must increase strictly, got {list(edges)}")
    for index, spec in enumerate(config.ingest.source.inputs):
        if spec.explode and spec.format not in ("jsonl", "json", "ndjson"):
            raise ConfigError(
                f"ingest.source.inputs[{index}].explode: only JSON lines hold arrays of events "
                f"to explode; this input's format is {spec.format}"
            )
    _check_ingest_and_sessionize(config)
    _check_evaluate(config)
    # Refused at load, before any Spark work, like every other impossible setting: a scheduled
    # cluster run that silently skipped tracking would leave no registered model to deploy.
    if config.mlflow.enabled and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "mlflow.enabled is true but MLflow is not installed: "
            "pip install 'clickstream-segments[mlflow]' (Databricks runtimes have it), "
            "or set mlflow.enabled=false"
        )
    if config.train_encoder.mode == "contrastive" and config.encoder.kind != "text":
        raise ConfigError(
            "train_encoder.mode=contrastive fine-tunes the text encoder: set encoder.kind=text "
            "(the sequence encoder is trained with mode=mlm)"
        )


#: Java's short zone ids (``ZoneId.SHORT_IDS``), which Spark accepts besides IANA names.
_SHORT_IDS = (
    "ACT AET AGT ART AST BET BST CAT CNT CST CTT EAT ECT EST HST IET IST JST MIT MST NET NST PLT"
)
_JAVA_SHORT_IDS = frozenset([*_SHORT_IDS.split(" "), "PNT", "PRT", "PST", "SST", "VST"])
_OFFSET = re.compile(r"(?:UTC|GMT|UT)?(?:[+-]\d{1,2}(?::?\d{2}(?::?\d{2})?)?)?|Z", re.IGNORECASE)


def _zone_problem(name: str, *, offsets: bool) -> str | None:
    """Why ``name`` is not a time zone Spark (and, without ``offsets``, Python's zoneinfo)
    resolves, or None.  Without a tz database on this machine nothing is refused."""
    import zoneinfo

    if not zoneinfo.available_timezones():
        return None
    try:
        zoneinfo.ZoneInfo(name)
        return None
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        pass
    if offsets and (_OFFSET.fullmatch(name) or name.upper() in _JAVA_SHORT_IDS):
        return None
    close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    kind = "an IANA zone name or a UTC offset" if offsets else "an IANA zone name"
    return f"{name!r} is not {kind}, e.g. Europe/Berlin{hint}"


def _check_ingest_and_sessionize(config: AppConfig) -> None:
    """Values Spark would only reject halfway through a run (or turn into a quarantine of every
    record): time zones, instants, sizes, and event-type keys that collide once lower-cased."""
    from datetime import datetime, timezone

    source = config.ingest.source
    problem = _zone_problem(source.timezone, offsets=True)
    if problem:
        raise ConfigError(f"ingest.source.timezone: {problem}")
    # The incremental window is cut at local midnights computed with zoneinfo: names only.
    problem = _zone_problem(config.sessionize.timezone, offsets=False)
    if problem:
        raise ConfigError(f"sessionize.timezone: {problem}")
    bounds = []
    for name in ("min_event_ts", "max_event_ts"):
        value = getattr(source, name)
        try:
            bounds.append(datetime.fromisoformat(value))
        except ValueError:
            raise ConfigError(
                f"ingest.source.{name}={value!r}: write an ISO-8601 instant, e.g. "
                "'2000-01-01T00:00:00Z' (quoted in YAML and in --set)"
            ) from None
    low, high = (b if b.tzinfo else b.replace(tzinfo=timezone.utc) for b in bounds)
    if low >= high:
        raise ConfigError(
            f"ingest.source.min_event_ts ({source.min_event_ts}) must be before max_event_ts "
            f"({source.max_event_ts})"
        )
    if source.timestamp_format is not None and not source.timestamp_format.strip():
        raise ConfigError(
            "ingest.source.timestamp_format is empty: give a Spark datetime pattern, e.g. "
            "'yyyy-MM-dd HH:mm:ss z', or leave it unset to read ISO-8601 and epochs"
        )
    if source.max_record_bytes < 1:
        raise ConfigError(
            f"ingest.source.max_record_bytes must be positive, got {source.max_record_bytes}"
        )
    seen: dict[str, str] = {}
    for key in source.event_type_map:
        folded = key.lower()
        if folded in seen:
            raise ConfigError(
                f"ingest.source.event_type_map: keys {seen[folded]!r} and {key!r} are the same "
                "raw event type (compared lower-cased); keep one"
            )
        seen[folded] = key
    sessionize = config.sessionize
    for name in ("inactivity_gap_s", "max_session_duration_s", "max_events"):
        if getattr(sessionize, name) < 1:
            raise ConfigError(
                f"sessionize.{name} must be positive, got {getattr(sessionize, name)}"
            )
    if sessionize.lookback_hours < 0:
        raise ConfigError(
            f"sessionize.lookback_hours must be 0 or more, got {sessionize.lookback_hours}"
        )
    bot = sessionize.bot
    for name in ("max_events_per_minute", "min_events_for_rate", "max_events_per_day"):
        if getattr(bot, name) <= 0:
            raise ConfigError(f"sessionize.bot.{name} must be positive, got {getattr(bot, name)}")


def _check_evaluate(config: AppConfig) -> None:
    ev = config.evaluate
    if not 0 < ev.holdout_fraction < 1:
        raise ConfigError(f"evaluate.holdout_fraction must be in (0, 1), got {ev.holdout_fraction}")
    if ev.holdout_days is not None and ev.holdout_days <= 0:
        raise ConfigError(f"evaluate.holdout_days must be positive, got {ev.holdout_days}")
    if not 0 < ev.suffix_share < 1:
        raise ConfigError(f"evaluate.suffix_share must be in (0, 1), got {ev.suffix_share}")
    if ev.suffix_min_events < 2:
        raise ConfigError(
            f"evaluate.suffix_min_events must be at least 2 (a prefix and a suffix), "
            f"got {ev.suffix_min_events}"
        )
    if ev.protocol == "future" and config.embed.unit == "session":
        raise ConfigError(
            "evaluate.protocol=future scores users after a time cutoff, but embed.unit=session "
            "clusters sessions: use evaluate.protocol=session_suffix (or auto)"
        )
    if not 0 < ev.tfidf_max_df <= 1 or ev.tfidf_min_df < 1:
        raise ConfigError(
            "evaluate.tfidf_min_df is a document count (>= 1) and evaluate.tfidf_max_df a share "
            f"of documents in (0, 1]; got {ev.tfidf_min_df} and {ev.tfidf_max_df}"
        )
    for name in ("min_protocol_users", "bootstrap_resamples", "aggregate_top_categories"):
        if getattr(ev, name) < 1:
            raise ConfigError(f"evaluate.{name} must be positive, got {getattr(ev, name)}")
    for name in ("stability_seeds", "stability_bootstraps"):
        if getattr(ev, name) < 0:
            raise ConfigError(f"evaluate.{name} must be 0 or more, got {getattr(ev, name)}")


def config_to_dict(config: Any) -> Any:
    """Plain-data form of a config (tuples become lists), suitable for YAML/JSON and logging."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config


def log_config(
    config: AppConfig, conf_files: Sequence[str] = (), overrides: Sequence[str] = ()
) -> None:
    """Log where the configuration came from (INFO, one line with its fingerprint) and the whole
    resolved configuration (DEBUG), so every run records what it ran with."""
    sources = ", ".join([*conf_files, *(f"--set {o}" for o in overrides)]) or "defaults"
    log.info("config %s from %s", config_fingerprint(config), sources)
    log.debug("resolved config:\n%s", yaml.safe_dump(config_to_dict(config), sort_keys=False))


def config_fingerprint(section: Any) -> str:
    """A stable short hash of a config section (used in rule versions and model versions)."""
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
    if origin_type is Literal:
        if isinstance(value, str) and value in args:
            return value
        allowed = ", ".join(str(a) for a in args)
        raise ConfigError(f"{origin}: key '{key}' must be one of {allowed}; got {value!r}")
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
