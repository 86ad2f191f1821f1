"""Exact merging of count, mean and sum of squared deviations (M2).

Chan, Golub & LeVeque's parallel formula combines two partial summaries
``(n_a, mean_a, M2_a)`` and ``(n_b, mean_b, M2_b)``::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + delta**2 * n_a * n_b / n

and its many-way form (the between-group sum of squares)::

    M2 = sum_i M2_i + sum_i n_i * (mean_i - mean)**2

Both are exact in exact arithmetic, so merging the summaries of any split of a
data set gives the summary of the whole; in floating point the result agrees
with a two-pass computation on the pooled data to a few ulps per merge. The
variance is ``M2 / n`` (population) or ``M2 / (n - 1)`` (sample).

References: T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a
pairwise algorithm for computing sample variances", Stanford CS-79-773 (1979);
B. P. Welford, Technometrics 4(3) 1962.

>>> import numpy as np
>>> a, b = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])
>>> n, mean, m2 = chan_combine(np.array([3]), a.mean(keepdims=True), np.array([2.0]),
...                            np.array([2]), b.mean(keepdims=True), np.array([50.0]))
>>> whole = np.concatenate([a, b])
>>> bool(np.isclose(m2[0], ((whole - whole.mean()) ** 2).sum()))
True
"""

from __future__ import annotations

import numpy as np


def safe_mean(total: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``total / n`` with 0 where ``n == 0`` (an empty summary has mean 0)."""
    return np.divide(total, n, out=np.zeros(np.shape(total), dtype=np.float64), where=n > 0)


def chan_combine(
    n_a: np.ndarray,
    mean_a: np.ndarray,
    m2_a: np.ndarray,
    n_b: np.ndarray,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Element-wise pairwise merge of two summaries (arrays of equal shape)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    weight = np.divide(n_a * n_b, n, out=np.zeros(np.shape(n), dtype=np.float64), where=n > 0)
    mean = mean_a + delta * np.divide(
        n_b, n, out=np.zeros(np.shape(n), dtype=np.float64), where=n > 0
    )
    m2 = m2_a + m2_b + delta * delta * weight
    return n, mean, m2


def combine_many(
    n: np.ndarray, mean: np.ndarray, m2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge summaries stacked along axis 0 (shape ``(parts, columns)``)."""
    total_n = n.sum(axis=0)
    total_mean = safe_mean((n * mean).sum(axis=0), total_n)
    dev = mean - total_mean
    total_m2 = m2.sum(axis=0) + (n * dev * dev).sum(axis=0)
    return total_n, total_mean, total_m2
