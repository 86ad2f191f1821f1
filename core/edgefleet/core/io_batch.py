"""Feeding a batch to a graph as its io schema says: one rule for packager and agent.

A graph whose batched inputs all take any batch size gets the arrays as they
are, in one run. A graph fixed to batch 1 (a batched input whose batch
dimension is the constant 1) is fed one sample at a time: sample ``i`` of
every batched input (inputs without a batch axis, such as a sample rate, go
unchanged into every run), and each output's samples are concatenated along
its own batch axis. An output without a batch axis cannot be split into
samples, so such a graph refuses batches of more than one sample
(:class:`BatchError`, a ``ValueError`` the caller turns into its own error).

Pure: ``run`` is the caller's ``feeds -> outputs`` function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from edgefleet.core.io_schema import IoSchema

__all__ = ["BatchError", "batch_size", "run_batched"]

Run = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


class BatchError(ValueError):
    """The feeds disagree on the batch size, or the graph cannot take this batch."""


def batch_size(schema: IoSchema, feeds: Mapping[str, np.ndarray]) -> int:
    """Samples along the batch axes (1 when no input is batched); they must agree."""
    sizes = {
        s.name: int(np.shape(feeds[s.name])[s.batch_axis])
        for s in schema.inputs
        if s.batch_axis is not None and s.name in feeds
    }
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise BatchError(f"inputs disagree on the batch size ({listed})")
    return next(iter(sizes.values()), 1)


def _looped(schema: IoSchema) -> bool:
    return any(s.fixed_batch == 1 for s in schema.inputs)


def run_batched(
    schema: IoSchema, feeds: Mapping[str, np.ndarray], run: Run, output_names: Sequence[str]
) -> list[np.ndarray]:
    """The outputs (in ``output_names`` order) of ``feeds`` as one batch (see module doc)."""
    n = batch_size(schema, feeds)
    if n <= 1 or not _looped(schema):
        return list(run(dict(feeds)))
    specs = [schema.output(name) for name in output_names]
    unsplittable = [
        name
        for name, s in zip(output_names, specs, strict=True)
        if s is None or s.batch_axis is None
    ]
    if unsplittable:
        raise BatchError(
            f"the graph takes one sample at a time and output {unsplittable[0]!r} has no "
            f"batch axis: send one sample per request, not {n}"
        )
    parts: list[list[np.ndarray]] = [[] for _ in output_names]
    for i in range(n):
        one = {
            name: (
                np.take(arr, [i], axis=spec.batch_axis)
                if (spec := schema.input(name)) is not None and spec.batch_axis is not None
                else arr
            )
            for name, arr in feeds.items()
        }
        for k, out in enumerate(run(one)):
            parts[k].append(np.asarray(out))
    return [
        np.concatenate(p, axis=s.batch_axis)  # type: ignore[union-attr]
        for p, s in zip(parts, specs, strict=True)
    ]
