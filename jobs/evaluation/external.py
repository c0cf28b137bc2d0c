"""External metrics: agreement of a clustering with other labels (ground truth or a refit).

A k x k' contingency table is built with one ``groupBy`` and only it reaches the driver; ARI,
NMI and purity are closed forms over it, equal to scikit-learn's on the same labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.core.privacy import Pseudonymizer


def contingency(df: DataFrame, left: str, right: str) -> np.ndarray:
    """Counts of rows per (left label, right label): a (k, k') float matrix, via one groupBy
    (:func:`count_table`)."""
    return count_table(df.groupBy(left, right).count().collect(), left, right)


def count_table(rows: list[Any], left: str, right: str) -> np.ndarray:
    """The (k, k') matrix of ``groupBy(left, right).count()`` result rows: rows follow the
    distinct ``left`` labels and columns the distinct ``right`` labels, each sorted by their
    string form."""
    lefts = sorted({r[left] for r in rows}, key=str)
    rights = sorted({r[right] for r in rows}, key=str)
    li = {v: i for i, v in enumerate(lefts)}
    ri = {v: i for i, v in enumerate(rights)}
    table = np.zeros((len(lefts), len(rights)), dtype=np.float64)
    for r in rows:
        table[li[r[left]], ri[r[right]]] = r["count"]
    return table


def _comb2(x: np.ndarray) -> np.ndarray:
    """Pairs among x items, elementwise."""
    return x * (x - 1) / 2


def adjusted_rand_index(table: np.ndarray) -> float:
    """ARI from a contingency table (Hubert and Arabie's adjustment, as scikit-learn): 1.0 for
    identical partitions, about 0 for independent ones; 1.0 for fewer than two rows (no pair
    to disagree on), as scikit-learn's ``adjusted_rand_score``."""
    n = table.sum()
    if n < 2:
        return 1.0
    index = float(_comb2(table).sum())
    rows = float(_comb2(table.sum(axis=1)).sum())
    cols = float(_comb2(table.sum(axis=0)).sum())
    expected = rows * cols / float(n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def normalized_mutual_info(table: np.ndarray) -> float:
    """NMI in [0, 1] with the arithmetic mean of the entropies (scikit-learn's default)."""
    n = table.sum()
    pij = table / n
    pi, pj = pij.sum(axis=1), pij.sum(axis=0)
    nz = pij > 0
    mutual = float((pij[nz] * np.log(pij[nz] / np.outer(pi, pj)[nz])).sum())
    hi = float(-(pi[pi > 0] * np.log(pi[pi > 0])).sum())
    hj = float(-(pj[pj > 0] * np.log(pj[pj > 0])).sum())
    if hi == 0 and hj == 0:
        return 1.0
    return mutual / ((hi + hj) / 2) if (hi + hj) > 0 else 0.0


def purity(table: np.ndarray) -> float:
    """Share of rows in their cluster's majority class, in (0, 1] (rows = truth, columns =
    clusters)."""
    return float(table.max(axis=0).sum() / table.sum())


def truth_labels(raw: DataFrame, pseudonymizer: Pseudonymizer | None) -> DataFrame:
    """``user_id``, ``persona`` of a ground-truth file read as strings (CSV with a header).

    With pseudonymisation on, the clustered ids are HMACs of the trimmed raw ids (as ingest
    writes them), so the truth's ids are pseudonymised the same way to match.
    """
    truth = raw.select("user_id", "persona")
    if pseudonymizer is not None:
        truth = pseudonymizer.pseudonymize(truth, {"user_id": F.trim("user_id")})
    return truth
