"""The notebooks in notebooks/ run against real pipeline output, so they cannot rot.

A small pipeline (generate -> evaluate, k swept over two candidates) and a newer cluster-only
sweep that was never evaluated write a lake in a tmp folder; both notebooks are then executed
with nbclient in a kernel of this interpreter, pointed at that lake through their environment
parameters.  After the notebook's own cells, a probe cell prints what the notebook computed,
which is checked against the tables read independently here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from jobs.pipeline import applicable, run_pipeline
from jobs.stages import select as select_stages
from jobs.stages import stage

from .conftest import REPO
from .test_pipeline import small_config

NOTEBOOKS = REPO / "notebooks"
ANALYST = NOTEBOOKS / "segments_analyst.ipynb"
MODEL_RUNS = NOTEBOOKS / "model_runs.ipynb"
#: The evaluated run, and a newer run that only clustered (a sweep without evaluation).
RUN_EVALUATED = "20240101T000000Z-evaluated"
RUN_CLUSTERED = "20240101T000100Z-clustered"
PROBE_MARK = "NOTEBOOK-PROBE:"

ANALYST_PROBE = f"""
import json
print({PROBE_MARK!r} + json.dumps({{
    "run": RUN,
    "engine": lake.engine,
    "views": views,
    "sizes_spark": dict(zip(sizes_spark["segment"].astype(int).astype(str),
                            sizes_spark["members"].astype(int).tolist())),
    "sizes_duckdb": dict(zip(sizes["segment"].astype(int).astype(str),
                             sizes["members"].astype(int).tolist())),
    "share_sum": float(sizes["share"].sum()),
    "profile_sizes": dict(zip(profiles["cluster_id"].astype(int).astype(str),
                              profiles["size"].astype(int).tolist())),
    "top_category_rows": int(len(top_categories)),
    "top_category_rows_spark": int(len(top_categories_spark)),
    "profile_share_max_diff": float((stored - recomputed).abs().max()),
    "heatmap_shape": list(heat.shape),
    "segment": int(segment),
    "members": sorted(members["user_id"].astype(str)),
}}))
spark.stop()  # a clean JVM exit before the kernel shuts down
"""

MODEL_RUNS_PROBE = f"""
import json
print({PROBE_MARK!r} + json.dumps({{
    "run": RUN,
    "runs": list(overview.index),
    "kept_k": {{r: None if pd.isna(k) else int(k) for r, k in overview["k"].items()}},
    "evaluated": {{r: bool(e) for r, e in overview["evaluated"].items()}},
    "methods": [c for c in comparison.columns if c != "better"],
    "comparison_ari": {{m: float(comparison.loc["ari_vs_truth", m])
                        for m in comparison.columns
                        if m != "better" and pd.notna(comparison.loc["ari_vs_truth", m])}},
    "metric": metric,
    "over_runs": {{r: float(v) for r, v in over_runs["embedding"].items()}},
    "sweep": {{r: sorted(int(k) for k in s["k"]) for r, s in sweeps.groupby("run_id")}},
}}))
"""


# ==================================================================== kernel + execution


def _kernel_manager(tmp_path: Path) -> Any:
    """A kernel manager whose ``python3`` kernel is this interpreter's ipykernel (never a
    ``python3`` kernelspec installed elsewhere on the machine)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3",
                "language": "python",
            }
        )
    )
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def execute(
    path: Path, env: dict[str, str], tmp_path: Path, probe: str | None = None
) -> tuple[nbformat.NotebookNode, dict[str, Any]]:
    """Run ``path`` (plus ``probe`` as a last cell) in a fresh kernel started in notebooks/
    with ``env``; raises ``CellExecutionError`` on the first failing cell.  Returns the executed
    notebook and the probe's JSON."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if probe is not None:
        nb.cells.append(nbformat.v4.new_code_cell(probe))
    km = _kernel_manager(tmp_path)
    client = NotebookClient(
        nb,
        km=km,
        timeout=300,
        startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute(env=env)
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    found: dict[str, Any] = {}
    if probe is not None:
        for output in nb.cells[-1].outputs:
            for line in output.get("text", "").splitlines():
                if line.startswith(PROBE_MARK):
                    found = json.loads(line[len(PROBE_MARK) :])
        assert found, f"probe printed nothing: {nb.cells[-1].outputs}"
    return nb, found


def images(nb: nbformat.NotebookNode) -> list[str]:
    """The PNG figures the executed notebook displayed (base64 strings)."""
    return [
        output["data"]["image/png"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


def error_outputs(nb: nbformat.NotebookNode) -> list[Any]:
    return [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


# ==================================================================== the lake


@pytest.fixture(scope="module")
def demo_lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two cluster runs on ``small_config``'s generated users: a k sweep {4, 6} through the
    whole pipeline (evaluated, profiled), then a newer sweep {3, 5} on the same embeddings
    that was only clustered, as when an engineer tries candidates before evaluating.  (A
    second evaluation would add ~30 s on 2 cores; tests/test_explore.py covers multi-run
    comparisons.)"""
    root = tmp_path_factory.mktemp("notebook-lake")
    base = small_config(root)
    config = dataclasses.replace(
        base,
        cluster=dataclasses.replace(base.cluster, k=(4, 6)),
        # Stability refits are not shown by the notebooks: skipped to save time.
        evaluate=dataclasses.replace(
            base.evaluate,
            stability_seeds=0,
            stability_bootstraps=0,
            bootstrap_resamples=200,
            silhouette_sample=200,
        ),
    )
    run_pipeline(config, RUN_EVALUATED, applicable(select_stages(None, None), config))
    newer = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, k=(3, 5)))
    run_pipeline(newer, RUN_CLUSTERED, [stage("cluster")])
    # A config overlay for the notebooks' own Spark session: small, beside pytest's JVM.
    (root / "notebook.yaml").write_text(
        "spark:\n  master: local[2]\n  shuffle_partitions: 2\n  driver_memory: 1g\n"
    )
    return root


def notebook_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend renders the figures
    env["SEGMENTS_CONF"] = f"conf/local.yaml,{root / 'notebook.yaml'}"
    env["SEGMENTS_LAKE_ROOT"] = str(root / "lake")
    env["PYSPARK_PYTHON"] = sys.executable
    return env


def read(root: Path, table: str) -> pd.DataFrame:
    return DeltaTable(str(root / "lake" / table)).to_pandas()


# ==================================================================== tests


def kept_ks(root: Path) -> dict[str, int]:
    """Clusters per run, from cluster_centroids."""
    centroids = read(root, "cluster_centroids")
    return {str(r): int(n) for r, n in centroids.groupby("run_id").size().items()}


@pytest.mark.slow
def test_analyst_notebook_runs_and_its_numbers_match_the_tables(
    demo_lake: Path, tmp_path: Path
) -> None:
    nb, probe = execute(ANALYST, notebook_env(demo_lake), tmp_path, ANALYST_PROBE)
    assert not error_outputs(nb)

    # By default the most recent run that has profiles, not the newer unevaluated one.
    assert probe["run"] == RUN_EVALUATED
    assert probe["engine"] == "delta-rs"
    assert "cluster_profiles" in probe["views"] and "user_sequences" in probe["views"]
    assignments = read(demo_lake, "cluster_assignments")
    run = assignments[assignments["run_id"] == RUN_EVALUATED]
    expected_sizes = {str(c): int(n) for c, n in run["cluster_id"].value_counts().items()}
    k = kept_ks(demo_lake)[RUN_EVALUATED]
    assert len(expected_sizes) == k and k in (4, 6)
    # Segment sizes agree between Spark SQL, DuckDB, the profiles and the table itself.
    assert probe["sizes_spark"] == probe["sizes_duckdb"] == expected_sizes
    assert probe["profile_sizes"] == expected_sizes
    users = small_config(demo_lake).generate.n_users  # every human user is clustered
    assert sum(probe["sizes_duckdb"].values()) == len(run) == users
    assert probe["share_sum"] == pytest.approx(1.0)
    # Top categories: the same rows in both engines, shares consistent with the sequences.
    profiles = read(demo_lake, "cluster_profiles")
    assert set(profiles["run_id"]) == {RUN_EVALUATED}
    expected_top = int(sum(len(t) for t in profiles["top_categories"]))
    assert probe["top_category_rows"] == probe["top_category_rows_spark"] == expected_top > 0
    assert probe["profile_share_max_diff"] < 1e-9
    assert probe["heatmap_shape"][0] == k and probe["heatmap_shape"][1] >= 3
    # The members of the default segment (the largest) are exactly its assignments.
    largest = max(expected_sizes, key=lambda c: (expected_sizes[c], -int(c)))
    assert probe["segment"] == int(largest)
    expected_members = run.loc[run["cluster_id"] == int(largest), "user_id"]
    assert probe["members"] == sorted(expected_members.astype(str))
    # Sizes bar chart, funnel rates and the category heat map were drawn.
    assert len(images(nb)) >= 3


@pytest.mark.slow
def test_model_runs_notebook_compares_runs_and_k_sweeps(demo_lake: Path, tmp_path: Path) -> None:
    nb, probe = execute(MODEL_RUNS, notebook_env(demo_lake), tmp_path, MODEL_RUNS_PROBE)
    assert not error_outputs(nb)

    history = read(demo_lake, "cluster_metrics")
    kept = kept_ks(demo_lake)
    assert probe["runs"] == [RUN_EVALUATED, RUN_CLUSTERED]  # oldest first
    assert probe["evaluated"] == {RUN_EVALUATED: True, RUN_CLUSTERED: False}
    # The evaluated run's k is known; the unevaluated sweep's is not (it wrote k=3 or 5).
    assert probe["kept_k"] == {RUN_EVALUATED: kept[RUN_EVALUATED], RUN_CLUSTERED: None}
    assert kept[RUN_CLUSTERED] in (3, 5)
    assert probe["run"] == RUN_EVALUATED  # the latest evaluated run
    assert probe["methods"] == [
        "embedding",
        "tfidf_tokens_baseline",
        "tfidf_baseline",
        "aggregate_baseline",
        "random_baseline",
        "global_baseline",
    ]
    ari = history[(history["metric"] == "ari_vs_truth") & (history["run_id"] == RUN_EVALUATED)]
    assert len(ari) == 5  # global_baseline is one segment: no ARI
    assert probe["comparison_ari"] == {
        row.method: pytest.approx(row.value) for row in ari.itertuples()
    }
    assert probe["metric"] == "ari_vs_truth"
    embedding_ari = ari[ari["method"] == "embedding"]["value"].item()
    assert probe["over_runs"] == {RUN_EVALUATED: pytest.approx(embedding_ari)}
    # Both runs swept k; the curves cover every candidate.
    assert probe["sweep"] == {RUN_EVALUATED: [4, 6], RUN_CLUSTERED: [3, 5]}
    # Methods bar chart, metric over runs and the k sweep curves.
    assert len(images(nb)) >= 3


def test_committed_notebooks_are_clean() -> None:
    """Outputs cleared, one kernelspec, a tagged parameters cell reading the environment."""
    for path in (ANALYST, MODEL_RUNS):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        for variable in ("SEGMENTS_CONF", "SEGMENTS_LAKE_ROOT", "SEGMENTS_RUN_ID"):
            assert variable in code[0].source, (path.name, variable)
        # No pipeline logic: the notebooks import the package's helpers.
        assert any("from jobs import explore" in c.source for c in code), path.name
