"""Logging a person can read: the stages' own lines at INFO, Spark's chatter only at DEBUG.

* Python: one greppable line per event on stderr (``time level logger: message``).
* Spark's JVM: ERROR by default, WARN at ``--log-level DEBUG`` (:func:`spark_log_level`); the
  level reaches the JVM before it starts through a log4j2 configuration file that
  :mod:`jobs.core.session` passes to a locally built driver, so start-up warnings obey it too.
* PySpark's own error-context lines (a JSON dump of the plan and the Java frames of every error
  Spark raises, handled or not): from ``DEBUG`` on only (:data:`PYSPARK_ERROR_CONTEXT_LOGGERS`).
* Hugging Face: weight-loading progress bars and advisory warnings are off in every process that
  loads a model, Spark's Python workers included (:func:`quiet_model_loading`).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

_SPARK_LEVEL_ENV = "SEGMENTS_SPARK_LOG_LEVEL"
#: Spark's code generator: logs a compile failure it then recovers from as an ERROR.
_CODEGEN_LOGGER = "org.apache.spark.sql.catalyst.expressions.codegen.CodeGenerator"
#: Classes whose loggers Spark consults before it resets a shell's root level.
_SHELL_LOGGERS = (
    "org.apache.spark.deploy.SparkSubmit",
    "org.apache.spark.api.python.PythonGatewayServer",
    "org.apache.spark.repl.Main",
)


def setup_logging(level: str) -> None:
    """Configure Python logging for ``level`` and remember Spark's level for sessions built
    later (``DEBUG`` -> Spark ``WARN``, otherwise Spark ``ERROR``)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=numeric,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Libraries' own chatter stays out of the job log unless it is a warning.
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    _quiet_pyspark_error_context(debug=numeric <= logging.DEBUG)
    os.environ[_SPARK_LEVEL_ENV] = "WARN" if numeric <= logging.DEBUG else "ERROR"


#: Loggers through which PySpark (>= 4.0) writes every error Spark raises, the moment the Python
#: exception is made (``PySparkException._log_exception``): a JSON line at ERROR with the query
#: plan and the Java stack trace, on stderr, not propagated to the root logger.
PYSPARK_ERROR_CONTEXT_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")


def _quiet_pyspark_error_context(*, debug: bool) -> None:
    """Show PySpark's error-context lines only from ``--log-level DEBUG`` on.

    They are written before any caller can handle the error: a mapping expression that names a
    field the files do not have prints kilobytes of Java frames, then the stage's own one-line
    error naming the setting.  An error the stage does not handle still ends the run with that
    line (and its traceback at DEBUG), so nothing is lost at the default level."""
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:  # pragma: no cover - PySpark < 4.0 has no such loggers
        return
    for name in PYSPARK_ERROR_CONTEXT_LOGGERS:
        # Made as PySparkLogger (their log calls pass keyword context a plain Logger rejects).
        logger = PySparkLogger.getLogger(name)
        logger.setLevel(logging.ERROR if debug else logging.CRITICAL)


def spark_log_level() -> str:
    """The JVM log level for Spark: what :func:`setup_logging` chose, ERROR when not called."""
    return os.environ.get(_SPARK_LEVEL_ENV, "ERROR")


def log4j2_config_file(level: str) -> Path:
    """A log4j2 properties file sending Spark's logs at ``level`` and above to stderr (with an
    error's whole Java stack trace from ``WARN`` down; at ``ERROR``, the default, its first
    line only).

    Written once per level into the temp folder and passed to the driver JVM with
    ``-Dlog4j2.configurationFile`` (Spark's own default file would let start-up warnings through
    at WARN before ``setLogLevel`` can run).
    """
    path = Path(tempfile.gettempdir()) / f"clickstream-segments-log4j2-{level.lower()}.properties"
    text = "\n".join(
        [
            "rootLogger.level = " + level.lower(),
            "rootLogger.appenderRef.stderr.ref = console",
            # PySpark's gateway counts as a shell: Spark then resets the root level to WARN
            # ("Setting default log level to ...") unless the launching class's logger is
            # configured too.
            *[
                line
                for index, name in enumerate(_SHELL_LOGGERS)
                for line in (f"logger.s{index}.name = {name}", f"logger.s{index}.level = {level}")
            ],
            # Code that outgrows the JVM's 64 KB method limit (a wide mapping's whole-stage
            # projection) is logged as an ERROR, then run without whole-stage codegen
            # (spark.sql.codegen.fallback): nothing failed, so it shows from --log-level DEBUG on.
            f"logger.codegen.name = {_CODEGEN_LOGGER}",
            "logger.codegen.level = " + ("fatal" if level.upper() == "ERROR" else level),
            "appender.console.type = Console",
            "appender.console.name = console",
            "appender.console.target = SYSTEM_ERR",
            "appender.console.layout.type = PatternLayout",
            # An error's Java stack trace only when Spark logs at WARN (--log-level DEBUG):
            # otherwise its first line, since the stage's own error says what failed.
            "appender.console.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %p %c{1}: %m"
            + (
                "%n%ex"
                if level.upper() in ("WARN", "INFO", "DEBUG", "TRACE", "ALL")
                else " %ex{1}%n"
            ),
            "",
        ]
    )
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def quiet_model_loading() -> None:
    """Silence Hugging Face's per-process progress bars and advisory warnings (call before
    loading a model; cheap and idempotent)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
