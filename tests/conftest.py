"""Shared fixtures: one small local SparkSession for the whole run, Delta tables in tmp dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from jobs.core.config import LakeConfig, SparkConfig
from jobs.core.lake import Lake
from jobs.core.session import get_spark

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


#: The native-Delta group's own process (tests/test_delta_native.py).
_DELTA_JVM = os.environ.get("SEGMENTS_DELTA_SPARK_JVM") == "1"
_DELTA_WRAPPER = "test_native_delta_group_in_its_own_jvm"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/test_delta_native.py needs a JVM with delta-spark's jars, so it runs in a pytest
    process of its own started by its wrapper test: deselect its tests here (or, in that
    process, the wrapper and everything else), rather than skipping them."""
    keep, drop = [], []
    for item in items:
        native = item.path.name == "test_delta_native.py"
        wanted = (
            (native and item.name != _DELTA_WRAPPER)
            if _DELTA_JVM
            else (not native or item.name == _DELTA_WRAPPER)
        )
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    engines = [item for item in items if item.path.name == "test_engines.py"]
    background = not _DELTA_JVM and not config.option.collectonly
    if background and engines:
        # The Connect run compared in tests/test_engines.py starts now in the background on
        # the shared run's raw files; its tests run last, when it has had the most time.
        items[:] = [item for item in items if item.path.name != "test_engines.py"] + engines
        _start_e2e_connect_run()
    if background and any(item.name == _DELTA_WRAPPER for item in items):
        from .test_delta_native import start_native_group

        # Started now, so that its JVM's start-up and waits overlap with the other tests; the
        # wrapper test collects its result (and skips, saying why, without the Delta jar).
        start_native_group()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _DELTA_JVM:
        from .test_delta_native import NATIVE_RUN
        from .test_engines import CONNECT_RUN

        NATIVE_RUN.stop()
        CONNECT_RUN.stop()
        if _E2E:
            shutil.rmtree(_E2E["root"], ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _mlflow_store_outside_the_repository(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """Stage runs in this process whose config leaves ``mlflow.tracking_uri`` unset log to a
    store under the tests' temporary root, not to ``data/mlruns`` in the working directory,
    where the demo's runs are (an analyst's MLflow UI would list the tests' runs among them)."""
    from jobs.core import tracking

    original = tracking.LOCAL_STORE
    tracking.LOCAL_STORE = str(tmp_path_factory.mktemp("mlruns"))
    yield
    tracking.LOCAL_STORE = original


#: JVM options of the Spark drivers the tests start (this process's session, the background
#: Spark Connect run and the native-Delta group): C1 only.  The suite runs hundreds of
#: short queries on tiny data, whose time goes to JIT-compiling code that never gets hot; C2's
#: optimised code would pay off only on long jobs.  Measured on the 2-core machine, six test
#: modules, two interleaved runs each: 203 s and 217 s without, 184 s and 195 s with it.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"

#: Spark settings of the same drivers: expressions evaluated by Spark's interpreter instead of
#: compiled to Java (Janino) per query.  On the tests' tiny data compiling costs more than it
#: saves: on the 2-core machine four ingest/dedup/CSV/sessionize modules took 196-199 s with
#: code generation and 171 s without, and the native-Delta group's incremental sessionize test
#: (Delta's own log-replay queries) 86-88 s and 56 s.  ``factoryMode`` is Spark's switch for
#: exactly this (SQLConf: "for testing only"); results are the same by Spark's contract.
#: The slow group's in-process tests and the background Connect comparison run use them too;
#: production runs, the demo and the other CLI subprocess tests keep code generation.
TEST_SPARK_SETTINGS = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)  # type: ignore[attr-defined]
    session = get_spark(
        SparkConfig(
            master="local[2]",
            app_name="clickstream-segments-tests",
            shuffle_partitions=2,
            driver_memory="2g",
            driver_java_options=TEST_JVM_OPTIONS,
            extra={
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.adaptive.enabled": "false",
                **TEST_SPARK_SETTINGS,
            },
        )
    )
    yield session
    session.stop()


#: Run id of the shared end-to-end run (:func:`e2e_run`).
E2E_RUN_ID = "run-e2e"


#: The shared end-to-end run's configuration and generate outcome, when generated early.
_E2E: dict[str, Any] = {}


def _start_e2e_connect_run() -> None:
    """Generate the shared run's raw files (no Spark) and start tests/test_engines.py's Spark
    Connect run on them in the background."""
    from jobs.pipeline import applicable, run_pipeline
    from jobs.stages import select

    from .test_engines import start_connect_run
    from .test_pipeline import small_config

    root = Path(tempfile.mkdtemp(prefix="segments-e2e-"))
    config = small_config(root / "e2e")
    stages = applicable(select(None, None), config)
    assert stages[0].name == "generate"
    generated, _ = run_pipeline(config, E2E_RUN_ID, stages[:1])
    _E2E.update(root=root, config=config, generated=generated)
    start_connect_run(config, root / "connect")


@pytest.fixture(scope="session")
def e2e_run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ...]:
    """The whole pipeline once on 300 generated users, in this process's classic session on
    the delta-rs engine: ``(config, outcomes, table_lines)``.  tests/test_pipeline.py checks
    its accounting; tests/test_engines.py compares a Spark Connect run on delta-spark with it.
    When those tests are selected, the raw files are generated at collection and that run
    starts on them in the background (``_start_e2e_connect_run``)."""
    from jobs.pipeline import applicable, run_pipeline
    from jobs.stages import select

    from .test_pipeline import small_config

    if _E2E:  # generated at collection, the Connect run started on it
        config, generated = _E2E["config"], _E2E["generated"]
        stages = applicable(select(None, None), config)
    else:
        config = small_config(tmp_path_factory.mktemp("e2e"))
        stages = applicable(select(None, None), config)
        generated, _ = run_pipeline(config, E2E_RUN_ID, stages[:1])
    outcomes, table_lines = run_pipeline(config, E2E_RUN_ID, stages[1:])
    return config, [*generated, *outcomes], table_lines


@pytest.fixture
def lake(spark: SparkSession, tmp_path: Path) -> Lake:
    """A delta-rs lake in a fresh folder (the engine every machine here can run)."""
    return Lake(spark, LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")))


IVY_JARS = Path.home() / ".ivy2.5.2" / "jars"


class BackgroundRun:
    """A command started once per session in the background (its output to a temporary
    file) and collected by a test later, so that its JVM's start-up and waits overlap with the
    other tests; tests/test_delta_native.py and tests/test_engines.py use one each."""

    def __init__(self) -> None:
        self.started = False
        self.skip_reason: str | None = None
        self.process: subprocess.Popen[str] | None = None
        self.output: Any = None

    def start(self, command: list[str], *, env: dict[str, str], requires: str) -> None:
        """Start ``command`` in the repository (once; later calls do nothing), or remember why
        not: the Maven artifact ``requires`` is neither cached nor downloadable."""
        if self.started:
            return
        self.started = True
        try:
            require_maven(requires)
        except pytest.skip.Exception as exc:
            self.skip_reason = str(exc)
            return
        self.output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by wait()
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=self.output, stderr=subprocess.STDOUT, text=True
        )

    def wait(self, timeout: float = 900) -> str:
        """The command's output once it has exited with 0 (skips, saying why, when it could
        not start)."""
        if self.skip_reason is not None:
            pytest.skip(self.skip_reason)
        assert self.process is not None, "the background run was never started"
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self.output.seek(0)
        text = str(self.output.read())
        self.output.close()
        assert returncode == 0, text[-8000:]
        return text

    def stop(self) -> None:
        """Kill the command if nothing collected it (e.g. ``pytest -x``)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def require_maven(coordinate: str) -> None:
    """Skip, saying why, where the Maven artifact ``group:artifact:version`` is neither in
    Spark's Ivy cache nor downloadable (a machine without Maven Central keeps delta-rs as its
    engine, README "Delta tables: two engines"); on these machines it is reachable."""
    import socket

    group, artifact, version = coordinate.split(":")
    if (IVY_JARS / f"{group}_{artifact}-{version}.jar").is_file():
        return
    try:
        socket.create_connection(("repo1.maven.org", 443), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"{coordinate} is not in {IVY_JARS} and Maven Central is unreachable ({exc})")


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real-data sample not found at {path}")
    return path


def build_wheel(out: Path) -> Path:
    """Build this project's wheel into ``out`` without network access (hatchling comes with the
    ``test`` extra) and return its path."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("clickstream_segments-*-py3-none-any.whl")
    return wheel
