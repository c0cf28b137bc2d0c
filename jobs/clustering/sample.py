"""The bounded sample a K-Means start is fitted on: MLlib vectors as one NumPy array (dense) or
SciPy CSR matrix (sparse, e.g. TF-IDF), fetched through Arrow, and their distinct rows with
weights.

Arrow, not ``collect()``: a 20,000 x 384 sample arrives as a few flat buffers instead of 20,000
Python ``DenseVector`` objects (about 1 s instead of 3 s on 2 cores; ``benchmarks/kmeans.py``).
An MLlib vector column reaches Arrow as its UDT's SQL type, ``struct<type: tinyint (0 sparse,
1 dense), size: int, indices: array<int>, values: array<double>>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

DENSE = 1


@dataclass(frozen=True)
class StartSample:
    """A K-Means start sample on the driver (:func:`fetch_start_sample`): the fetched rows
    (``raw``: (n, d) float64 array, or CSR matrix for sparse vectors), their distinct rows
    (``points``) and how often each occurs (``weights``, (n',) float64)."""

    raw: Any
    points: Any
    weights: np.ndarray

    @property
    def rows(self) -> int:
        """Rows fetched (n)."""
        return int(self.raw.shape[0])


def fetch_start_sample(
    data: DataFrame, *, total: int, at_most: int, seed: int, column: str, dense_array: bool
) -> StartSample:
    """At most ``at_most`` rows of ``column`` of ``data`` (``total`` rows, counted by the
    caller) as a :class:`StartSample`: every row when they fit, else a seeded Bernoulli sample
    of about 1.2 x ``at_most`` rows cut to ``at_most`` by a seeded draw (an unbiased
    subsample, not the first partitions).  One Spark job (``toArrow``); the same ``data``,
    ``seed`` and ``at_most`` give the same rows, so a k sweep fetches it once.
    ``dense_array``: ``column`` is an ``array<float|double>`` column
    (:func:`arrays_from_arrow`), else MLlib vectors (:func:`vectors_from_arrow`)."""
    selected = data.select(column)
    if total > at_most:
        fraction = min(1.0, 1.2 * at_most / total)
        selected = selected.sample(withReplacement=False, fraction=fraction, seed=seed)
    table = selected.toArrow()
    if table.num_rows > at_most:
        keep = np.random.default_rng(seed).choice(table.num_rows, at_most, False)
        table = table.take(np.sort(keep))
    raw = (arrays_from_arrow if dense_array else vectors_from_arrow)(table.column(0))
    points, weights = distinct_points(raw)
    return StartSample(raw, points, weights)


def _rows(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A fetched column as one Arrow array; ``ValueError`` when a row is null."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if column.null_count:
        raise ValueError("K-Means input has null vectors")
    return column


def vectors_from_arrow(column: pa.ChunkedArray | pa.Array) -> Any:
    """The rows of an MLlib vector column fetched with ``toArrow()``: an ``(n, d)`` float64
    array when every row is dense, else an ``(n, size)`` CSR matrix.

    Raises ``ValueError`` for rows of different dimensions or a null vector."""
    column = _rows(column)
    n = len(column)
    if n == 0:
        return np.zeros((0, 0))
    # flatten(), not field(): it applies the struct array's own offset (a sliced batch).
    fields = dict(zip([f.name for f in column.type], column.flatten(), strict=True))
    kinds = fields["type"].to_numpy(zero_copy_only=False)
    values = fields["values"]
    offsets = values.offsets.to_numpy()
    flat = values.values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    lengths = np.diff(offsets)
    if (kinds == DENSE).all():
        dim = int(lengths[0])
        if (lengths != dim).any():
            raise ValueError("K-Means input has vectors of different dimensions")
        start = int(offsets[0])
        return flat[start : start + n * dim].reshape(n, dim)
    from scipy.sparse import csr_matrix

    sizes = fields["size"].to_numpy(zero_copy_only=False)
    dense_rows = kinds == DENSE
    size = {int(s) for s in sizes[~dense_rows]} | {int(x) for x in lengths[dense_rows]}
    if len(size) != 1:
        raise ValueError("K-Means input has vectors of different dimensions")
    indices_of = fields["indices"]
    row_indices = [
        np.arange(lengths[i]) if dense_rows[i] else np.asarray(indices_of[i].values)
        for i in range(n)
    ]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    data = flat[offsets[0] : offsets[-1]]  # the rows' values are contiguous
    indices = np.concatenate(row_indices).astype(np.int64)
    return csr_matrix((data, indices, indptr), shape=(n, size.pop()))


def arrays_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The rows of a dense ``array<float>`` or ``array<double>`` column (e.g. ``embeddings``'
    ``embedding``) fetched with ``toArrow()``: an ``(n, d)`` float64 array, the values exactly
    as ``array_to_vector`` makes them (float32 widens to float64 without rounding).

    Raises ``ValueError`` for rows of different lengths, a null row or a null value."""
    column = _rows(column)
    n = len(column)
    if n == 0:
        return np.zeros((0, 0))
    # flatten() applies a sliced array's offset and holds exactly its rows' values.
    values = column.flatten()
    if values.null_count:  # a null is no coordinate (embeddings hold none)
        raise ValueError("K-Means input has null values inside vectors")
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = np.diff(column.offsets.to_numpy())
        dim = int(lengths[0])
        if (lengths != dim).any():
            raise ValueError("K-Means input has vectors of different dimensions")
    return values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(n, dim)


def _row_keys(matrix: np.ndarray) -> np.ndarray:
    """Each row of a C-contiguous 2-d array as one opaque bytes value (NumPy ``void``), which
    sorts and compares as its bytes."""
    matrix = np.ascontiguousarray(matrix)
    width = matrix.dtype.itemsize * matrix.shape[1]
    return matrix.view(np.dtype((np.void, width))).ravel()


def distinct_points(points: Any) -> tuple[Any, np.ndarray]:
    """The distinct rows of ``points`` (dense array or CSR matrix) in a fixed order, and how
    often each occurs (scikit-learn's ``sample_weight``: the same objective as the repeated
    rows).

    Rows are equal when their values are (0.0 and -0.0 are the same point).  The order is by
    the bytes of the values rounded to 1e-5, then by those of the exact values: it does not
    depend on the order the partitions delivered the rows in, and float noise of ~1e-7 (an
    encoder batching rows differently) mostly leaves it, and so the k-means++ start, as it
    was."""
    if hasattr(points, "tocsr"):
        return _distinct_sparse(points.tocsr())
    # + 0.0 turns -0.0 into 0.0, which the byte keys below would otherwise tell apart.
    points = np.asarray(points, dtype=np.float64) + 0.0
    if points.shape[0] == 0:
        return points, np.zeros(0)
    # One sort of (rounded, exact) row keys; equal exact rows are then adjacent.
    keys = _row_keys(np.concatenate([np.round(points, 5), points], axis=1))
    ordered = points[np.argsort(keys, kind="stable")]
    # A row starts a new point when its bits differ from the previous row's (as integers: a
    # comparison of the opaque keys themselves is several times slower).
    bits = ordered.view(np.uint64)
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = (bits[1:] != bits[:-1]).any(axis=1)
    starts = np.flatnonzero(first)
    weights = np.diff(np.append(starts, len(ordered))).astype(np.float64)
    return ordered[starts], weights


def _distinct_sparse(matrix: Any) -> tuple[Any, np.ndarray]:
    """:func:`distinct_points` of a CSR matrix (rows keyed by their indices and values)."""
    from scipy.sparse import csr_matrix

    matrix = matrix.copy()
    matrix.eliminate_zeros()  # an explicit zero is the same point as an absent one
    matrix.sort_indices()
    counts: dict[tuple[bytes, bytes], int] = {}
    first: dict[tuple[bytes, bytes], int] = {}
    for i in range(matrix.shape[0]):
        lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
        idx, val = matrix.indices[lo:hi], matrix.data[lo:hi]
        key = (
            idx.astype(np.int64).tobytes() + b"|" + np.round(val, 5).tobytes(),
            idx.astype(np.int64).tobytes() + b"|" + val.tobytes(),
        )
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    keys = sorted(first)
    rows = [first[key] for key in keys]
    weights = np.array([counts[key] for key in keys], dtype=np.float64)
    return csr_matrix(matrix[rows]), weights


def stacked_rows(first: Any, second: Any) -> Any:
    """The rows of ``first`` then ``second`` (both dense arrays, or either a CSR matrix)."""
    if first.shape[0] == 0:  # an empty sample has no width to stack on
        return second
    if hasattr(first, "tocsr") or hasattr(second, "tocsr"):
        from scipy.sparse import csr_matrix, vstack

        stacked = vstack([csr_matrix(first), csr_matrix(second)]).tocsr()
        stacked.eliminate_zeros()  # a dense row's zeros and a sparse row's explicit ones
        return stacked
    return np.vstack([first, second])


def dense_copy(points: Any) -> Any:
    """A dense NumPy copy of a NumPy array or SciPy sparse matrix."""
    return points.toarray() if hasattr(points, "toarray") else np.asarray(points, dtype=np.float64)
