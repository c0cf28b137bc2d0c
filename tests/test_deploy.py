"""The Databricks bundle (databricks.yml + resources/*.yml), checked without a workspace.

The YAML is parsed as the Databricks CLI would see it; then, per target, every task's parameters
are resolved (bundle variables, ``${workspace.file_path}`` = this checkout, ``{{job.run_id}}`` = a
number) and run through the stages' own argument parser and config loader, so a task that would
fail on its first line in the workspace fails here.
"""

from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import itertools
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.core.config import AppConfig, load_config
from jobs.runner import build_parser
from jobs.stages import NAMES as STAGES

from .conftest import REPO, build_wheel

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

BUNDLE_FILE = REPO / "databricks.yml"
#: Stages the job leaves out, each with the reason stated in the job file's comments.
NOT_IN_JOB = {"generate", "train_encoder"}
CPU_STAGES = {"ingest", "sessionize", "evaluate"}
GPU_STAGES = {"embed", "cluster"}
RUN_ID = "987654321"

VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_-]+)\}")
ANY_REF = re.compile(r"\$\{([^}]+)\}")
DYNAMIC_REF = re.compile(r"\{\{\s*([^}\s]+)\s*\}\}")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


BUNDLE = _load(BUNDLE_FILE)
INCLUDED = sorted({p for pattern in BUNDLE.get("include", []) for p in REPO.glob(pattern)})
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _jobs() -> dict[str, tuple[Path, dict[str, Any]]]:
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in [BUNDLE_FILE, *INCLUDED]:
        data = _load(path) if path != BUNDLE_FILE else BUNDLE
        for key, job in (data.get("resources") or {}).get("jobs", {}).items():
            assert key not in found, f"job {key} defined twice"
            found[key] = (path, job)
    return found


JOBS = _jobs()


@pytest.fixture(scope="module")
def job() -> tuple[Path, dict[str, Any]]:
    assert len(JOBS) == 1, f"one job expected, found {sorted(JOBS)}"
    return next(iter(JOBS.values()))


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _variables(target: str) -> dict[str, str]:
    """Variable values for a target: the defaults, then the target's own values."""
    values = {name: spec.get("default") for name, spec in BUNDLE["variables"].items()}
    values.update((BUNDLE["targets"][target] or {}).get("variables") or {})
    return values


def _resolve(node: Any, target: str) -> Any:
    """Substitute as a deployment of ``target`` and a job run would."""
    variables = _variables(target)
    known = {"workspace.file_path": str(REPO)}

    def one(text: str) -> str:
        text = VAR_REF.sub(lambda m: str(variables[m.group(1)]), text)
        text = ANY_REF.sub(lambda m: known[m.group(1)], text)
        return DYNAMIC_REF.sub(lambda m: {"job.run_id": RUN_ID}[m.group(1)], text)

    if isinstance(node, str):
        return one(node)
    if isinstance(node, dict):
        return {k: _resolve(v, target) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, target) for v in node]
    return node


def _tasks(job: tuple[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    return list(job[1]["tasks"])


def _task_config(task: dict[str, Any], target: str) -> tuple[AppConfig, str | None]:
    params = _resolve(task["python_wheel_task"]["parameters"], target)
    args = build_parser("segments", "bundle task").parse_args(params)
    return load_config(args.conf, args.overrides), args.run_id


# --------------------------------------------------------------------------------------------
# Bundle, artifact, targets, variables
# --------------------------------------------------------------------------------------------


def test_bundle_name_targets_and_includes() -> None:
    assert BUNDLE["bundle"]["name"] == "clickstream_segments"
    assert any(p.parent.name == "resources" and p.name.endswith(".job.yml") for p in INCLUDED)
    targets = BUNDLE["targets"]
    assert set(targets) == {"dev", "prod"}
    assert targets["dev"]["mode"] == "development" and targets["dev"].get("default") is True
    assert targets["prod"]["mode"] == "production" and not targets["prod"].get("default")


def test_dev_never_writes_production_tables() -> None:
    dev, prod = _variables("dev"), _variables("prod")
    assert (dev["catalog"], dev["schema"]) != (prod["catalog"], prod["schema"])
    assert dev["artifacts_path"] != prod["artifacts_path"]


def test_wheel_artifact_builds_into_the_folder_the_tasks_install_from(
    job: tuple[Path, dict[str, Any]],
) -> None:
    artifacts = BUNDLE["artifacts"]
    assert len(artifacts) == 1
    (artifact,) = artifacts.values()
    assert artifact["type"] == "whl"
    assert (REPO / artifact.get("path", ".") / "pyproject.toml").is_file()
    build = shlex.split(artifact["build"])
    assert "wheel" in build and "--no-deps" in build
    out_dir = build[build.index("--wheel-dir") + 1] if "--wheel-dir" in build else "dist"
    built_into = (REPO / artifact.get("path", ".") / out_dir).resolve()
    job_file = job[0]
    for task in _tasks(job):
        wheels = [lib["whl"] for lib in task.get("libraries", []) if "whl" in lib]
        assert len(wheels) == 1, f"task {task['task_key']}: one wheel library expected"
        # Library paths are relative to the file that declares them.
        library = (job_file.parent / wheels[0]).resolve()
        assert library.parent == built_into, (task["task_key"], library)
        assert fnmatch.fnmatch("clickstream_segments-0.1.0-py3-none-any.whl", library.name)


def test_every_variable_used_is_declared_and_every_declared_one_is_used() -> None:
    texts = _strings(BUNDLE) + [s for path in INCLUDED for s in _strings(_load(path))]
    used = {m.group(1) for text in texts for m in VAR_REF.finditer(text)}
    declared = set(BUNDLE["variables"])
    assert used - declared == set(), "undeclared"
    assert declared - used == set(), "declared but unused"
    for target in BUNDLE["targets"]:
        unset = [name for name, value in _variables(target).items() if value in (None, "")]
        assert unset == [], f"target {target}: no value for {unset}"
        assert set((BUNDLE["targets"][target] or {}).get("variables") or {}) <= declared


def test_only_known_substitutions_and_no_double_workspace_prefix() -> None:
    allowed = {
        "workspace.file_path",
        "workspace.current_user.userName",
        "bundle.name",
        "bundle.target",
    }
    for path in [BUNDLE_FILE, *INCLUDED]:
        text = path.read_text(encoding="utf-8")
        refs = {m.group(1) for m in ANY_REF.finditer(text) if not m.group(1).startswith("var.")}
        assert refs <= allowed, (path.name, refs - allowed)
        assert {m.group(1) for m in DYNAMIC_REF.finditer(text)} <= {"job.run_id"}
        # Since Databricks CLI 0.230 ${workspace.file_path} already starts with /Workspace.
        assert "/Workspace${workspace" not in text and "/Workspace/${workspace" not in text


# --------------------------------------------------------------------------------------------
# The job: tasks, order, entry points, clusters
# --------------------------------------------------------------------------------------------


def test_tasks_run_the_pipeline_stages_in_order(job: tuple[Path, dict[str, Any]]) -> None:
    tasks = _tasks(job)
    expected = [stage for stage in STAGES if stage not in NOT_IN_JOB]
    assert [t["task_key"] for t in tasks] == expected
    assert "depends_on" not in tasks[0]
    for previous, task in itertools.pairwise(tasks):
        assert task["depends_on"] == [{"task_key": previous["task_key"]}], task["task_key"]
    comments = " ".join(
        line for line in job[0].read_text(encoding="utf-8").splitlines() if line.lstrip()[:1] == "#"
    )
    for stage in NOT_IN_JOB:
        assert f"- {stage}:" in comments, f"the job file should say why {stage} is left out"


def test_wheel_tasks_call_the_console_scripts_of_each_stage(
    job: tuple[Path, dict[str, Any]],
) -> None:
    scripts = PYPROJECT["project"]["scripts"]
    distribution = re.sub(r"[-_.]+", "_", PYPROJECT["project"]["name"]).lower()
    for task in _tasks(job):
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == distribution
        entry_point = wheel_task["entry_point"]
        assert entry_point in scripts, entry_point
        assert scripts[entry_point] == f"jobs.{task['task_key']}:main", entry_point
        params = wheel_task["parameters"]
        assert all(isinstance(p, str) for p in params), params  # the Jobs API takes strings


def test_stages_run_on_the_cpu_or_the_gpu_cluster(job: tuple[Path, dict[str, Any]]) -> None:
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job[1]["job_clusters"]}
    placement: dict[str, set[str]] = {}
    for task in _tasks(job):
        assert "new_cluster" not in task and "existing_cluster_id" not in task
        placement.setdefault(task["job_cluster_key"], set()).add(task["task_key"])
    assert set(placement) == set(clusters) and len(clusters) == 2
    (gpu_key,) = [k for k, tasks in placement.items() if tasks == GPU_STAGES]
    (cpu_key,) = [k for k, tasks in placement.items() if tasks == CPU_STAGES]
    for target in BUNDLE["targets"]:
        gpu = _resolve(clusters[gpu_key], target)
        cpu = _resolve(clusters[cpu_key], target)
        assert "gpu-ml" in gpu["spark_version"]
        assert "gpu" not in cpu["spark_version"]
        for cluster in (gpu, cpu):
            # The Spark 4.0 line (Databricks Runtime 17.x, Scala 2.13), like pyspark==4.0.1.
            assert re.fullmatch(r"17\.\d+\.x-.*scala2\.13", cluster["spark_version"]), cluster
            assert cluster["node_type_id"] and cluster["data_security_mode"] == "SINGLE_USER"
        assert gpu["spark_conf"]["spark.task.resource.gpu.amount"] == "1"


# --------------------------------------------------------------------------------------------
# What each task would run with
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_each_task_resolves_to_a_valid_configuration(
    job: tuple[Path, dict[str, Any]], target: str
) -> None:
    variables = _variables(target)
    conf_file = REPO / variables["conf_file"]
    assert conf_file.is_file() and conf_file.parent.name == "conf"
    profile = load_config([conf_file])
    configs: dict[str, AppConfig] = {}
    for task in _tasks(job):
        params = task["python_wheel_task"]["parameters"]
        assert params[params.index("--conf") + 1] == "${workspace.file_path}/${var.conf_file}"
        config, run_id = _task_config(task, target)
        assert run_id == RUN_ID, task["task_key"]  # one run id across the job's tasks
        configs[task["task_key"]] = config

    for key, config in configs.items():
        assert config.lake.engine == "spark", key
        assert config.lake.root is None, key
        assert config.lake.catalog_schema == f"{variables['catalog']}.{variables['schema']}", key
        # Nothing may land on a job cluster's local disk, which is gone after the run.
        paths = [
            config.generate.output_dir,
            config.generate.ground_truth_path,
            config.train_encoder.output_dir,
            config.cluster.model_root,
            config.evaluate.report_dir,
            *(p for spec in config.ingest.source.inputs for p in spec.paths),
        ]
        assert all(p.startswith("/Volumes/") for p in paths), (key, paths)
        assert config.cluster.model_root.startswith(variables["artifacts_path"] + "/"), key
        assert config.evaluate.report_dir.startswith(variables["artifacts_path"] + "/"), key
        assert config.generate.output_dir.startswith(variables["raw_path"] + "/"), key

    (ingest_input,) = configs["ingest"].ingest.source.inputs
    assert ingest_input.paths == (f"{variables['raw_path']}/synthetic/jsonl",)
    assert ingest_input.paths == (f"{configs['ingest'].generate.output_dir}/jsonl",)
    (profile_input,) = profile.ingest.source.inputs
    assert (ingest_input.format, ingest_input.columns) == (
        profile_input.format,
        profile_input.columns,
    )
    assert configs["evaluate"].evaluate.cluster_run_id == RUN_ID

    # Apart from the ingest source and evaluate's run, every task sees the same configuration:
    # in particular the encoder rendering, part of model_version, so that evaluate (CPU) can
    # re-embed with exactly the encoder embed (GPU) used.
    def comparable(config: AppConfig) -> AppConfig:
        return dataclasses.replace(
            config,
            ingest=profile.ingest,
            evaluate=dataclasses.replace(config.evaluate, cluster_run_id=None),
        )

    reference = comparable(configs["embed"])
    for key, config in configs.items():
        assert comparable(config) == reference, key
    assert reference.encoder.device != "cpu"


def test_the_built_wheel_has_the_package_and_entry_points_the_tasks_name(
    job: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
        metadata = archive.read(entry_points.replace("entry_points.txt", "METADATA")).decode()
    dist_info = entry_points.split("/")[0]
    requires = [
        line
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert requires and not [r for r in requires if "pyspark" in r]  # the runtime provides Spark
    parser = configparser.ConfigParser()
    parser.read_string(text)
    console = dict(parser["console_scripts"])
    for task in _tasks(job):
        wheel_task = task["python_wheel_task"]
        assert dist_info.startswith(wheel_task["package_name"] + "-")
        assert console[wheel_task["entry_point"]] == f"jobs.{task['task_key']}:main"
    assert f"jobs/{STAGES[1]}.py" in names and "udfs/spark_udf.py" in names
