"""``CalibratedClassifierCV`` over a Pipeline: the converted graph equals scikit-learn.

scikit-learn calibrates the base model's ``decision_function``; skl2onnx fed
the calibrator the base Pipeline's probabilities instead, and 36% of labels
flipped on the breast-cancer data (82% in a user's report). The converter is
now told to take the Pipeline's raw scores.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest


def _data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y


@pytest.mark.parametrize("c", [1.0, 0.1])
def test_sigmoid_calibration_over_a_pipeline_matches_scikit_learn(c: float) -> None:
    import onnxruntime as ort
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgefleet.packager.convert import convert_estimator
    from edgefleet.packager.graph import target_for

    x, y = _data()
    base = make_pipeline(StandardScaler(), LogisticRegression(C=c))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est: Any = CalibratedClassifierCV(base, method="sigmoid", cv=3).fit(x, y)
    model = convert_estimator(est, x.shape[1], target_for("99.0")).model
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {session.get_inputs()[0].name: x})
    assert list(labels) == list(est.predict(x))
    assert np.max(np.abs(probabilities - est.predict_proba(x))) < 1e-5


def test_a_pipeline_base_without_predict_proba_is_refused_in_one_line() -> None:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from edgefleet.packager.convert import convert_estimator
    from edgefleet.packager.errors import UnsupportedModelError
    from edgefleet.packager.graph import target_for

    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = CalibratedClassifierCV(make_pipeline(StandardScaler(), LinearSVC()), cv=3).fit(x, y)
        # The form the message suggests converts exactly.
        inside = make_pipeline(StandardScaler(), CalibratedClassifierCV(LinearSVC(), cv=3)).fit(
            x, y
        )
    with pytest.raises(UnsupportedModelError) as raised:
        convert_estimator(est, x.shape[1], target_for("99.0"))
    line = str(raised.value)
    assert "Pipeline ending in LinearSVC (no predict_proba)" in line and len(line) <= 300
    assert "\n" not in line
    import onnxruntime as ort

    model = convert_estimator(inside, x.shape[1], target_for("99.0")).model
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {session.get_inputs()[0].name: x})
    assert list(labels) == list(inside.predict(x))
    assert np.max(np.abs(probabilities - inside.predict_proba(x))) < 1e-5
