"""Spark-side user-defined functions of the pipeline (the transformer encoder lives here)."""
