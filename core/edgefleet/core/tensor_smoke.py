"""The smoke set of a format-2 (tensor) bundle: compact inputs, expected outputs, the check.

``smoke.npz`` keys, per input ``NAME`` exactly one of:

- ``in:NAME`` the smoke samples, stored compactly: float inputs as float16
  when every value is a float16 value (the packager rounds the samples to
  float16 *before* computing the expected outputs, so nothing is lost);
  other types as they are;
- ``gen:NAME`` float64 ``[seed, low, high]`` and ``genshape:NAME`` int64: the
  samples are regenerated on the device by :func:`generate` (used when even
  one stored sample would not fit the smoke budget);

per output ``NAME``: ``out:NAME`` the expected values, either all of them or,
for a large output, the values at the flat indices ``idx:NAME`` (int64);
``atol`` the tolerance of float outputs, scaled by ``max(1, max |expected|)``
per output; other outputs must match exactly.

Pure numpy, shared by the packager (writing) and the agent (checking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["check_outputs", "compact", "generate", "inputs_from_smoke", "sample_indices"]

FLOAT16_MAX = 65504.0
MAX_OUTPUT_VALUES = 2048


def compact(arr: np.ndarray) -> np.ndarray:
    """``arr`` rounded to float16 when it is a float array within float16's range.

    The caller must use the *rounded* values as the smoke inputs (the result
    cast back to the input's dtype), so that storing float16 loses nothing.
    """
    wide_float = arr.dtype.kind == "f" and arr.dtype.itemsize > 2
    if wide_float and (arr.size == 0 or float(np.max(np.abs(arr))) <= FLOAT16_MAX):
        return arr.astype(np.float16)
    return arr


def _splitmix64(n: int, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (np.arange(n, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def generate(
    shape: Sequence[int], dtype: np.dtype, seed: int, low: float, high: float
) -> np.ndarray:  # type: ignore[type-arg]
    """Deterministic samples in ``[low, high]`` (the same bits on every machine and numpy).

    splitmix64 over the flat index; float inputs are rounded to float16 values,
    integers drawn uniformly, bools from the lowest bit.
    """
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    bits = _splitmix64(n, int(seed))
    u = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        out = (bits & np.uint64(1)).astype(bool)
    elif dtype.kind in "iu":
        span = float(high) - float(low) + 1.0
        out = (np.floor(u * span) + float(low)).astype(dtype)
    else:
        out = (float(low) + u * (float(high) - float(low))).astype(np.float16).astype(dtype)
    return out.reshape(tuple(int(d) for d in shape))


def inputs_from_smoke(
    arrays: Mapping[str, np.ndarray],
    dtypes: Mapping[str, np.dtype],  # type: ignore[type-arg]
) -> dict[str, np.ndarray]:
    """The smoke inputs by input name, in the declared dtypes (``dtypes``)."""
    feeds: dict[str, np.ndarray] = {}
    for name, dtype in dtypes.items():
        if f"in:{name}" in arrays:
            stored = arrays[f"in:{name}"]
            feeds[name] = stored.astype(object) if dtype.kind == "O" else stored.astype(dtype)
        elif f"gen:{name}" in arrays:
            seed, low, high = (float(v) for v in arrays[f"gen:{name}"])
            shape = [int(d) for d in arrays[f"genshape:{name}"]]
            feeds[name] = generate(shape, dtype, int(seed), low, high)
        else:
            raise KeyError(f"smoke set has no input {name!r}")
    return feeds


def sample_indices(size: int, limit: int = MAX_OUTPUT_VALUES) -> np.ndarray:
    """Evenly spread flat indices of a large output (all of them when it is small)."""
    if size <= limit:
        return np.arange(size, dtype=np.int64)
    return np.unique(np.linspace(0, size - 1, limit).astype(np.int64))


def check_outputs(arrays: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> str | None:
    """None when every ``out:NAME`` matches ``got[NAME]``, else the first difference."""
    atol = float(arrays["atol"]) if "atol" in arrays else 1e-3
    for key in arrays:
        if not key.startswith("out:"):
            continue
        name = key[4:]
        if name not in got:
            return f"smoke set: the model has no output {name!r}"
        want = np.asarray(arrays[key])
        value = np.asarray(got[name])
        if f"idx:{name}" in arrays:
            flat = value.reshape(-1)
            index = arrays[f"idx:{name}"]
            if index.size and int(index.max()) >= flat.size:
                return f"smoke set: output {name!r} has {flat.size} values, expected more"
            value = flat[index]
        elif value.shape != want.shape:
            return f"smoke set: output {name!r} has shape {list(value.shape)}, expected {list(want.shape)}"
        value, want = value.reshape(-1), want.reshape(-1)
        if want.dtype.kind == "f":
            scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
            diff = float(np.max(np.abs(value.astype(np.float64) - want))) if want.size else 0.0
            if not diff <= atol * scale:
                return f"smoke set: output {name!r} differs by {diff:.3g} (atol {atol * scale:.3g})"
        elif not np.array_equal(value.astype(want.dtype), want):
            return f"smoke set: output {name!r} differs from the expected values"
    return None
