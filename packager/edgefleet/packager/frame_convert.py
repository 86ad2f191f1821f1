"""Converting and checking a DataFrame model (see :mod:`edgefleet.packager.frames`).

The converted graph is registered as an ONNX model with an io schema v2 and
packed as a format-2 bundle; the pickle is checked against it here, at
registration, on every reference row (labels equal, probabilities and values
within the packager's tolerances), because the format-2 pack compares the
packaged graph with the registered graph only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.core.io_schema import FeatureRef, IoSchema
from edgefleet.packager.errors import FidelityError
from edgefleet.packager.frames import Frame, feeds, pandas_frame

_ONNX_TYPES = {
    "float32": TensorProto.FLOAT,
    "int64": TensorProto.INT64,
    "bool": TensorProto.BOOL,
    "string": TensorProto.STRING,
}


def convert_frame_model(est: Any, dtypes: dict[str, str], target: Any) -> onnx.ModelProto:
    """skl2onnx with one ``[N, 1]`` input per column, then typed ``[N]`` inputs (module doc)."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    from edgefleet.packager.convert import run_skl2onnx

    names = [str(n) for n in est.feature_names_in_]
    initial = [
        (n, StringTensorType([None, 1]) if dtypes[n] == "string" else FloatTensorType([None, 1]))
        for n in names
    ]
    model = run_skl2onnx(est, initial, target)
    return typed_inputs(model, {n: dtypes[n] for n in names})


def typed_inputs(model: onnx.ModelProto, dtypes: dict[str, str]) -> onnx.ModelProto:
    """Replace each ``[N, 1]`` column input by a ``[N]`` input of the column's own type."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inner = {name: f"{name}__column" for name in dtypes}
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = inner.get(name, name)
    axes = "frames__unsqueeze_axes"
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
    prologue = []
    for name, dtype in dtypes.items():
        source = name
        if dtype in ("int64", "bool"):
            source = f"{name}__float"
            prologue.append(
                helper.make_node("Cast", [name], [source], to=TensorProto.FLOAT, name=source)
            )
        prologue.append(
            helper.make_node("Unsqueeze", [source, axes], [inner[name]], name=inner[name])
        )
    nodes = [*prologue, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.extend(
        helper.make_tensor_value_info(name, _ONNX_TYPES[dtype], [None])
        for name, dtype in dtypes.items()
    )
    return out


def frame_schema(model: onnx.ModelProto, task: str, frame: Frame, est: Any) -> IoSchema:
    """The io schema v2: one feature per column input; string columns categorical."""
    from edgefleet.packager.onnx_io import Declarations, declare_schema

    roles = {o.name: _role(o.name, task) for o in model.graph.output}
    decl = Declarations(task=task, output_roles={k: v for k, v in roles.items() if v})
    schema = declare_schema(model, decl, task)
    features = []
    for name, dtype in frame.dtypes.items():
        if dtype == "string":
            levels = tuple(sorted({str(v) for v in frame.columns[name]}))
            features.append(FeatureRef(name, name, None, "categorical", levels))
        else:
            features.append(FeatureRef(name, name, None, "numeric"))
    return IoSchema(
        inputs=schema.inputs,
        outputs=schema.outputs,
        features=tuple(features),
        allow_non_finite=any(
            d == "float32" and bool(np.isnan(frame.columns[n]).any())
            for n, d in frame.dtypes.items()
        ),
    )


def _role(name: str, task: str) -> str | None:
    if task == "classifier":
        return {"label": "label", "probabilities": "probabilities"}.get(name)
    return "value"


def check_frame_fidelity(est: Any, model: onnx.ModelProto, frame: Frame) -> dict[str, Any]:
    """The converted graph against the pickle on every reference row; refuses a miss."""
    import onnxruntime as ort
    from sklearn.base import is_classifier

    from edgefleet.packager.convert import PROBABILITY_ATOL, VALUE_RTOL
    from edgefleet.packager.validate import same_labels

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    df = pandas_frame(frame)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds(frame)), strict=True))
    report: dict[str, Any] = {
        "rows": frame.rows,
        "compared_with": f"scikit-learn {type(est).__name__}",
    }
    if is_classifier(est):
        agree = float(np.mean(same_labels(np.asarray(est.predict(df)), got["label"])))
        diff = float(np.max(np.abs(est.predict_proba(df) - got["probabilities"])))
        report |= {"label_agreement": agree, "max_probability_diff": diff}
        ok = agree == 1.0 and diff <= PROBABILITY_ATOL
    else:
        want = np.asarray(est.predict(df), dtype=np.float64)
        values = next(iter(got.values())).reshape(want.shape)
        diff = float(np.max(np.abs(values - want) / np.maximum(1.0, np.abs(want))))
        report |= {"max_value_diff": diff}
        ok = diff <= VALUE_RTOL
    if not ok:
        raise FidelityError(
            "conversion changed the model's outputs on the reference rows "
            f"({', '.join(f'{k} {v:.4g}' for k, v in report.items() if isinstance(v, float))})"
        )
    return report


def column_reference(
    schema: IoSchema, samples: dict[str, np.ndarray], labels: np.ndarray | None
) -> bytes | None:
    """``reference.json`` for a model with one input per column, else None.

    Features in schema order; string columns are categorical (levels from the
    reference rows, ``unseen`` for others on the device), the rest numeric.
    ``labels`` (the packaged model's, on the same rows) profile the outputs.
    """
    from edgefleet.core.drift import ReferenceProfile

    features = schema.features
    column_model = bool(features) and all(
        f.column is None and (spec := schema.input(f.input)) is not None and spec.rank == 1
        for f in features
    )
    if not column_model or len(features) != len(schema.inputs):
        return None
    columns = [samples[f.input] for f in features]
    text = any(c.dtype.kind in "OUS" for c in columns)
    x = np.stack([c.astype(object if text else np.float64) for c in columns], axis=1)
    kinds = ["categorical" if f.kind == "categorical" else "numeric" for f in features]
    profile = ReferenceProfile.build(
        x,
        [f.name for f in features],
        kinds,
        outputs=labels,
        output_kind="class",
    )
    return profile.to_json().encode("utf-8")
