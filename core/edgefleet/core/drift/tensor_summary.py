"""Drift features of a tensor model: a small fixed vector per sample, whatever the pixels.

Pure numpy. :class:`TensorDriftPlan` is derived from the io schema alone, so
the packager (building the reference from the ``.npz`` reference samples) and
the agent (folding live requests into its window) compute the same features
in the same order without storing the plan anywhere; the reference profile's
feature names are the check that both agree.

Inputs (data inputs with a batch axis, numeric or bool):

- rank > 2 after the batch axis is set aside (an image ``[N, C, H, W]``, audio
  ``[N, C, T]``, a sensor window ``[N, T, C]``): per channel the mean, the
  population std, the min and the max over every other axis, i.e.
  ``4 x channels`` features named ``image[c0].mean`` ... The channel axis is
  the first or the last non-batch axis, whichever is fixed, at most
  :data:`MAX_CHANNELS` and smaller (the first on a tie): NCHW, NHWC and
  ``[N, T, C]`` all give the colour / sensor axis. Without such an axis the
  whole sample is one channel (``image.mean`` ...).
- a vector per sample (``[N, F]`` with ``F <= MAX_CHANNELS`` fixed, or ``[N]``):
  its values are the features (``x[0]`` ... or ``x``), like a table's columns.
- text, state tensors, inputs without a batch axis and wider vectors: not summarised.

Outputs (batched, floating point), by declared role:

- ``probabilities``: ``name.top1`` (top-1 confidence), and the top-1 class index
  feeds the profile's class distribution (unless a ``label`` output does);
- ``label``: its value is the class for the class distribution;
- ``score``: ``name.mean`` and ``name.max`` per sample (score histograms);
- ``embedding``: ``name.norm``, the L2 norm per sample.

Two tasks summarise their main output their own way (the task comes from the
manifest, so packager and agent still agree):

- ``segmenter``: the mask (a ``label`` output ``[N, H, W]`` of class indices, else a
  ``probabilities`` output ``[N, C, H, W]`` or ``[N, H, W, C]`` reduced by argmax over
  its class axis, found like an input's channel axis) gives per sample the share of
  its pixels in each class, ``name.share[k]`` for the ``k`` of a fixed class count
  (the class axis, or the declared class names of a label mask; at most
  :data:`MAX_SEGMENT_CLASSES`);
- ``sequence``: the first batched floating-point output that is not state, its
  last axis the classes or features of a step and every other non-batch axis a
  step: a ``probabilities`` output gives the top-1 confidence of every step
  (``name.step_top1.mean`` and ``.min`` per sample), any other the L2 norm of every
  step's vector (``name.step_norm.mean`` and ``.max``).

The feature count therefore grows with channels, classes and outputs, never with
pixels, time steps or samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.core.io_schema import IoSchema, TensorSpec

MAX_CHANNELS = 32
STATS = ("mean", "std", "min", "max")
_NUMERIC = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
     "uint32", "uint64", "bool"}
)  # fmt: skip
_FLOAT = frozenset({"float16", "float32", "float64"})

# What the rollout gates compare between versions, per declared task (docs/rollouts.md).
SCORE_TASKS = ("anomaly", "detector")
CLASS_TASKS = ("classifier", "classification")
SEGMENT_TASKS = ("segmenter",)
SEQUENCE_TASKS = ("sequence",)


@dataclass(frozen=True)
class InputSummary:
    """How one input becomes features: ``channel_axis`` None = the whole sample, or values."""

    name: str
    batch_axis: int
    channel_axis: int | None
    channels: int
    per_value: bool  # a vector per sample: its values are the features

    def feature_names(self) -> list[str]:
        if self.per_value:
            return [self.name] if self.channels == 0 else [
                f"{self.name}[{j}]" for j in range(self.channels)
            ]  # fmt: skip
        if self.channel_axis is None:
            return [f"{self.name}.{s}" for s in STATS]
        return [f"{self.name}[c{k}].{s}" for k in range(self.channels) for s in STATS]

    def rows(self, arr: np.ndarray) -> np.ndarray:
        x = np.moveaxis(np.asarray(arr), self.batch_axis, 0)
        n = x.shape[0]
        if self.per_value:
            return x.reshape(n, -1).astype(np.float64)
        if self.channel_axis is None:
            flat = x.reshape(n, 1, -1)
        else:
            axis = self.channel_axis - (1 if self.channel_axis > self.batch_axis else 0) + 1
            flat = np.moveaxis(x, axis, 1).reshape(n, self.channels, -1)
        # float32 stays float32 (four passes over an image: well under a millisecond).
        flat = flat.astype(np.float32 if flat.dtype == np.float32 else np.float64, copy=False)
        stats = np.stack(
            [flat.mean(axis=2), flat.std(axis=2), flat.min(axis=2), flat.max(axis=2)], axis=2
        )
        return stats.reshape(n, -1).astype(np.float64)


@dataclass(frozen=True)
class OutputMonitor:
    name: str
    batch_axis: int
    role: str

    def feature_names(self) -> list[str]:
        if self.role == "probabilities":
            return [f"{self.name}.top1"]
        if self.role == "score":
            return [f"{self.name}.mean", f"{self.name}.max"]
        return [f"{self.name}.norm"]

    def rows(self, arr: np.ndarray) -> np.ndarray:
        x = np.moveaxis(np.asarray(arr), self.batch_axis, 0)
        flat = x.reshape(x.shape[0], -1).astype(np.float64, copy=False)
        if flat.shape[1] == 0:
            return np.zeros((flat.shape[0], len(self.feature_names())))
        if self.role == "probabilities":
            return flat.max(axis=1, keepdims=True)
        if self.role == "score":
            return np.stack([flat.mean(axis=1), flat.max(axis=1)], axis=1)
        return np.linalg.norm(flat, axis=1, keepdims=True)


MAX_SEGMENT_CLASSES = 256
CONFIDENCE_BINS = 10  # the per-step top-1 confidence histogram: [0, 0.1), ..., [0.9, 1]


@dataclass(frozen=True)
class SegmentMonitor:
    """A segmenter's mask output: the class of every pixel, and per sample each class's
    share of the pixels."""

    name: str
    batch_axis: int
    class_axis: int | None  # None: the output is the mask itself (a label output)
    classes: int  # the fixed class count; 0 (class names unknown): no share features

    def feature_names(self) -> list[str]:
        return [f"{self.name}.share[{k}]" for k in range(self.classes)]

    def mask(self, arr: np.ndarray) -> np.ndarray:
        """``[N, pixels]`` int64: the class of every pixel of every sample."""
        x = np.asarray(arr)
        if self.class_axis is None:
            x = np.moveaxis(x, self.batch_axis, 0)
            return x.reshape(x.shape[0], -1).astype(np.int64)
        x = np.moveaxis(x, (self.batch_axis, self.class_axis), (0, 1))
        return np.argmax(x, axis=1).reshape(x.shape[0], -1).astype(np.int64)

    def rows(self, arr: np.ndarray) -> np.ndarray:
        mask = self.mask(arr)
        n, pixels = mask.shape
        k = self.classes
        if k == 0 or pixels == 0:
            return np.zeros((n, k))
        valid = (mask >= 0) & (mask < k)
        # One bincount for the whole batch: sample i's class c lands in bin i * k + c.
        index = (np.arange(n)[:, None] * k + mask)[valid]
        counts = np.bincount(index, minlength=n * k).reshape(n, k)
        return counts / float(pixels)

    def keys(self, arr: np.ndarray, labels: Sequence[Any] | None) -> np.ndarray:
        """The class of every pixel (by its declared name when there are names for all):
        the class mix over pixels, counted the way a classifier's samples are."""
        mask = self.mask(arr).reshape(-1)
        if labels is None or not len(labels) or mask.size == 0:
            return mask
        names = np.asarray(list(labels), dtype=object)
        if mask.min() < 0 or mask.max() >= len(names):
            return mask
        return names[mask]


@dataclass(frozen=True)
class SequenceMonitor:
    """A sequence model's output: per step its top-1 confidence (``probabilities``) or
    the L2 norm of its vector (anything else)."""

    name: str
    batch_axis: int
    confidence: bool

    @property
    def stat(self) -> str:
        return "step_top1" if self.confidence else "step_norm"

    def feature_names(self) -> list[str]:
        second = "min" if self.confidence else "max"  # the least sure / the largest step
        return [f"{self.name}.{self.stat}.mean", f"{self.name}.{self.stat}.{second}"]

    def steps(self, arr: np.ndarray) -> np.ndarray:
        """``[N, steps]`` float64: the per-step value of every sample."""
        x = np.moveaxis(np.asarray(arr), self.batch_axis, 0).astype(np.float64, copy=False)
        if x.ndim == 1:
            x = x[:, None]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.confidence:
            return flat.max(axis=2) if flat.shape[2] else np.zeros(flat.shape[:2])
        return np.linalg.norm(flat, axis=2)

    def rows(self, arr: np.ndarray) -> np.ndarray:
        v = self.steps(arr)
        if v.shape[1] == 0:
            return np.zeros((v.shape[0], 2))
        second = v.min(axis=1) if self.confidence else v.max(axis=1)
        return np.stack([v.mean(axis=1), second], axis=1)

    def keys(self, arr: np.ndarray) -> np.ndarray:
        """One key per step: the confidence's tenth (``"0.9"`` holds [0.9, 1]) or the
        norm's one-significant-digit bin."""
        v = self.steps(arr).reshape(-1)
        if not self.confidence:
            return value_bins(v)
        tenth = np.clip(np.floor(v * CONFIDENCE_BINS), 0, CONFIDENCE_BINS - 1)
        return np.array([f"{b / CONFIDENCE_BINS:.1f}" for b in tenth.tolist()], dtype=object)


def class_axis(spec: TensorSpec) -> int | None:
    """The class axis of a per-pixel score output: the first or last non-batch axis,
    whichever is fixed and smaller (the first on a tie), as for an input's channels."""
    if spec.batch_axis is None:
        return None
    others = [a for a in range(spec.rank) if a != spec.batch_axis]
    if len(others) < 2:
        return None
    candidates = []
    for axis in (others[0], others[-1]):
        size = spec.fixed(axis)
        if size is not None and 2 <= size <= MAX_SEGMENT_CLASSES:
            candidates.append((size, axis))
    return min(candidates, key=lambda t: t[0])[1] if candidates else None


def _segment_monitor(io: IoSchema, labels: Sequence[Any] | None) -> SegmentMonitor | None:
    batched = [s for s in io.outputs if s.batch_axis is not None]
    for spec in batched:
        if spec.role == "label" and spec.dtype in _NUMERIC and spec.dtype != "bool":
            known = len(labels) if labels is not None else 0
            assert spec.batch_axis is not None
            classes = known if known <= MAX_SEGMENT_CLASSES else 0
            return SegmentMonitor(spec.name, spec.batch_axis, None, classes)
    for spec in batched:
        if spec.role == "probabilities" and spec.dtype in _FLOAT:
            axis = class_axis(spec)
            if axis is None:
                continue
            size = spec.fixed(axis)
            assert spec.batch_axis is not None and size is not None
            return SegmentMonitor(spec.name, spec.batch_axis, axis, size)
    return None


def _sequence_monitor(io: IoSchema) -> SequenceMonitor | None:
    candidates = [
        s
        for s in io.outputs
        if s.batch_axis is not None and s.dtype in _FLOAT and s.role != "state"
    ]
    chosen = next((s for s in candidates if s.role == "probabilities"), None)
    chosen = chosen or next(iter(candidates), None)
    if chosen is None or chosen.batch_axis is None:
        return None
    return SequenceMonitor(chosen.name, chosen.batch_axis, chosen.role == "probabilities")


def _input_summary(spec: TensorSpec) -> InputSummary | None:
    if spec.role != "data" or spec.batch_axis is None or spec.dtype not in _NUMERIC:
        return None
    others = [a for a in range(spec.rank) if a != spec.batch_axis]
    if not others:
        return InputSummary(spec.name, spec.batch_axis, None, 0, per_value=True)
    if len(others) == 1:
        width = spec.fixed(others[0])
        if width is None or width > MAX_CHANNELS:
            return None
        return InputSummary(spec.name, spec.batch_axis, others[0], width, per_value=True)
    # Channels come first (NCHW, [N, C, T]) or last (NHWC, [N, T, C]), never in the middle.
    candidates = []
    for axis in (others[0], others[-1]):
        size = spec.fixed(axis)
        if size is not None and size <= MAX_CHANNELS:
            candidates.append((size, axis))
    if candidates:
        size, axis = min(candidates, key=lambda t: t[0])  # a tie keeps the first
        return InputSummary(spec.name, spec.batch_axis, axis, size, per_value=False)
    return InputSummary(spec.name, spec.batch_axis, None, 1, per_value=False)


@dataclass(frozen=True)
class TensorDriftPlan:
    inputs: tuple[InputSummary, ...]
    outputs: tuple[OutputMonitor, ...]
    class_output: tuple[str, str, int] | None  # (output, "label" | "probabilities", batch axis)
    segment: SegmentMonitor | None = None  # task "segmenter"
    sequence: SequenceMonitor | None = None  # task "sequence"

    @classmethod
    def from_io_schema(
        cls, io: IoSchema, task: str | None = None, labels: Sequence[Any] | None = None
    ) -> TensorDriftPlan:
        """The plan of a model; ``task`` and its class names ``labels`` (from the
        manifest) decide how a segmenter's or sequence model's main output is summarised."""
        inputs = tuple(s for s in map(_input_summary, io.inputs) if s is not None)
        segment = _segment_monitor(io, labels) if task in SEGMENT_TASKS else None
        sequence = _sequence_monitor(io) if task in SEQUENCE_TASKS else None
        own = {m.name for m in (segment, sequence) if m is not None}
        outputs = []
        class_output: tuple[str, str, int] | None = None
        for spec in io.outputs:
            if spec.batch_axis is None or spec.name in own:
                continue
            if spec.role == "label" and class_output is None:
                class_output = (spec.name, "label", spec.batch_axis)
            if spec.dtype not in _FLOAT:
                continue
            if spec.role in ("probabilities", "score", "embedding"):
                outputs.append(OutputMonitor(spec.name, spec.batch_axis, spec.role))
            if spec.role == "probabilities" and class_output is None:
                class_output = (spec.name, "probabilities", spec.batch_axis)
        if segment is not None or task in SEQUENCE_TASKS:
            class_output = None  # no one class per sample: the mix is over pixels or steps
        return cls(inputs, tuple(outputs), class_output, segment, sequence)

    @property
    def _task_monitors(self) -> list[SegmentMonitor | SequenceMonitor]:
        return [m for m in (self.segment, self.sequence) if m is not None]

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for summary in self.inputs:
            names += summary.feature_names()
        for monitor in self.outputs:
            names += monitor.feature_names()
        for task_monitor in self._task_monitors:
            names += task_monitor.feature_names()
        return names

    @property
    def empty(self) -> bool:
        return not self.feature_names

    def rows(
        self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """``[N, len(feature_names)]`` float64: the features of every sample."""
        parts = [s.rows(feeds[s.name]) for s in self.inputs]
        parts += [m.rows(outputs[m.name]) for m in self.outputs]
        parts += [t.rows(outputs[t.name]) for t in self._task_monitors]
        return np.concatenate(parts, axis=1) if parts else np.zeros((0, 0))

    def classes(
        self, outputs: Mapping[str, np.ndarray], labels: Sequence[Any] | None = None
    ) -> np.ndarray | None:
        """One class per sample (the label output, or the top-1 index named by ``labels``
        when the model declares its class names, so feedback labels match), or None."""
        if self.class_output is None:
            return None
        name, kind, axis = self.class_output
        x = np.moveaxis(np.asarray(outputs[name]), axis, 0)
        if kind == "label":
            return x.reshape(x.shape[0], -1)[:, 0]
        flat = x.reshape(x.shape[0], -1)
        top = np.argmax(flat, axis=1).astype(np.int64)
        if labels is not None and len(labels) == flat.shape[1]:
            return np.asarray(list(labels), dtype=object)[top]
        return top


def value_bins(values: np.ndarray) -> np.ndarray:
    """Each value as its one-significant-digit bin (``"3e-01"``, ``"-2e+01"``): a log-scale
    histogram key, the same on every device and for every version, whatever the range."""
    return np.array([format(float(v), ".0e") for v in np.asarray(values).reshape(-1)], object)


def prediction_keys(
    plan: TensorDriftPlan,
    task: str,
    outputs: Mapping[str, np.ndarray],
    labels: Sequence[Any] | None = None,
) -> np.ndarray | None:
    """The keys whose mix the rollout gates compare between versions: per sample the class
    for classifiers, the bin of the largest score for detectors and anomaly models, the bin
    of the embedding norm for embeddings; per pixel the class for segmenters; per step the
    top-1 confidence's tenth (or the norm's bin) for sequence models; None
    (``not_applicable``) for other tasks."""
    if task in CLASS_TASKS:
        return plan.classes(outputs, labels)
    if task in SEGMENT_TASKS:
        return (
            None if plan.segment is None else plan.segment.keys(outputs[plan.segment.name], labels)
        )
    if task in SEQUENCE_TASKS:
        return None if plan.sequence is None else plan.sequence.keys(outputs[plan.sequence.name])
    role = "score" if task in SCORE_TASKS else "embedding" if task == "embedding" else None
    monitor = next((m for m in plan.outputs if m.role == role), None)
    if monitor is None:
        return None
    rows = monitor.rows(outputs[monitor.name])
    return value_bins(rows[:, -1])  # score: the max; embedding: the norm
