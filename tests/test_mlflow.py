"""MLflow: cluster and evaluate runs tracked in a local store, and the segment assigner logged as a
pyfunc model that reproduces the batch job's assignments (README, "MLflow").

Everything goes to a file store under the test's tmp folder; nothing reaches a server.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# A test dependency (the [mlflow] extra of [test]): never skipped, so CI always runs these.
import mlflow
import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import cluster, embed
from jobs.core.config import (
    AppConfig,
    ClusterConfig,
    ConfigError,
    EncoderConfig,
    LakeConfig,
    MlflowConfig,
    load_config,
)
from jobs.core.lake import Lake
from jobs.core.tables import (
    CLUSTER_ASSIGNMENTS,
    CLUSTER_METRICS,
    SESSIONS,
    USER_SEQUENCES,
    contract_of,
)
from jobs.core.tracking import resolve_tracking_uri
from jobs.evaluation.tracking import log_evaluate_run
from jobs.sequences.rendering import render_sequences
from udfs.assigner import EVENT_FIELDS, nearest_centroid
from udfs.rendering import item_bucket, render_events

pytestmark = pytest.mark.mlflow


REGISTERED = "segment_assigner_test"
FIELDS = [name for name, _, _ in EVENT_FIELDS]


def _events(row_events: list[Any]) -> list[dict[str, Any]]:
    """A Spark ``events`` array -> the model's input: the fields rendering reads, in order."""
    return [{k: e[k] for k in FIELDS if k in e.asDict()} for e in row_events]


# ------------------------------------------------------------------ rendering without Spark

USER_EVENTS = (
    "array<struct<ts:timestamp, event_type:string, item_id:string, category:string, "
    "brand:string, price:double, session_id:string>>"
)
SESSION_EVENTS = (
    "array<struct<ts:timestamp, event_type:string, item_id:string, category:string, "
    "brand:string, price:double>>"
)


def test_plain_python_rendering_equals_spark_rendering(spark: SparkSession) -> None:
    from datetime import datetime

    t = datetime(2024, 3, 1)
    long_id = "sku-" + "x" * 40 + "-é"  # >= 32 bytes (XXH64 stripes) and non-ASCII
    users = [
        (
            "u1",
            [
                (t, "view", "p1", "electronics.smartphone", "samsung", 450.0, "s1"),
                (t, "add_to_cart", "p1", "electronics.smartphone", None, 20.0, "s1"),
                (t, "search", None, None, None, None, "s2"),
                (t, "purchase", long_id, "kids_toys.lego", "lego", 19.99, "s2"),
                (t, "mystery", "p-7", "", "", float("nan"), None),
                (t, None, "p8", "home", "ikea", 600.0, "s3"),
                (t, "remove_from_cart", "12345678", "home", "ikea", 5000.0, "s3"),
                (t, "other", "ab", "garden", None, 60.0, "s4"),
            ],
        ),
        ("u2", []),
        ("u3", [(t, "view", None, None, None, None, None)]),
    ]
    frame = spark.createDataFrame(users, f"user_id string, events {USER_EVENTS}")
    sessions = spark.createDataFrame(
        [("s9", [e[:6] for e in users[0][1]])], f"session_id string, events {SESSION_EVENTS}"
    )
    configs = [
        EncoderConfig(),
        EncoderConfig(include_item_ids=True, price_band_edges=(10.0, 100.0)),
        EncoderConfig(kind="sequence"),
        EncoderConfig(kind="sequence", include_item_ids=True),
    ]
    for df in (frame, sessions):  # one Spark job per frame, every rendering a column
        for i, config in enumerate(configs):
            df = render_sequences(df, config=config).withColumnRenamed("rendered", f"r{i}")
        for row in df.collect():
            for i, config in enumerate(configs):
                assert render_events(_events(row["events"]), config) == row[f"r{i}"], config

    ids = [None, "", "a", "p1", "12345678", "123456789012", long_id, "z" * 33, "ü" * 70]
    spark_buckets = (
        spark.createDataFrame([(i,) for i in ids], "item_id string")
        .select(F.pmod(F.xxhash64("item_id"), F.lit(1024)).cast("string").alias("b"))
        .collect()
    )
    assert [item_bucket(i) for i in ids] == [r["b"] for r in spark_buckets]


def test_nearest_centroid_breaks_ties_to_the_lowest_id() -> None:
    centroids = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    ids, distances = nearest_centroid(np.array([[0.6, 0.8], [1.0, 0.0]], np.float32), centroids)
    assert ids.tolist() == [1, 0] and ids.dtype == np.int64
    np.testing.assert_allclose(distances, [math.sqrt(0.36 + 0.04), 0.0])


# ------------------------------------------------------------------ tracking and the model


#: Three kinds of shopper: (category, brands, price range); each user mostly shops one.
PERSONAS = (
    ("electronics.smartphone", ("samsung", "apple"), (300.0, 900.0)),
    ("apparel.shoes", ("nike", "adidas"), (25.0, 90.0)),
    ("kids.toys", ("lego", None), (5.0, 30.0)),
)
N_USERS = 24


def write_tiny_lake(spark: SparkSession, lake: Lake) -> None:
    """``sessions`` and ``user_sequences`` of :data:`N_USERS` users (2 sessions each, 3-6
    events per session, one off-persona event in five), built directly in the tables' shape."""
    from datetime import datetime, timedelta

    rng = np.random.default_rng(3)
    types = ("view", "view", "view", "add_to_cart", "purchase", "search")
    sessions, users = [], []
    for u in range(N_USERS):
        user_id, user_events = f"u{u:03d}", []
        for s in range(2):
            session_id, start = f"{user_id}-s{s}", datetime(2024, 3, 1 + s, 8 + u % 10)
            events = []
            for i in range(int(rng.integers(3, 7))):
                persona = PERSONAS[u % 3 if rng.random() > 0.2 else int(rng.integers(3))]
                kind = types[int(rng.integers(len(types)))]
                brand = persona[1][int(rng.integers(2))]
                price = None if kind == "search" else float(rng.uniform(*persona[2]))
                item = None if kind == "search" else f"i{int(rng.integers(40))}"
                ts = start + timedelta(minutes=3 * i)
                events.append((ts, kind, item, persona[0], brand, price))
            counts = (
                len(events),
                sum(e[1] == "view" for e in events),
                sum(e[1] == "add_to_cart" for e in events),
                sum(e[1] == "purchase" for e in events),
                float(sum(e[5] or 0.0 for e in events if e[1] == "purchase")),
            )
            end = events[-1][0]
            duration = (end - start).total_seconds()
            sessions.append(
                (session_id, user_id, start, end, duration, *counts, False, events, start.date())
            )
            user_events += [(*e, session_id) for e in events]
        totals = tuple(sum(r[5 + i] for r in sessions[-2:]) for i in range(5))
        first, last = user_events[0][0], user_events[-1][0]
        users.append((user_id, 2, first, last, *totals, False, user_events))
    lake.overwrite(SESSIONS, spark.createDataFrame(sessions, contract_of(SESSIONS).schema))
    lake.overwrite(USER_SEQUENCES, spark.createDataFrame(users, contract_of(USER_SEQUENCES).schema))


@pytest.fixture(scope="module")
def clustered(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[AppConfig, Any]:
    """The tiny lake embedded with MiniLM (fp32) and clustered (k=3) by the real stages,
    tracked in a file store under tmp, the assigner registered as :data:`REGISTERED`."""
    root = tmp_path_factory.mktemp("mlflow")
    config = dataclasses.replace(
        AppConfig(),
        lake=LakeConfig(engine="delta-rs", root=str(root / "lake")),
        # fp32: bf16 vectors depend on which rows share a batch (README, "MLflow").
        encoder=EncoderConfig(max_length=64, batch_size=32, precision="fp32"),
        cluster=ClusterConfig(k=3, backend="cpu", model_root=str(root / "models")),
        mlflow=MlflowConfig(tracking_uri=str(root / "mlruns"), registered_model_name=REGISTERED),
    )
    lake = Lake(spark, config.lake)
    write_tiny_lake(spark, lake)
    embed.run(spark, lake, config, run_id="run-1")
    result = cluster.run(spark, lake, config, run_id="run-1")
    mlflow.set_tracking_uri(resolve_tracking_uri(config.mlflow))
    return config, result


def test_cluster_run_is_tracked_with_params_metrics_and_the_run_id_tag(
    spark: SparkSession, clustered: tuple[AppConfig, Any]
) -> None:
    config, result = clustered
    client = mlflow.MlflowClient()
    (run,) = mlflow.search_runs(
        experiment_names=["clickstream-segments"],
        filter_string="tags.run_id = 'run-1' and tags.stage = 'cluster'",
        output_format="list",
    )
    assert run.info.run_id == result.mlflow_run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "cluster-run-1"
    params = run.data.params
    assert params["run_id"] == "run-1" and params["k"] == str(result.k)
    assert params["model_version"] == result.model_version
    assert (params["cluster.k"], params["encoder.kind"], params["encoder.precision"]) == (
        "3",
        "text",
        "fp32",
    )
    assert params["sessionize.max_events"] == "200" and params["embed.unit"] == "user"

    # The metrics are the Delta table's values, the chosen k's plainly and the sweep over k.
    table = Lake(spark, config.lake).read(CLUSTER_METRICS).where("run_id = 'run-1'").collect()
    at_k = {f"embedding/{r['metric']}": r["value"] for r in table if r["k"] == result.k}
    assert {m: run.data.metrics[m] for m in at_k} == at_k and "embedding/sse" in at_k
    assert run.data.metrics["rows"] == N_USERS
    history = client.get_metric_history(run.info.run_id, "sweep/embedding/sse")
    sse = {r["k"]: r["value"] for r in table if r["metric"] == "sse"}
    assert {m.step: m.value for m in history} == sse and set(sse) == {3}
    assert run.data.tags["assigner"].startswith("models:/")
    assert f"MLflow run {result.mlflow_run_id}" in result.summary()


#: Loads the registered model in a fresh interpreter (only the installed project and its
#: dependencies; no test state) and assigns the units of stdin.
LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
out = model.predict(pd.DataFrame({"events": json.load(sys.stdin)}))
columns = {c: out[c].tolist() for c in out.columns}
print(json.dumps(columns | {"dtype": str(out["cluster_id"].dtype)}))
"""


def test_registered_assigner_reproduces_the_batch_assignments(
    spark: SparkSession, clustered: tuple[AppConfig, Any], tmp_path: Path
) -> None:
    config, result = clustered
    lake = Lake(spark, config.lake)
    batch = {
        r["id"]: (r["cluster_id"], r["distance"])
        for r in lake.read(CLUSTER_ASSIGNMENTS).where("run_id = 'run-1'").collect()
    }
    users = lake.read(USER_SEQUENCES).orderBy("user_id").collect()
    assert sorted(batch) == [u["user_id"] for u in users] and len(users) == N_USERS

    version = mlflow.MlflowClient().get_model_version(REGISTERED, "1")
    assert version.run_id == result.mlflow_run_id
    uri = f"models:/{REGISTERED}/1"
    signature = mlflow.models.get_model_info(uri).signature
    assert signature.inputs.input_names() == ["events"]
    assert [(c.name, c.type.name) for c in signature.outputs.inputs] == [
        ("cluster_id", "long"),
        ("distance", "double"),
    ]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    fresh = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, mlflow.get_tracking_uri(), uri],
        input=json.dumps([_events(u["events"]) for u in users]),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | {"MLFLOW_ALLOW_FILE_STORE": "true"},
        check=False,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    predicted = json.loads(fresh.stdout.splitlines()[-1])
    expected = [batch[u["user_id"]] for u in users]
    assert predicted["dtype"] == "int64"
    assert predicted["cluster_id"] == [c for c, _ in expected]
    np.testing.assert_allclose(predicted["distance"], [d for _, d in expected], atol=1e-5)
    assert len(set(predicted["cluster_id"])) == result.k  # not vacuous: every segment occurs


def test_evaluate_run_is_tracked_with_report_and_plots(
    clustered: tuple[AppConfig, Any], tmp_path: Path
) -> None:
    config, _ = clustered
    report = tmp_path / "run-1" / "report.md"
    report.parent.mkdir()
    report.write_text("# report\n")
    for name in ("k_sweep.png", "projection.png"):
        (report.parent / name).write_bytes(b"\x89PNG")
    result = dataclasses.make_dataclass("R", ["run_id", "k", "rows", "metrics"])(
        "run-1", 4, 40, {"embedding": {"ari_vs_truth": 0.5, "nan": float("nan")}}
    )
    target = dataclasses.make_dataclass("T", ["unit", "model_version", "backend"])(
        "user", "v1", "cpu"
    )
    mlflow_run = log_evaluate_run(config, result, target, report=report, run_id="eval-9")
    run = mlflow.get_run(mlflow_run)
    assert (run.data.tags["run_id"], run.data.tags["stage"]) == ("run-1", "evaluate")
    assert run.data.tags["stage_run_id"] == "eval-9"
    assert run.data.metrics == {"embedding/ari_vs_truth": 0.5}  # non-finite left out
    assert (run.data.params["k"], run.data.params["evaluate.report_dir"]) == ("4", "data/reports")
    names = sorted(a.path for a in mlflow.MlflowClient().list_artifacts(mlflow_run, "report"))
    assert names == ["report/k_sweep.png", "report/projection.png", "report/report.md"]

    disabled = dataclasses.replace(config, mlflow=MlflowConfig(enabled=False))
    assert log_evaluate_run(disabled, result, target, report=report, run_id="x") is None


def test_enabled_without_mlflow_installed_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"mlflow\.enabled.*pip install 'clickstream-segments"):
        load_config()
    assert load_config(overrides=["mlflow.enabled=false"]).mlflow.enabled is False


def test_tracking_uri_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.core import tracking

    # The tests' own store (conftest) aside: the product's default is data/mlruns.
    monkeypatch.setattr(tracking, "LOCAL_STORE", "data/mlruns")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert resolve_tracking_uri(MlflowConfig()) == (Path("data/mlruns").resolve().as_uri())
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    assert resolve_tracking_uri(MlflowConfig()) == "databricks"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # the config decides
    assert resolve_tracking_uri(MlflowConfig()) == "databricks"
    local = MlflowConfig(tracking_uri="http://127.0.0.1:5000")
    assert resolve_tracking_uri(local) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(MlflowConfig(tracking_uri="relative/store")) == (
        Path("relative/store").resolve().as_uri()
    )


def test_assigner_of_a_sequence_encoder_carries_its_weights(tmp_path: Path) -> None:
    import shutil

    import pandas as pd
    import torch
    from transformers import BertConfig, BertModel

    from jobs.core.tracking import stage_run
    from udfs.assigner import log_assigner
    from udfs.encoder import SEQUENCE_VOCAB_FILE, load_encoder, model_version
    from udfs.training import build_vocab

    encoder = EncoderConfig(kind="sequence", include_item_ids=True, max_length=32, precision="fp32")
    units: list[list[dict[str, Any]]] = [
        [
            {"event_type": "view", "category": "kids.toys", "item_id": "i1", "session_id": "a"},
            {"event_type": "purchase", "category": "kids.toys", "item_id": "i2", "session_id": "b"},
        ],
        [{"event_type": "view", "category": "apparel.shoes", "price": 40.0}],
        [],
    ]
    texts = [render_events(u, encoder) for u in units]
    # A sequence-encoder directory as train_encoder writes it (untrained weights will do).
    weights = tmp_path / "sequence-encoder"
    vocab = build_vocab(texts)
    torch.manual_seed(0)
    shape = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    BertModel(shape, add_pooling_layer=False).save_pretrained(weights)
    (weights / SEQUENCE_VOCAB_FILE).write_text(json.dumps(vocab))
    centroids = np.random.default_rng(0).normal(size=(2, 16))
    vectors = load_encoder(encoder, model_dir=weights, device="cpu").encode(texts)
    expected_ids, expected_distances = nearest_centroid(vectors, centroids)

    tracking = MlflowConfig(tracking_uri=str(tmp_path / "mlruns"))
    with stage_run(tracking, stage="cluster", run_id="seq-1"):
        info = log_assigner(
            encoder=encoder,
            model_dir=weights,
            version=model_version(encoder, weights),
            centroids=centroids,
            max_events=200,
            unit="user",
            run_id="seq-1",
            scratch=tmp_path,
        )
    shutil.rmtree(weights)  # the logged model must hold its own copy
    got = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"events": units}))
    assert got["cluster_id"].tolist() == expected_ids.tolist()
    np.testing.assert_allclose(got["distance"], expected_distances, atol=1e-6)
