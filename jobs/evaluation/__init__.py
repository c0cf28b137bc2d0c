"""How good are the segments, and better than what: the ``evaluate`` stage's transforms.

* :mod:`~jobs.evaluation.internal`: O(n·k·d) internal metrics (SSE, Calinski-Harabasz,
  Davies-Bouldin, silhouettes, size balance) from per-cluster aggregates;
* :mod:`~jobs.evaluation.external`: contingency tables and ARI / NMI / purity against labels;
* :mod:`~jobs.evaluation.stability`: seed-refit agreement and per-segment bootstrap Jaccard;
* :mod:`~jobs.evaluation.baselines`: the TF-IDF baselines' token bags and weights;
* :mod:`~jobs.evaluation.protocol`: the leakage-free split into history and future;
* :mod:`~jobs.evaluation.methods`: every method, fitted on history only;
* :mod:`~jobs.evaluation.future`: future-behaviour metrics with bootstrap intervals;
* :mod:`~jobs.evaluation.backtest`: protocol, methods and scoring end to end;
* :mod:`~jobs.evaluation.profiles`: one analyst-facing row per cluster;
* :mod:`~jobs.evaluation.report`: ``report.md`` (leaderboard first) and its plots.

Metric names are fixed (listed in the README, "Evaluation") so runs compare across versions.
Nothing here reads or writes a table: the stage (``jobs/evaluate.py``) does.
"""
