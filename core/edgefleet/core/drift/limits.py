"""The safe range of drift statistics: every value a window or a profile holds stays finite.

A single sensor value above ~1.3e154 squares to ``inf`` (M2 becomes ``inf``), and two of
±1.8e308 sum to ``inf`` (a bin sum becomes ``inf`` and the mean ``NaN``). Finite inputs
beyond ``±SAFE_ABS`` are therefore clipped to ``±SAFE_ABS`` before they are binned, and
counted per column (``clipped``), so that the alert rules see them. The bound leaves room
for any real measurement and keeps every sum of squares finite: with at most 2^62 values
per column (the decoder's count limit), ``n · (2 · SAFE_ABS)² ≈ 2e219`` and the merge
formula's ``(n_a·T_b − n_b·T_a)²`` stay far below float64's 1.8e308.

The decoder refuses any statistic a device could only reach by not clipping
(:func:`out_of_range`), in v1 and v2 windows alike: one device cannot turn a fleet
aggregate into ``inf`` or ``NaN``.
"""

from __future__ import annotations

import numpy as np

SAFE_ABS = 1e100
_M2_PER_VALUE = (2.0 * SAFE_ABS) ** 2  # the largest squared deviation of clipped values


def clip_finite(x: np.ndarray, finite: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` with finite values beyond ``±SAFE_ABS`` clipped, and their count per column.

    ``x`` is 2-D ``(rows, columns)``; NaN and ±inf are left alone (counted elsewhere).
    """
    beyond = finite & (np.abs(x) > SAFE_ABS)
    return np.where(beyond, np.copysign(SAFE_ABS, x), x), beyond.sum(axis=0)


def out_of_range(
    counts: np.ndarray,
    sums: np.ndarray,
    n: np.ndarray,
    m2: np.ndarray,
    mins: np.ndarray,
    maxs: np.ndarray,
) -> bool:
    """True when decoded statistics hold anything clipped inputs cannot produce.

    Works on one window (1-D arrays) or a batch (2-D, one row per window). Empty
    columns have ``mins = +inf``, ``maxs = -inf`` and are not checked.
    """
    filled = n > 0
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(
            (np.abs(sums) > counts * SAFE_ABS).any()
            or (m2 > n * _M2_PER_VALUE).any()
            or (np.abs(mins[filled]) > SAFE_ABS).any()
            or (np.abs(maxs[filled]) > SAFE_ABS).any()
        )
