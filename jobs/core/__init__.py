"""The shared core every stage stands on; it never imports a stage.

* :mod:`jobs.core.config`: typed configuration (YAML profiles -> frozen dataclasses).
* :mod:`jobs.core.session`: obtaining a SparkSession (reuse the active one, else build local).
* :mod:`jobs.core.tables`: the table registry, every table's contract (docs/tables.md).
* :mod:`jobs.core.lake`: reading and writing those tables with delta-spark or delta-rs.
* :mod:`jobs.core.metrics`: the ``cluster_metrics`` history.
* :mod:`jobs.core.privacy`: HMAC pseudonymisation of user ids.
* :mod:`jobs.core.logs`: logging a person can read.
"""
