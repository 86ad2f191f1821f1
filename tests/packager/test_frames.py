"""DataFrame models: one ONNX input per column, named rows on the agent.

A pipeline fitted on a pandas DataFrame (ColumnTransformer by column name,
OneHotEncoder and OrdinalEncoder on strings, SimpleImputer, a bool and an int
column) used to fail at register with ``Unable to find column name``. Here it
registers with CSV or parquet reference data, packs, and the agent predicts
rows given by name (CSV header, JSON objects) equal to scikit-learn's.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from edgefleet.core.keys import load_public_key
from edgefleet.core.trust import TrustStore
from edgefleet.packager.errors import DataFileError
from edgefleet.packager.frames import Frame, fit_to_model, load_frame

CITIES = ["Lyon", "Paris", "Nice", "Lille"]


def _frame(n: int, seed: int) -> Any:
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": rng.normal(50, 10, n).round(3),
            "city": rng.choice(CITIES[:3], n),
            "plan": rng.choice(["basic", "pro"], n),
            "member": rng.random(n) > 0.5,
        }
    )


def _pipeline() -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    numeric = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    columns = ColumnTransformer(
        [
            ("num", numeric, ["age", "income"]),
            ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("plan", OrdinalEncoder(), ["plan"]),
            ("member", "passthrough", ["member"]),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=500))])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Any]:
    folder = tmp_path_factory.mktemp("frames")
    train = _frame(400, 0)
    y = ((train.age > 45) ^ (train.city == "Paris") ^ (train.plan == "pro")).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = _pipeline().fit(train, y)
    path = folder / "frame.joblib"
    joblib.dump(pipe, path)
    return pipe, path, _frame(80, 1)


def _register_and_pack(
    cli: Callable[..., Any], model: Path, reference: Path, registry: Path, key: Path, out: Path
) -> dict[str, Any]:
    registered = cli(
        "registry", "register", model, "--name", "frame", "--reference-data", reference,
        "--registry", registry, "--json",
    )  # fmt: skip
    assert registered.code == 0, registered.err
    packed = cli(
        "pack", "frame:1", "--profile", "rpi4-arm64", "--key", key, "--out", out,
        "--registry", registry, "--json",
    )  # fmt: skip
    assert packed.code == 0, packed.err
    return {"registered": registered.json(), "packed": packed.json()}


@pytest.mark.subprocess
def test_dataframe_pipeline_registers_packs_and_serves_named_rows(
    fitted: tuple[Any, Path, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    pipe, model, held_out = fitted
    reference = tmp_path / "reference.csv"
    held_out.to_csv(reference, index=False)
    done = _register_and_pack(cli, model, reference, registry_dir, signing_key[0], tmp_path / "out")
    schema = done["registered"]["io_schema"]
    assert [(i["name"], i["dtype"]) for i in schema["inputs"]] == [
        ("age", "int64"),
        ("income", "float32"),
        ("city", "string"),
        ("plan", "string"),
        ("member", "bool"),
    ]
    features = {f["name"]: f for f in schema["features"]}
    assert features["city"]["input"] == "city" and features["city"]["column"] is None
    assert features["city"]["kind"] == "categorical"
    assert features["city"]["levels"] == sorted(set(held_out.city))

    trust = tmp_path / "trust.json"
    TrustStore.from_keys([load_public_key(signing_key[1])]).save(trust)
    bundle = done["packed"]["bundle"]
    expected = pipe.predict(held_out)
    probabilities = pipe.predict_proba(held_out)

    # CSV by header, columns in another order than the model's.
    rows_csv = tmp_path / "rows.csv"
    held_out[["city", "member", "plan", "income", "age"]].to_csv(rows_csv, index=False)
    result = cli(
        "agent", "predict", "frame", "--bundle", bundle, "--trust", trust, "--input", rows_csv
    )
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert [line["label"] for line in lines] == [int(v) for v in expected]
    got = np.asarray([line["probabilities"] for line in lines])
    assert np.max(np.abs(got - probabilities)) <= 1e-5

    # JSON lines of objects, including a city never seen in training.
    rows = held_out.head(5).to_dict(orient="records")
    rows[0]["city"] = "Tokyo"
    rows_jsonl = tmp_path / "rows.jsonl"
    rows_jsonl.write_text("".join(json.dumps(_plain(r)) + "\n" for r in rows))
    result = cli(
        "agent", "predict", "frame", "--bundle", bundle, "--trust", trust, "--input", rows_jsonl
    )
    assert result.code == 0, result.err
    import pandas as pd

    unseen = pd.DataFrame(rows)
    labels = [json.loads(line)["label"] for line in result.out.splitlines()]
    assert labels == [int(v) for v in pipe.predict(unseen)]  # unseen: all-zero one-hot


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"age": 41, "income": 50.0, "city": "Lyon", "plan": "pro"}, "missing member"),
        (
            {"age": 41, "income": 50.0, "city": "Lyon", "plan": "pro", "member": True, "zip": 1},
            "unknown zip",
        ),
        (
            {"age": "old", "income": 50.0, "city": "Lyon", "plan": "pro", "member": True},
            "'age' expects int64",
        ),
    ],
)
def test_bad_named_rows_are_refused_naming_the_column(
    fitted: tuple[Any, Path, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
    line: dict[str, Any],
    message: str,
) -> None:
    _, model, held_out = fitted
    reference = tmp_path / "reference.csv"
    held_out.to_csv(reference, index=False)
    done = _register_and_pack(cli, model, reference, registry_dir, signing_key[0], tmp_path / "out")
    trust = tmp_path / "trust.json"
    TrustStore.from_keys([load_public_key(signing_key[1])]).save(trust)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(line) + "\n")
    result = cli(
        "agent", "predict", "frame", "--bundle", done["packed"]["bundle"], "--trust", trust,
        "--input", rows,
    )  # fmt: skip
    assert result.code != 0
    assert message in result.err and len(result.err.strip().splitlines()) == 1


def test_parquet_reference_keeps_the_column_types(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = _frame(10, 2)
    path = tmp_path / "reference.parquet"
    frame.to_parquet(path)
    loaded = load_frame(path)
    assert loaded.dtypes == {
        "age": "int64",
        "income": "float32",
        "city": "string",
        "plan": "string",
        "member": "bool",
    }
    assert list(loaded.columns["city"]) == list(frame.city)


def test_csv_column_types_are_inferred(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("a,b,c,d,label\n1,1.5,x,true,0\n2,,y,False,1\n")
    frame = load_frame(path)
    assert frame.dtypes == {
        "a": "int64",
        "b": "float32",
        "c": "string",
        "d": "bool",
        "label": "int64",
    }
    fitted = fit_to_model(frame, ["d", "a", "b", "c"], path)
    assert list(fitted.columns) == ["d", "a", "b", "c"] and list(fitted.labels) == [0, 1]  # type: ignore[arg-type]


def test_reference_with_missing_or_unknown_columns_is_refused(tmp_path: Path) -> None:
    frame = Frame({"a": np.zeros(2), "zip": np.zeros(2)}, {"a": "float32", "zip": "float32"})
    with pytest.raises(DataFileError, match="missing b; unknown zip"):
        fit_to_model(frame, ["a", "b"], tmp_path / "r.csv")


def test_dataframe_model_without_named_reference_is_refused(
    fitted: tuple[Any, Path, Any], cli: Callable[..., Any], registry_dir: Path
) -> None:
    _, model, _ = fitted
    result = cli("registry", "register", model, "--name", "frame", "--registry", registry_dir)
    assert result.code == 2
    assert "fitted on a DataFrame" in result.err and ".parquet" in result.err


@pytest.mark.subprocess
def test_oip_v2_takes_one_input_per_column_with_bytes_for_text(
    fitted: tuple[Any, Path, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from edgefleet.agent.endpoint.oip import decode_infer_request, run_infer
    from edgefleet.agent.errors import InputSchemaError
    from edgefleet.agent.model.runtime import load_bundle
    from edgefleet.core.profiles import load_profile

    pipe, model, held_out = fitted
    reference = tmp_path / "reference.csv"
    held_out.to_csv(reference, index=False)
    done = _register_and_pack(cli, model, reference, registry_dir, signing_key[0], tmp_path / "out")
    trust = TrustStore.from_keys([load_public_key(signing_key[1])])
    served = load_bundle(Path(done["packed"]["bundle"]), trust, load_profile("rpi4-arm64"))
    rows = held_out.head(6)
    kinds = {"age": "INT64", "income": "FP32", "city": "BYTES", "plan": "BYTES", "member": "BOOL"}
    inputs = [
        {"name": n, "datatype": d, "shape": [len(rows)], "data": rows[n].tolist()}
        for n, d in kinds.items()
    ]
    call = decode_infer_request(json.dumps({"inputs": inputs}).encode(), served)
    _, prediction = run_infer(served, call)
    assert [int(v) for v in prediction.labels] == [int(v) for v in pipe.predict(rows)]  # type: ignore[union-attr]
    missing = json.dumps({"inputs": inputs[:-1]}).encode()
    with pytest.raises(InputSchemaError, match="member"):
        run_infer(served, decode_infer_request(missing, served))
    wrong = [dict(inputs[0], datatype="BYTES", data=["old"] * len(rows)), *inputs[1:]]
    with pytest.raises(InputSchemaError, match="'age'"):
        decode_infer_request(json.dumps({"inputs": wrong}).encode(), served)


@pytest.mark.subprocess
def test_bundle_carries_a_drift_reference_with_string_levels_and_counts_unseen(
    fitted: tuple[Any, Path, Any],
    cli: Callable[..., Any],
    registry_dir: Path,
    signing_key: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from edgefleet.agent.endpoint.oip import decode_infer_request, run_infer
    from edgefleet.agent.model.runtime import load_bundle
    from edgefleet.core.bundle_verifier import BundleVerifier
    from edgefleet.core.drift import ReferenceProfile, WindowStats
    from edgefleet.core.profiles import load_profile

    _, model, held_out = fitted
    reference = tmp_path / "reference.csv"
    held_out.to_csv(reference, index=False)
    done = _register_and_pack(cli, model, reference, registry_dir, signing_key[0], tmp_path / "out")
    trust = TrustStore.from_keys([load_public_key(signing_key[1])])
    bundle = Path(done["packed"]["bundle"])
    verified = BundleVerifier(trust).verify_and_extract(bundle, tmp_path / "x")
    assert verified.manifest.reference_path == "reference.json"
    profile = ReferenceProfile.from_json((tmp_path / "x" / "reference.json").read_text())
    assert list(profile.feature_names) == ["age", "income", "city", "plan", "member"]
    assert profile.kinds[2] == "categorical" and profile.kinds[0] == "numeric"

    served = load_bundle(bundle, trust, load_profile("rpi4-arm64"))
    rows = held_out.head(4).copy()
    rows.loc[rows.index[0], "city"] = "Tokyo"  # never in the reference
    kinds = {"age": "INT64", "income": "FP32", "city": "BYTES", "plan": "BYTES", "member": "BOOL"}
    inputs = [
        {"name": n, "datatype": d, "shape": [len(rows)], "data": rows[n].tolist()}
        for n, d in kinds.items()
    ]
    x, prediction = run_infer(
        served, decode_infer_request(json.dumps({"inputs": inputs}).encode(), served)
    )
    window = WindowStats.empty(profile, 0.0, 1.0)
    window.update(x)
    window.update_outputs(np.asarray(prediction.labels))
    city = window.categorical_column(0)
    assert city.n == 4 and int(city.counts[-1]) == 1  # the unseen bucket
