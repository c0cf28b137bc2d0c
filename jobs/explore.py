"""Helpers for exploring the pipeline's output tables in notebooks and ad-hoc scripts.

Nothing here computes segments or metrics.  It finds the tables a configuration points at,
opens them (Spark temp views through :class:`jobs.core.lake.Lake`, so either Delta engine works, or
DuckDB views over delta-rs datasets, with no Spark at all) and reshapes the two small analyst
tables, ``cluster_metrics`` (the run history) and ``cluster_profiles``, for tables and plots.

The notebooks in ``notebooks/`` take where the lake is from environment variables, read by
:func:`params_from_env`:

* ``SEGMENTS_CONF``: config YAML file(s), comma-separated, relative to the project folder
  (default ``conf/local.yaml``, the demo's);
* ``SEGMENTS_LAKE_ROOT``: overrides ``lake.root`` of those files (e.g. a test's tmp lake);
* ``SEGMENTS_RUN_ID``: the cluster run to look at (default: the latest one).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from jobs.core.config import AppConfig, LakeConfig, SparkConfig, TableSpec, load_config
from jobs.core.lake.paths import Storage, is_uri, native_uri, reaching
from jobs.core.tables import TABLES as REGISTRY
from jobs.evaluation.report import METHOD_ORDER, TABLE_METRICS

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    import duckdb

    from jobs.core.lake import Lake

ENV_CONF = "SEGMENTS_CONF"
ENV_LAKE_ROOT = "SEGMENTS_LAKE_ROOT"
ENV_RUN_ID = "SEGMENTS_RUN_ID"
#: The demo's profile, relative to the project folder.
DEFAULT_CONF = "conf/local.yaml"
#: Every table of the registry (jobs/core/tables.py), in pipeline order.
TABLES: tuple[str, ...] = tuple(REGISTRY)
#: What the ``cluster`` stage records for every candidate k of a sweep.
SWEEP_METRICS = ("sse", "silhouette_sqeuclidean")
#: Everything ``cluster`` records (the sweep plus the K-Means start's costs): not evaluation.
CLUSTERED = (*SWEEP_METRICS, "restart_cost", "restart_cost_spread")
#: Whether a higher or a lower value of a metric is better (the report's table plus the rest).
METRIC_DIRECTION: Mapping[str, str] = {
    **dict(TABLE_METRICS),
    "sse": "lower",
    "silhouette_sqeuclidean": "higher",
    "size_max_share": "lower",
    "stability_ari_sd": "lower",
    "stability_nmi_mean": "higher",
    "segment_jaccard_mean": "higher",
    "segment_jaccard_min": "higher",
    "future_item_hit_rate_at_20": "higher",
    "future_item_ndcg_at_20": "higher",
    "future_category_hit_rate_at_10": "higher",
    "future_purchase_auc": "higher",
    "future_item_hit_rate_at_20_lift": "higher",
    "future_item_hit_rate_at_20_diff_best_baseline": "higher",
}


# ==================================================================== locating the tables


@dataclass(frozen=True)
class NotebookParams:
    """Where a notebook looks: config files, an optional lake root override, a run id."""

    conf: tuple[str, ...]
    lake_root: str | None
    run_id: str | None


def params_from_env(env: Mapping[str, str] | None = None) -> NotebookParams:
    """Read ``SEGMENTS_CONF`` (comma-separated), ``SEGMENTS_LAKE_ROOT`` and
    ``SEGMENTS_RUN_ID``; unset or empty variables give the defaults."""
    env = os.environ if env is None else env
    return NotebookParams(
        conf=split_conf(env.get(ENV_CONF) or DEFAULT_CONF),
        lake_root=env.get(ENV_LAKE_ROOT) or None,
        run_id=env.get(ENV_RUN_ID) or None,
    )


def split_conf(conf: str | Sequence[str]) -> tuple[str, ...]:
    """Config paths from a comma-separated string (or a sequence of them), blanks dropped."""
    items = [conf] if isinstance(conf, str) else list(conf)
    return tuple(part.strip() for item in items for part in item.split(",") if part.strip())


def project_dir(start: str | Path | None = None) -> Path:
    """The checkout that relative paths refer to: the nearest folder at or above ``start``
    (default: the working directory) holding ``conf/base.yaml``; ``start`` itself if none does.

    Notebooks run with their own folder as working directory, so ``conf/local.yaml`` and the
    demo's ``data/lake`` are found from ``notebooks/`` as from the repository root.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / "base.yaml").is_file():
            return folder
    return here


def _absolute(path: str, base: Path) -> str:
    if is_uri(path) or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def load_explore_config(
    conf: str | Sequence[str] | None = None,
    *,
    lake_root: str | None = None,
    base_dir: str | Path | None = None,
) -> AppConfig:
    """Load the configuration a notebook explores, with every local table path absolute.

    ``conf``: config file(s) as for ``--conf`` (a comma-separated string is split), relative
    ones resolved against ``base_dir`` (default :func:`project_dir`); ``None`` means
    :data:`DEFAULT_CONF`.  ``lake_root`` replaces ``lake.root``.  Relative ``lake.root`` and
    table paths are made absolute against ``base_dir`` too, so the result does not depend on
    the working directory.
    """
    base = Path(base_dir).resolve() if base_dir is not None else project_dir()
    files = [_absolute(p, base) for p in split_conf(conf if conf is not None else DEFAULT_CONF)]
    config = load_config(files)
    lake = config.lake
    root = lake_root if lake_root is not None else lake.root
    tables = {
        name: dataclasses.replace(spec, path=_absolute(spec.path, base)) if spec.path else spec
        for name, spec in lake.tables.items()
    }
    lake = dataclasses.replace(lake, root=_absolute(root, base) if root else root, tables=tables)
    return dataclasses.replace(config, lake=lake)


def table_path(lake: LakeConfig, table: str) -> str | None:
    """Storage path of ``table``: its own ``path``, else ``<lake.root>/<table>``; ``None`` for
    a table known only by a metastore name."""
    spec = lake.tables.get(table, TableSpec())
    if spec.path:
        return spec.path
    if lake.root:
        return f"{lake.root.rstrip('/')}/{table}"
    return None


def existing_tables(lake: LakeConfig, tables: Iterable[str] | None = None) -> dict[str, str]:
    """``table -> path`` for the registry's tables that have a Delta log at their path (in
    pipeline order); tables not written yet, or known only by a metastore name, are left out.
    Paths as delta-rs, DuckDB and polars take them (``s3a://`` as ``s3://``), looked up with
    ``lake.storage_options``; :class:`jobs.core.lake.LakeError` for an unreachable location."""
    storage = Storage(lake.storage_options)
    found: dict[str, str] = {}
    for table in tables or TABLES:
        path = table_path(lake, table)
        if path is None:
            continue
        where = f"table {table} (lake.root or lake.tables.{table}.path)"
        native = native_uri(path, where=where)
        with reaching(where):
            if storage.log_exists(native):
                found[table] = native
    return found


def require_table(lake: LakeConfig, table: str) -> str:
    """The storage path of ``table``; ``FileNotFoundError`` saying where it was looked for when
    it has no Delta log there (not written yet) or no path at all (a metastore name only)."""
    path = table_path(lake, table)
    if path is None:
        raise FileNotFoundError(
            f"{table} has no storage path (lake.root or lake.tables.{table}.path); a table known "
            "only by a metastore / Unity Catalog name is read with Spark SQL"
        )
    found = existing_tables(lake, [table])
    if table not in found:
        raise FileNotFoundError(f"no Delta table {table} at {path}: run the pipeline first")
    return found[table]


def delta_table(lake: LakeConfig, table: str) -> Any:
    """``deltalake.DeltaTable`` of ``table`` (:func:`require_table`), opened with
    ``lake.storage_options`` so that object-store lakes read like local ones."""
    storage = Storage(lake.storage_options)
    path = require_table(lake, table)
    with reaching(f"table {table} at {path}"):
        return storage.table(path)


# ==================================================================== opening the tables


def notebook_spark_config(spark: SparkConfig) -> SparkConfig:
    """The profile's Spark settings for an interactive session: same master and memory (so a
    cluster profile still applies; on Databricks the platform's session is used anyway), its own
    app name and no console progress bars in cell output."""
    return dataclasses.replace(
        spark,
        app_name=f"{spark.app_name}-notebook",
        extra={"spark.ui.showConsoleProgress": "false", **spark.extra},
    )


def spark_views(lake: Lake, tables: Iterable[str] | None = None) -> list[str]:
    """Register each existing table as a Spark temp view named after it; returns the names.

    Reads go through :meth:`jobs.core.lake.Lake.read`, so this works with both Delta engines
    and with metastore / Unity Catalog names; each view is the table's snapshot at
    registration time.
    """
    registered: list[str] = []
    for table in tables or TABLES:
        if lake.exists(table):
            lake.read(table).createOrReplaceTempView(table)
            registered.append(table)
    return registered


def duckdb_views(
    lake: LakeConfig,
    con: duckdb.DuckDBPyConnection | None = None,
    *,
    tables: Iterable[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per existing table, read with delta-rs (no Spark).

    Each view is the table's current snapshot as a lazy PyArrow dataset: DuckDB pushes column
    selections and filters into it, so ``WHERE run_id = ...`` reads only that partition's files.
    Object-store paths are opened with ``lake.storage_options`` updated by ``storage_options``
    (delta-rs keys; credentials from the environment).
    """
    import duckdb

    options = {**lake.storage_options, **(storage_options or {})}
    lake, storage = dataclasses.replace(lake, storage_options=options), Storage(options)
    con = con if con is not None else duckdb.connect()
    for table, path in existing_tables(lake, tables).items():
        with reaching(f"table {table} at {path}"):
            dataset = storage.table(path).to_pyarrow_dataset()
        con.register(table, dataset)
    return con


# ==================================================================== the run history


def run_order(history: pd.DataFrame) -> list[str]:
    """Run ids of ``cluster_metrics`` rows in the order they were first recorded (earliest
    ``created_at``, then run id).  Run ids made by the pipeline sort by time, but ones given with
    ``--run-id`` need not, so the recording time decides."""
    if history.empty:
        return []
    first = history.groupby("run_id")["created_at"].min().reset_index()
    return [str(r) for r in first.sort_values(["created_at", "run_id"])["run_id"]]


def latest_run(history: pd.DataFrame, among: Iterable[str] | None = None) -> str:
    """The most recently recorded run, optionally only among ``among`` (e.g. the runs that
    have profiles).  Raises ``ValueError`` when there is none."""
    allowed = None if among is None else {str(r) for r in among}
    runs = [r for r in run_order(history) if allowed is None or r in allowed]
    if not runs:
        raise ValueError("cluster_metrics holds no matching run: run the pipeline first")
    return runs[-1]


def run_k(history: pd.DataFrame) -> pd.Series:
    """Per run id, the k of the clustering that was kept: the k that ``evaluate`` measured (the
    baselines' k, or the embedding's non-sweep metrics), else the only candidate; missing (NA)
    for a sweep that was never evaluated."""
    if history.empty:
        return pd.Series(dtype="Int64", name="k")
    evaluated = history[(history["method"] != "embedding") | ~history["metric"].isin(CLUSTERED)]
    from_eval = evaluated.groupby("run_id")["k"].max()
    candidates = history.groupby("run_id")["k"].agg(["nunique", "max"])
    single = candidates.loc[candidates["nunique"] == 1, "max"]
    ks = pd.Series(pd.NA, index=pd.Index(run_order(history), name="run_id"), dtype="Int64")
    ks.update(single.astype("int64"))
    ks.update(from_eval.astype("int64"))
    return ks.rename("k")


def runs_overview(history: pd.DataFrame) -> pd.DataFrame:
    """One row per run, oldest first: when it was first recorded, unit, model version(s),
    backend(s), the k candidates, the kept k, and whether ``evaluate`` measured it."""
    if history.empty:
        return pd.DataFrame(
            columns=[
                "recorded_at",
                "unit",
                "model_version",
                "backend",
                "k_candidates",
                "k",
                "evaluated",
                "n_metrics",
            ]
        )

    def joined(values: pd.Series) -> str:
        return ", ".join(sorted({str(v) for v in values.dropna()}))

    grouped = history.groupby("run_id")
    overview = pd.DataFrame(
        {
            "recorded_at": grouped["created_at"].min(),
            "unit": grouped["unit"].agg(joined),
            "model_version": grouped["model_version"].agg(joined),
            "backend": grouped["backend"].agg(joined),
            "k_candidates": grouped["k"].agg(lambda ks: ", ".join(map(str, sorted(set(ks))))),
            "evaluated": grouped["method"].agg(lambda m: bool((m != "embedding").any())),
            "n_metrics": grouped.size(),
        }
    )
    overview.insert(5, "k", run_k(history))
    return overview.loc[run_order(history)]


def _at_run_k(rows: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """The ``rows`` (a subset of ``history``) measured at each run's kept k, which is judged
    on the whole ``history``; other sweep candidates are dropped."""
    ks = run_k(history).dropna()
    kept = rows.merge(ks.rename("__k").reset_index(), on="run_id", how="inner")
    return kept[kept["k"] == kept["__k"]].drop(columns="__k")


def _ordered_methods(present: Iterable[str]) -> list[str]:
    present = set(present)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def method_comparison(
    history: pd.DataFrame, run_id: str, metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """Metric x method table of one run at its kept k (embedding first, then the baselines),
    with a ``better`` column saying whether higher or lower wins.  ``metrics`` selects and
    orders the rows (default: every metric the run has, the report's table first)."""
    run = history[history["run_id"] == run_id]
    rows = _at_run_k(run, run)
    if rows.empty:
        raise ValueError(f"run {run_id!r} has no metrics at its kept k in cluster_metrics")
    table = rows.pivot_table(index="metric", columns="method", values="value", aggfunc="last")
    table = table[_ordered_methods(table.columns)]
    if metrics is None:
        preferred = [m for m, _ in TABLE_METRICS if m in table.index]
        metrics = preferred + sorted(set(table.index) - set(preferred))
    table = table.reindex(list(metrics))
    table.columns.name = None
    table["better"] = [METRIC_DIRECTION.get(str(m), "") for m in table.index]
    return table


def margins(comparison: pd.DataFrame) -> pd.DataFrame:
    """How far the embedding is ahead of each baseline in a :func:`method_comparison` table,
    signed so that a positive margin means the embedding is better (metrics without a known
    direction, or measured for the embedding only, are left out)."""
    known = comparison[comparison["better"].isin(["higher", "lower"])]
    sign = known["better"].map({"higher": 1.0, "lower": -1.0}).astype(float)
    baselines = [c for c in known.columns if c not in ("embedding", "better")]
    result = pd.DataFrame(index=known.index)
    for baseline in baselines:
        diff = known["embedding"].astype(float) - known[baseline].astype(float)
        result[f"vs {baseline}"] = diff * sign
    return result.dropna(how="all")


def metric_over_runs(
    history: pd.DataFrame, metric: str, methods: Sequence[str] | None = None
) -> pd.DataFrame:
    """Run x method values of one metric at each run's kept k, runs oldest first."""
    rows = _at_run_k(history[history["metric"] == metric], history)
    if rows.empty:
        return pd.DataFrame(columns=list(methods or ()))
    table = rows.pivot_table(index="run_id", columns="method", values="value", aggfunc="last")
    order = [r for r in run_order(history) if r in table.index]
    table = table.loc[order, list(methods) if methods else _ordered_methods(table.columns)]
    table.columns.name = None
    return table


def k_sweep(history: pd.DataFrame, run_id: str | None = None) -> pd.DataFrame:
    """The embedding's SSE and silhouette per candidate k: columns ``run_id``, ``k``, ``sse``,
    ``silhouette_sqeuclidean``; one run, or every run that swept more than one k."""
    rows = history[(history["method"] == "embedding") & history["metric"].isin(SWEEP_METRICS)]
    if run_id is not None:
        rows = rows[rows["run_id"] == run_id]
    else:
        counts = rows.groupby("run_id")["k"].nunique()
        rows = rows[rows["run_id"].isin(counts[counts > 1].index)]
    columns = ["run_id", "k", *SWEEP_METRICS]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    sweep = rows.pivot_table(
        index=["run_id", "k"], columns="metric", values="value", aggfunc="last"
    ).reset_index()
    for metric in SWEEP_METRICS:
        if metric not in sweep.columns:
            sweep[metric] = float("nan")
    order = {r: i for i, r in enumerate(run_order(history))}
    sweep = sweep.sort_values(
        ["run_id", "k"], key=lambda s: s.map(order) if s.name == "run_id" else s
    )
    sweep.columns.name = None
    return sweep[columns].reset_index(drop=True)


# ==================================================================== profiles


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "asDict"):  # a pyspark Row
        return dict(value.asDict())
    raise TypeError(f"expected a struct (mapping or Row), got {type(value).__name__}")


def top_values(profiles: pd.DataFrame, column: str = "top_categories") -> pd.DataFrame:
    """Long form of one ``top_*`` column of ``cluster_profiles``: one row per cluster and value
    with ``rank``, ``value``, ``share`` (of the cluster's events) and ``lift`` (over the whole
    population's share).  Works on frames from delta-rs, DuckDB or Spark's ``toPandas``."""
    keys = [c for c in ("run_id", "cluster_id") if c in profiles.columns]
    records: list[dict[str, Any]] = []
    for row in profiles[[*keys, column]].itertuples(index=False):
        entries = row[-1]
        if entries is None:
            continue
        for entry in entries:
            struct = _as_dict(entry)
            records.append(
                {
                    **dict(zip(keys, row[:-1], strict=True)),
                    "rank": int(struct["rank"]),
                    "value": struct["value"],
                    "share": float(struct["share"]),
                    "lift": float(struct["lift"]),
                }
            )
    result = pd.DataFrame(records, columns=[*keys, "rank", "value", "share", "lift"])
    return result.sort_values([*keys, "rank"]).reset_index(drop=True)
