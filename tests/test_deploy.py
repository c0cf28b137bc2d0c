"""The Databricks bundle (databricks.yml + resources/*.yml), checked without a workspace.

The YAML is parsed as the Databricks CLI would see it. Every job, as written and as each target
resolves it, is loaded into the typed ``Job`` model that the ``databricks-bundles`` package
generates from Databricks' own bundle schema: an unknown or misspelled key, a value of the wrong
type or outside an enum fails here instead of at deploy time (``databricks bundle validate`` needs
a workspace: it asks it for the current user first). Then, per target, every task's parameters
are resolved (bundle variables, ``${workspace.file_path}`` = this checkout, ``{{job.run_id}}`` = a
number) and run through the stages' own argument parser and config loader, so a task that would
fail on its first line in the workspace fails here.
"""

from __future__ import annotations

import configparser
import copy
import dataclasses
import fnmatch
import itertools
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from databricks.bundles.jobs import Environment, Job, JobCluster, JobEnvironment, Task

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
#: Stages on serverless job compute (Spark SQL / MLlib) and on the classic GPU job cluster.
CPU_STAGES = {"ingest", "sessionize", "evaluate"}
GPU_STAGES = {"embed", "cluster"}
#: Serverless environment version -> Databricks Runtime major of its Databricks Connect client
#: (Databricks' serverless environment release notes): 4 pairs with 17.x, Spark 4.0.
SERVERLESS_RUNTIME = {"4": "17"}
RUN_ID = "987654321"
_T = TypeVar("_T")

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


def _resolve(node: Any, target: str, *, run: bool = True) -> Any:
    """Substitute as a deployment of ``target`` would, then (``run``) as a job run would."""
    variables = _variables(target)
    known = {"workspace.file_path": str(REPO)}

    def one(text: str) -> str:
        text = VAR_REF.sub(lambda m: str(variables[m.group(1)]), text)
        text = ANY_REF.sub(lambda m: known[m.group(1)], text)
        if not run:
            return text
        return DYNAMIC_REF.sub(lambda m: {"job.run_id": RUN_ID}[m.group(1)], text)

    if isinstance(node, str):
        return one(node)
    if isinstance(node, dict):
        return {k: _resolve(v, target, run=run) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, target, run=run) for v in node]
    return node


def _tasks(job: tuple[Path, dict[str, Any]]) -> list[dict[str, Any]]:
    return list(job[1]["tasks"])


def _environments(job: tuple[Path, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {env["environment_key"]: env["spec"] for env in job[1].get("environments", [])}


def _typed_job(definition: dict[str, Any]) -> Job:
    """``definition`` loaded into the typed ``Job`` model, which must give back exactly it.

    ``Job.from_dict`` rejects unknown keys, values outside an enum and numbers it cannot parse,
    but it coerces (an ``int`` or a mapping where a string belongs becomes that string); the round
    trip through ``as_dict`` catches those.
    """
    job = Job.from_dict(copy.deepcopy(definition))  # type: ignore[arg-type]
    back = job.as_dict()
    if back != definition:
        difference = _first_difference(definition, back)
        raise ValueError(f"the typed model does not reproduce the job: {difference}")
    return job


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if type(a) is not type(b):
        return f"{path or '.'}: {a!r} became {b!r}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key}: {'added' if key in b else 'dropped'}"
            if a[key] != b[key]:
                return _first_difference(a[key], b[key], f"{path}.{key}")
    if isinstance(a, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path or '.'}: {a!r} became {b!r}"


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
    # A new version on every deploy (0.1.0+<time>), so no environment or cluster keeps running
    # an earlier upload of 0.1.0; YAML's `true`, not a string the CLI would have to coerce.
    assert artifact.get("dynamic_version") is True
    assert (REPO / artifact.get("path", ".") / "pyproject.toml").is_file()
    build = shlex.split(artifact["build"])
    assert "wheel" in build and "--no-deps" in build
    out_dir = build[build.index("--wheel-dir") + 1] if "--wheel-dir" in build else "dist"
    built_into = (REPO / artifact.get("path", ".") / out_dir).resolve()
    job_file = job[0]
    environments = _environments(job)
    for task in _tasks(job):
        if "environment_key" in task:
            # Serverless: the wheel is a dependency of the task's environment.
            source = environments[task["environment_key"]]["dependencies"]
            wheels = [d for d in source if d.endswith(".whl")]
        else:
            wheels = [lib["whl"] for lib in task.get("libraries", []) if "whl" in lib]
        assert len(wheels) == 1, f"task {task['task_key']}: one wheel expected, found {wheels}"
        # Local paths are relative to the file that declares them.
        library = (job_file.parent / wheels[0]).resolve()
        assert library.parent == built_into, (task["task_key"], library)
        for name in (
            "clickstream_segments-0.1.0-py3-none-any.whl",
            "clickstream_segments-0.1.0+20250101120000-py3-none-any.whl",  # dynamic_version
        ):
            assert fnmatch.fnmatch(name, library.name), (task["task_key"], library.name)


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


def test_cpu_stages_run_serverless_and_gpu_stages_on_the_gpu_job_cluster(
    job: tuple[Path, dict[str, Any]],
) -> None:
    environments = _environments(job)
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job[1].get("job_clusters", [])}
    placement: dict[str, set[str]] = {}
    for task in _tasks(job):
        key = task["task_key"]
        assert "new_cluster" not in task and "existing_cluster_id" not in task, key
        if "environment_key" in task:
            # Serverless: no cluster, and no task libraries (the environment brings the wheel).
            assert "job_cluster_key" not in task and "libraries" not in task, key
            placement.setdefault(f"serverless:{task['environment_key']}", set()).add(key)
        else:
            placement.setdefault(f"cluster:{task['job_cluster_key']}", set()).add(key)
    assert placement == {"serverless:serverless": CPU_STAGES, "cluster:gpu": GPU_STAGES}
    # Nothing declared that no task uses (an unused classic cluster would still be billed).
    assert set(environments) == {"serverless"} and set(clusters) == {"gpu"}

    for target in BUNDLE["targets"]:
        spec = _resolve(environments["serverless"], target)
        assert "client" not in spec  # deprecated; environment_version replaces it
        version = spec["environment_version"]
        assert version in SERVERLESS_RUNTIME, version
        gpu = _resolve(clusters["gpu"], target)
        assert "gpu-ml" in gpu["spark_version"]
        # The Spark 4.0 line (Databricks Runtime 17.x, Scala 2.13), like pyspark==4.0.1, on
        # both kinds of compute.
        assert re.fullmatch(r"17\.\d+\.x-.*scala2\.13", gpu["spark_version"]), gpu
        assert gpu["spark_version"].startswith(SERVERLESS_RUNTIME[version] + ".")
        assert gpu["node_type_id"] and gpu["data_security_mode"] == "SINGLE_USER"
        assert gpu["spark_conf"]["spark.task.resource.gpu.amount"] == "1"


# --------------------------------------------------------------------------------------------
# Databricks' typed models (databricks-bundles, generated from the bundle schema)
# --------------------------------------------------------------------------------------------


def _resources() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in [BUNDLE_FILE, *INCLUDED]:
        data = _load(path) if path != BUNDLE_FILE else BUNDLE
        for kind, items in (data.get("resources") or {}).items():
            found.setdefault(kind, {}).update(items or {})
    return found


def test_only_jobs_and_no_target_overrides_them() -> None:
    # What the typed check below covers: the jobs, as every target deploys them. A new resource
    # kind (a schema, a volume, ...) needs its own typed model here.
    assert set(_resources()) == {"jobs"}
    for name, target in BUNDLE["targets"].items():
        assert "resources" not in (target or {}), f"target {name}: resolve its overrides here"


def _items(field: Any, cls: type[_T]) -> list[_T]:
    """A typed list field's items, none of them (nor the list) a whole ``${var.…}``."""
    assert isinstance(field, list), field
    assert all(isinstance(item, cls) for item in field), field
    return field


@pytest.mark.parametrize("target", [None, "dev", "prod"])
def test_every_job_loads_into_the_typed_job_model(target: str | None) -> None:
    """As written (``${var.…}`` references where the schema allows them) and as each target
    resolves it; ``{{job.run_id}}`` stays, the Jobs service fills it at run time."""
    assert JOBS
    for key, (_path, definition) in JOBS.items():
        resolved = definition if target is None else _resolve(definition, target, run=False)
        job = _typed_job(resolved)
        # The typed model's view agrees with the placement above.
        environments = _items(job.environments, JobEnvironment)
        clusters = {c.job_cluster_key for c in _items(job.job_clusters, JobCluster)}
        tasks = _items(job.tasks, Task)
        assert tasks, key
        for task in tasks:
            assert (task.environment_key is None) != (task.job_cluster_key is None), task.task_key
            assert task.environment_key in {e.environment_key for e in environments} | {None}
            assert task.job_cluster_key in clusters | {None}, task.task_key
            assert task.python_wheel_task is not None, task.task_key
        if target is not None:
            (environment,) = environments
            assert isinstance(environment.spec, Environment)
            version = environment.spec.environment_version
            assert isinstance(version, str) and version in SERVERLESS_RUNTIME, version


_MISTAKES = {
    "misspelled job key": (("max_concurent_runs",), 1),
    "misspelled task key": (("tasks", 0, "enviroment_key"), "serverless"),
    "misspelled environment key": (("environments", 0, "spec", "environment_versoin"), "4"),
    "not a number": (("max_concurrent_runs",), "one"),
    "not in the enum": (("job_clusters", 0, "new_cluster", "data_security_mode"), "SINGLE_USR"),
    "a list for a mapping": (("tasks", 0, "python_wheel_task"), ["segments-ingest"]),
    "a mapping for a string": (("job_clusters", 0, "new_cluster", "spark_version"), {"x": 1}),
    "a mapping for a list": (("tasks", 0, "python_wheel_task", "parameters"), {"--conf": "x"}),
    "an unquoted version": (("environments", 0, "spec", "environment_version"), 4),
}


@pytest.mark.parametrize("mistake", sorted(_MISTAKES))
def test_the_typed_check_rejects_a_broken_job(
    job: tuple[Path, dict[str, Any]], mistake: str
) -> None:
    """The check above can fail: one mistake in an otherwise valid job is rejected."""
    path, value = _MISTAKES[mistake]
    broken = _resolve(job[1], "dev", run=False)
    _typed_job(broken)  # valid before the mistake
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(ValueError):
        _typed_job(broken)


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
    # The tasks reuse the platform's session; serverless compute takes only a short list of
    # session settings, so the profile sets none.
    assert "spark" not in _load(conf_file)
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
    # dynamic_version (databricks.yml) patches <name>-<version>.dist-info/{METADATA,RECORD} named
    # after the wheel's file name (the CLI's libs/patchwheel), so they must match it.
    name, version = wheel.name.split("-")[:2]
    assert dist_info == f"{name}-{version}.dist-info", (wheel.name, dist_info)
    assert f"{dist_info}/RECORD" in names and f"Version: {version}" in metadata.splitlines()
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
