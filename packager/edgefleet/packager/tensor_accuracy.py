"""Accuracy of a tensor classifier against the labels registered with its reference samples.

The predicted class of a sample is its ``label`` output when the model has one,
else the arg-max of its ``probabilities`` output over the non-batch axes. Labels
that are integers compare with that class index; other labels (e.g. the class
names of ``--class-names``) compare as text with the class name at that index,
or with the index itself when the model declares no class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgefleet.core.io_schema import IoSchema
from edgefleet.packager.validate import accuracy


def predicted_classes(
    schema: IoSchema, outputs: Sequence[Any], class_names: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(class index or label per sample, class name per sample or None); None when the
    model has no batched ``label`` or ``probabilities`` output."""
    names = schema.output_names
    label = schema.output_with_role("label")
    if label is not None and label.batch_axis is not None:
        return np.asarray(outputs[names.index(label.name)]).reshape(-1), None
    probs = schema.output_with_role("probabilities")
    if probs is None or probs.batch_axis is None:
        return None
    a = np.moveaxis(np.asarray(outputs[names.index(probs.name)]), probs.batch_axis, 0)
    if a.ndim < 2 or not a.size:
        return None
    index = np.argmax(a.reshape(len(a), -1), axis=1)
    if not class_names or int(index.max(initial=0)) >= len(class_names):
        return index, None
    return index, np.asarray([str(class_names[i]) for i in index], dtype=object)


def tensor_accuracy(
    schema: IoSchema,
    outputs: Sequence[Any],
    truth: np.ndarray,
    class_names: Sequence[Any] | None,
) -> float | None:
    """Share of samples whose predicted class is ``truth``'s; None when the model
    predicts no class (see the module docstring)."""
    predicted = predicted_classes(schema, outputs, class_names)
    if predicted is None:
        return None
    index, named = predicted
    truth = np.asarray(truth).reshape(-1)
    if named is not None and truth.dtype.kind not in "iu":
        return accuracy(truth, named)
    return accuracy(truth, index)
