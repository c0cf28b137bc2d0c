"""Spark jobs of the clickstream-segments pipeline: one module per stage, each with ``main()``.

Stage logic is written as pure ``DataFrame -> DataFrame`` transforms; only ``run``/``main``
functions touch the session, read files or write tables.
"""
