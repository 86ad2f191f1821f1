"""Building the static int8 variant leaves the float model it was given untouched."""

from __future__ import annotations

import numpy as np
from onnx.external_data_helper import uses_external_data
from tests.tensors import graphs

from edgefleet.core.io_schema import IoSchema, TensorSpec
from edgefleet.packager.tensor_quantize import build_static


def test_static_quantization_does_not_move_the_callers_weights_to_external_data() -> None:
    """onnxruntime's quantizer rewrote the given ModelProto's initializers as external data
    in a folder it deleted, so the dynamic variant built next from the same model failed
    ('Data of TensorProto ... should be stored in /tmp/ort.quant...')."""
    model, samples = graphs.wide_conv_net()
    before = model.SerializeToString()
    x = samples["image"]
    schema = IoSchema(
        inputs=(TensorSpec("image", "float32", ("N", *x.shape[1:])),),
        outputs=(TensorSpec(model.graph.output[0].name, "float32", ("N", 10)),),
    )
    variant = build_static(model, schema, lambda idx: {"image": x[idx]}, np.arange(8), "U8S8")
    assert variant.model
    assert not any(uses_external_data(t) for t in model.graph.initializer)
    assert model.SerializeToString() == before
