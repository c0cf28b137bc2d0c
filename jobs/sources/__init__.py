"""Raw clickstream sources -> the ``events`` contract: reading, mapping, deduplication, accounting.

The ``ingest`` stage (:mod:`jobs.ingest`) is a thin entry over this package; nothing here opens a
session or reads or writes a table.

* :mod:`.columns`: the normalised record's columns and the internal bookkeeping columns;
* :mod:`.errors`: :class:`~.errors.IngestError` and naming the raw file Spark could not read;
* :mod:`.readers`: raw files (JSON lines, CSV, Parquet) and lookup side files, as text;
* :mod:`.timestamps`: raw timestamps (text, epoch numbers, native) -> UTC instants;
* :mod:`.mapping`: the source mapping onto ``events`` columns, quarantine reasons, lookups;
* :mod:`.dedup`: content hashes, deduplication within a batch and against ``events``;
* :mod:`.outputs`: rows shaped for ``events`` and ``events_quarantine``;
* :mod:`.files`: the raw files an input covers and the ``ingest_log`` rows (incremental mode);
* :mod:`.accounting`: where every record went, and the reconciliation check.
"""
