"""Raw clickstream sources -> the ``events`` contract: reading, mapping, deduplication, accounting.

The ``ingest`` stage (:mod:`jobs.ingest`) is a thin entry over this package; nothing here opens a
session or reads or writes a table.

* :mod:`.columns`: the normalised record's columns and the internal bookkeeping columns;
* :mod:`.errors`: :class:`~.errors.IngestError` and naming the raw file Spark could not read;
* :mod:`.readers`: raw files (JSON lines, RFC 4180 CSV, Parquet) and lookup side files, with
  each record's file and position (the source order that breaks timestamp ties);
* :mod:`.nested`: dotted paths into nested JSON and exploding an array into one event per
  element;
* :mod:`.parquet`: Parquet column types Spark does not read as they are (nanosecond
  timestamps);
* :mod:`.timestamps`: raw timestamps (text, epoch numbers, native) -> UTC instants;
* :mod:`.mapping`: the source mapping onto ``events`` columns, quarantine reasons, lookups;
* :mod:`.dedup`: event identity (source ids, raw-record hashes), duplicates, conflicting ids
  and optional collapsing, within a batch and against ``events``;
* :mod:`.outputs`: rows shaped for ``events`` and ``events_quarantine``;
* :mod:`.files`: the raw files an input covers and the ``ingest_log`` rows (incremental mode);
* :mod:`.accounting`: where every record went, and the reconciliation check.
"""
