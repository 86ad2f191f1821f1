"""Exact merging of count, sum and sum of squared deviations (M2).

Chan, Golub & LeVeque's parallel formula combines two partial summaries
``(n_a, mean_a, M2_a)`` and ``(n_b, mean_b, M2_b)``::

    n     = n_a + n_b
    delta = mean_b - mean_a
    M2    = M2_a + M2_b + delta**2 * n_a * n_b / n

Windows keep totals ``T = n * mean`` rather than means (the per-bin sums add
up to ``T``), so the cross term is written with totals::

    delta**2 * n_a * n_b / n  ==  (n_a * T_b - n_b * T_a)**2 / (n_a * n_b * n)

which is exactly 0 when either side is empty (its total is 0.0), so no special
case is needed. The many-way form (between-group sum of squares) is::

    M2 = sum_i M2_i + sum_i n_i * (mean_i - mean)**2

Both are exact in exact arithmetic, so merging the summaries of any split of a
data set gives the summary of the whole; in floating point the result agrees
with a two-pass computation on the pooled data to within a few ulps per merge
(relative to ``M2`` unless ``|mean| / std`` is huge). The variance is ``M2 / n``
(population) or ``M2 / (n - 1)`` (sample).

References: T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a
pairwise algorithm for computing sample variances", Stanford CS-79-773 (1979);
B. P. Welford, Technometrics 4(3) 1962.

>>> import numpy as np
>>> a, b = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])
>>> m2 = merge_m2(np.array([3.0]), np.array([6.0]), np.array([2.0]),
...               np.array([2.0]), np.array([30.0]), np.array([50.0]))
>>> whole = np.concatenate([a, b])
>>> bool(np.isclose(m2[0], ((whole - whole.mean()) ** 2).sum()))
True
"""

from __future__ import annotations

import numpy as np


def safe_mean(total: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``total / n`` with 0 where ``n == 0`` (an empty summary has mean 0)."""
    return np.divide(total, n, out=np.zeros(np.shape(total), dtype=np.float64), where=n > 0)


def merge_m2(
    n_a: np.ndarray,
    t_a: np.ndarray,
    m2_a: np.ndarray,
    n_b: np.ndarray,
    t_b: np.ndarray,
    m2_b: np.ndarray,
) -> np.ndarray:
    """M2 of the union of two summaries given counts (as float), totals and M2s."""
    gap = n_a * t_b - n_b * t_a
    scale = np.maximum(n_a * n_b * (n_a + n_b), 1.0)
    return m2_a + m2_b + gap * gap / scale


def merge_m2_many(n: np.ndarray, t: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """M2 of the union of summaries stacked along axis 0 (shape ``(parts, columns)``)."""
    mean = safe_mean(t, n)
    pooled = safe_mean(t.sum(axis=0), n.sum(axis=0))
    dev = mean - pooled
    return m2.sum(axis=0) + (n * dev * dev).sum(axis=0)
