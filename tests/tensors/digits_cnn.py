"""A small conv net with trained weights, built from scikit-learn's bundled digits.

Random-weight conv nets are poor stand-ins for quantization: their activations
and outputs have none of the structure of a trained network (the benchmark's
random 1000-class net gives near-uniform probabilities of about 0.001). This
one is trained in a few seconds without a deep-learning framework:

- ``conv1`` (32 filters, 3x3): k-means centroids of zero-mean 3x3 pixel
  patches, unit norm, each biased at minus its median response (so ReLU keeps
  about half);
- ``conv2`` (64 filters, 3x3, stride 2): the same over patches of conv1's
  ReLU maps;
- ``fc`` (1024 -> 10): a logistic regression on conv2's flattened ReLU maps,
  standardisation folded into its weights; then Softmax.

Input ``image`` ``[N, 1, 8, 8]`` float32 in [0, 1]; output ``probabilities``
``[N, 10]``. About 29k weights (116 KB as float32). Test accuracy about 0.97.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _graph(
    inits: dict[str, np.ndarray], upto: str, output: str = "probabilities"
) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2]
        ),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output], axis=1),
    ]
    keep = next(i for i, n in enumerate(nodes) if upto in n.output) + 1
    nodes = nodes[:keep]
    used = {name for n in nodes for name in n.input}
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items() if k in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": x})[0])


def _filters(patches: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k unit-norm zero-mean centroids of the patches, and biases at minus their median."""
    from sklearn.cluster import MiniBatchKMeans

    centred = patches - patches.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    useful = centred[norms > 1e-3] / norms[norms > 1e-3, None]
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, init="random", batch_size=1024)
    centroids = km.fit(useful).cluster_centers_
    centroids -= centroids.mean(axis=1, keepdims=True)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    bias = -np.median(centred @ centroids.T, axis=0)
    return centroids.astype(np.float32), bias.astype(np.float32)


def _patches(maps: np.ndarray, stride: int, take: int, seed: int) -> np.ndarray:
    """Random 3x3 patches (all channels) of [N, C, H, W] maps padded by 1."""
    padded = np.pad(maps, ((0, 0), (0, 0), (1, 1), (1, 1)))
    view = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    view = view[:, :, ::stride, ::stride]  # [N, C, H', W', 3, 3]
    flat = view.transpose(0, 2, 3, 1, 4, 5).reshape(-1, maps.shape[1] * 9)
    rng = np.random.default_rng(seed)
    return flat[rng.choice(len(flat), size=min(take, len(flat)), replace=False)]


def digits_conv_net() -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, Any]]:
    """(model, reference samples {"image": test split}, {"labels", "train_accuracy",
    "test_accuracy"}), deterministic."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    inits: dict[str, np.ndarray] = {}
    w1, b1 = _filters(_patches(x_tr, 1, 8_000, 1), 32, 1)
    inits["w1"], inits["b1"] = w1.reshape(32, 1, 3, 3), b1
    r1 = _run(_graph(inits, "r1"), x_tr)
    w2, b2 = _filters(_patches(r1, 2, 6_000, 2), 64, 2)
    # _patches orders a patch as (channel, 3, 3), as Conv's [out, in, 3, 3] weights.
    inits["w2"], inits["b2"] = w2.reshape(64, 32, 3, 3).copy(), b2
    f_tr = _run(_graph(inits, "f"), x_tr)
    # A floor on the scale: features that are almost always zero would otherwise get
    # weights fifty times the others (a logistic regression on near-constant inputs).
    spread = f_tr.std(axis=0)
    mean, std = f_tr.mean(axis=0), np.maximum(spread, np.median(spread))
    clf = LogisticRegression(C=0.05, max_iter=300, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit((f_tr - mean) / std, y_tr)
    weights = (clf.coef_ / std).T.astype(np.float32)  # [1024, 10]
    inits["fc_w"] = weights
    inits["fc_b"] = (clf.intercept_ - (mean / std) @ clf.coef_.T).astype(np.float32)
    model = _graph(inits, "probabilities")
    model.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])
    )
    onnx.checker.check_model(model)
    accuracy = {
        "train_accuracy": float(np.mean(_run(model, x_tr).argmax(1) == y_tr)),
        "test_accuracy": float(np.mean(_run(model, x_te).argmax(1) == y_te)),
    }
    return model, {"image": x_te}, {"labels": y_te, **accuracy}
