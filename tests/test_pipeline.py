"""End to end: generate -> ingest -> sessionize, through the library and the real CLI."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from jobs.core.config import AppConfig, LakeConfig, load_config
from jobs.pipeline import applicable, run_pipeline
from jobs.runner import StageOutcome
from jobs.stages import Stage
from jobs.stages import select as select_stages

from .conftest import REPO

#: Tables the default pipeline writes (every one must exist and be listed in the summary).
PIPELINE_TABLES = (
    "events",
    "events_quarantine",
    "sessions",
    "user_sequences",
    "embeddings",
    "cluster_assignments",
    "cluster_centroids",
    "cluster_metrics",
    "history_embeddings",
)


def small_config(tmp_path: Path, formats: tuple[str, ...] = ("jsonl",)) -> AppConfig:
    base = AppConfig()
    raw = tmp_path / "raw"
    spec = dataclasses.replace(
        base.ingest.source.inputs[0], paths=(str(raw / formats[0]),), format=formats[0]
    )
    return dataclasses.replace(
        base,
        generate=dataclasses.replace(
            base.generate,
            n_users=300,
            n_days=4,
            formats=formats,
            output_dir=str(raw),
            ground_truth_path=str(tmp_path / "truth" / "personas.csv"),
        ),
        ingest=dataclasses.replace(
            base.ingest, source=dataclasses.replace(base.ingest.source, inputs=(spec,))
        ),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
        # fp32: bf16 vectors move by ~1e-3 with the batch they are in, and tests/test_engines.py
        # compares runs that may batch rows differently.
        encoder=dataclasses.replace(base.encoder, precision="fp32"),
        mlflow=dataclasses.replace(base.mlflow, enabled=False),
        cluster=dataclasses.replace(base.cluster, model_root=str(tmp_path / "models")),
        evaluate=dataclasses.replace(
            base.evaluate,
            stability_seeds=2,
            stability_bootstraps=1,
            bootstrap_resamples=300,
            silhouette_sample=400,
            report_dir=str(tmp_path / "reports"),
        ),
    )


def _check_accounting(generated: Any, ingested: Any, sessionized: Any) -> None:
    """Independent counts from the generator meet ingest's and sessionize's own accounting."""
    assert ingested.input_rows == generated.n_lines_written
    assert ingested.kept == generated.n_events_clean
    assert ingested.duplicates_removed == generated.n_duplicates_planted
    assert ingested.quarantined == generated.n_malformed_planted + generated.n_schema_drift_planted
    assert sessionized.events_in == generated.n_events_clean
    assert sessionized.bot_users == generated.n_bot_users


def test_parquet_input_is_accounted_for_through_sessionize(
    spark: SparkSession, tmp_path: Path
) -> None:
    """The input format matters to ingest only: Parquet is followed to the sessions."""
    config = small_config(tmp_path, ("parquet",))
    # Fewer users than the shared run: the format's path is the same for every record.
    config = dataclasses.replace(
        config, generate=dataclasses.replace(config.generate, n_users=80, n_days=2)
    )
    stages = applicable(select_stages(None, "sessionize"), config)
    outcomes, _ = run_pipeline(config, "run-parquet", stages)
    _check_accounting(*(o.result for o in outcomes))


def test_pipeline_accounts_for_every_generated_record(
    e2e_run: tuple[AppConfig, list[StageOutcome], list[str]],
) -> None:
    """Independent counts from the generator meet every stage's own accounting."""
    config, outcomes, table_lines = e2e_run
    assert [o.stage for o in outcomes] == [
        "generate",
        "ingest",
        "sessionize",
        "embed",
        "cluster",
        "evaluate",
    ]
    generated, ingested, sessionized, embedded, clustered, evaluated = (o.result for o in outcomes)

    _check_accounting(generated, ingested, sessionized)
    assert sessionized.users == config.generate.n_users + generated.n_bot_users

    assert embedded.rows == config.generate.n_users  # every human user; bots excluded
    assert clustered.rows == embedded.rows and sum(clustered.sizes) == embedded.rows
    assert clustered.model_version == embedded.model_version

    # evaluate: every fixed metric name (README: Evaluation) for the embedding, the three
    # baselines beside it
    spec_names = {
        "sse",
        "silhouette_sqeuclidean",
        "silhouette_cosine",
        "silhouette_exact_sample",
        "davies_bouldin",
        "calinski_harabasz",
        "size_min_share",
        "size_max_share",
        "size_entropy",
        "ari_vs_truth",
        "nmi_vs_truth",
        "purity_vs_truth",
    }
    stability = {
        "stability_ari_mean",
        "stability_ari_sd",
        "stability_nmi_mean",
        "segment_jaccard_mean",
        "segment_jaccard_min",
    }
    # The backtest's names (SPEC-fixed, README: Evaluation) for every method; the generator's
    # catalogue has more than 10 categories, so the category metric applies.
    future = {
        "future_item_hit_rate_at_20",
        "future_item_ndcg_at_20",
        "future_category_hit_rate_at_10",
        "future_purchase_auc",
        "future_users",
        "future_item_hit_rate_at_20_lift",
        "future_item_hit_rate_at_20_lift_ci_low",
        "future_item_hit_rate_at_20_lift_ci_high",
    }
    paired = {
        "future_item_hit_rate_at_20_diff_best_baseline",
        "future_item_hit_rate_at_20_diff_best_baseline_ci_low",
        "future_item_hit_rate_at_20_diff_best_baseline_ci_high",
    }
    assert set(evaluated.metrics["embedding"]) >= spec_names | stability | future | paired
    baselines = ("tfidf_baseline", "tfidf_tokens_baseline", "aggregate_baseline", "random_baseline")
    for method in baselines:
        assert set(evaluated.metrics[method]) >= spec_names | future, method
    assert set(evaluated.metrics["global_baseline"]) >= future
    assert abs(evaluated.metrics["random_baseline"]["ari_vs_truth"]) < 0.05
    assert evaluated.metrics["embedding"]["ari_vs_truth"] > 0.5
    history = DeltaTable(str(Path(config.lake.root or "") / "cluster_metrics")).to_pandas()
    assert set(history["method"]) == {"embedding", *baselines, "global_baseline"}
    assert not history.duplicated(["run_id", "method", "metric", "k", "backend"]).any()
    assert history["value"].map(math.isfinite).all()
    profiles = DeltaTable(str(Path(config.lake.root or "") / "cluster_profiles")).to_pandas()
    assert profiles["size"].sum() == embedded.rows and len(profiles) == clustered.k
    report = Path(evaluated.report_path)
    text = report.read_text()
    assert report.is_file() and "| ari_vs_truth | higher |" in text
    assert text.index("## Leaderboard") < text.index("| ari_vs_truth | higher |")
    assert evaluated.verdict and evaluated.verdict in text
    for plot in ("cluster_sizes.png", "projection.png", "top_categories.png"):
        assert (report.parent / plot).stat().st_size > 5_000
    # One k (the default): its figures in words, no one-point curve.
    assert f"This run has figures for one k (k = {clustered.k}: SSE " in text
    assert not (report.parent / "k_sweep.png").exists()
    for table in PIPELINE_TABLES:
        path = Path(config.lake.root or "") / table
        # one commit per writing stage: cluster_metrics is written by cluster and evaluate
        assert DeltaTable(str(path)).version() == (1 if table == "cluster_metrics" else 0)
        assert any(table in line for line in table_lines)
    sessions = DeltaTable(str(Path(config.lake.root or "") / "sessions")).to_pyarrow_table()
    assert sessions.num_rows == sessionized.sessions
    assert sum(sessions.column("n_events").to_pylist()) == generated.n_events_clean


def _names(selected: list[Stage]) -> list[str]:
    return [s.name for s in selected]


def test_stage_selection() -> None:
    assert _names(select_stages("ingest", "sessionize")) == ["ingest", "sessionize"]
    everything = select_stages(None, None)
    assert _names(applicable(everything, AppConfig())) == [
        "generate",
        "ingest",
        "sessionize",
        "embed",
        "cluster",
        "evaluate",
    ]
    sequence = dataclasses.replace(
        AppConfig(), encoder=dataclasses.replace(AppConfig().encoder, kind="sequence")
    )
    assert _names(applicable(everything, sequence))[-4:] == [
        "train_encoder",
        "embed",
        "cluster",
        "evaluate",
    ]
    assert _names(select_stages(None, "ingest")) == ["generate", "ingest"]
    with pytest.raises(ValueError, match="--from sessionize comes after --to generate"):
        select_stages("sessionize", "generate")


@pytest.mark.slow  # the whole pipeline in a subprocess with its own JVM (about 2 minutes)
def test_cli_runs_the_pipeline_and_prints_counts_and_tables(tmp_path: Path) -> None:
    overrides = [
        "generate.n_users=150",
        "generate.n_days=2",
        f"generate.output_dir={tmp_path / 'raw'}",
        f"generate.ground_truth_path={tmp_path / 'truth.csv'}",
        f"ingest.source.inputs=[{{paths: ['{tmp_path / 'raw' / 'jsonl'}'], format: jsonl, "
        "columns: {event_id: event_id, user_id: user, event_ts: event_time, event_type: type, "
        "item_id: product_id, category: category_code, brand: brand, price: price, "
        "query: search_query}}]",
        f"lake.root={tmp_path / 'lake'}",
        f"cluster.model_root={tmp_path / 'models'}",
        "evaluate.stability_seeds=1",
        f"evaluate.report_dir={tmp_path / 'reports'}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
    ]
    load_config([REPO / "conf" / "local.yaml"], overrides)  # the overrides themselves are valid
    args = [sys.executable, "-m", "jobs.cli", "pipeline", "--conf", "conf/local.yaml"]
    for override in overrides:
        args += ["--set", override]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    result = subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=600, check=False, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "reconciliation OK: input" in out
    assert "headline (k=6): embedding ARI" in out and "report: " in out
    for table in PIPELINE_TABLES:
        assert str(tmp_path / "lake" / table) in out
    # The config's sources and fingerprint are logged at start (the whole config at DEBUG).
    started = r"INFO jobs.config: config [0-9a-f]{12} from conf/local.yaml, --set"
    assert re.search(started, result.stderr)
    # A log a person can read: no line repeated more than twice, no progress bars.
    messages = Counter(re.sub(r"^\S+ \S+ ", "", line) for line in result.stderr.splitlines())
    assert [m for m, n in messages.items() if n > 2] == []
    assert "Loading weights" not in result.stderr and "it/s]" not in result.stderr
    assert "WindowExec" not in result.stderr + out
    # JSON normalising outgrows the JVM's 64 KB method limit; Spark recovers, so no ERROR line.
    assert "Failed to compile" not in result.stderr


def test_cli_rejects_a_bad_override_with_the_key_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "ingest", "--set", "sessionize.gap=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown key 'sessionize.gap'" in result.stderr
