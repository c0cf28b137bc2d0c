"""How good are the segments, and better than what: the ``evaluate`` stage's transforms.

* :mod:`~jobs.evaluation.internal`: O(n·k·d) internal metrics (SSE, Calinski-Harabasz,
  Davies-Bouldin, silhouettes, size balance) from per-cluster aggregates;
* :mod:`~jobs.evaluation.external`: contingency tables and ARI / NMI / purity against labels;
* :mod:`~jobs.evaluation.stability`: agreement with K-Means refits under other seeds;
* :mod:`~jobs.evaluation.baselines`: the TF-IDF and random baselines on the same rows and k;
* :mod:`~jobs.evaluation.usefulness`: hit-rate@10 of cluster-popular categories on held-out
  sessions, with a bootstrap interval;
* :mod:`~jobs.evaluation.profiles`: one analyst-facing row per cluster;
* :mod:`~jobs.evaluation.report`: ``report.md`` and its plots.

Metric names are fixed (listed in the README, "Evaluation") so runs compare across versions.
Nothing here reads or writes a table: the stage (``jobs/evaluate.py``) does.
"""
