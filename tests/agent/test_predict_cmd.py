"""``edgefleet agent predict``: batch inference from CSV, .npy and JSON lines files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from tests.support.agents import make_env
from tests.support.bundles import Signer, make_signer, trained_model, write_signed_bundle

from edgefleet.core.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["agent", "predict", *args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return make_signer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def iris_bundle(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Path:
    return write_signed_bundle(
        tmp_path_factory.mktemp("b") / "iris.efb", "iris", signer, version=2
    ).path


def bundle_args(bundle: Path, signer: Signer) -> list[str]:
    assert signer.trust_path is not None
    return ["--bundle", str(bundle), "--trust", str(signer.trust_path)]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_columns_by_name_to_jsonl_stdout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, iris_bundle: Path, signer: Signer
) -> None:
    m = trained_model("iris")
    names = m.feature_names
    # Columns shuffled and an extra id column: picked by name.
    header = ["id", names[2], names[0], names[3], names[1]]
    rows = [[f"r{i}", x[2], x[0], x[3], x[1]] for i, x in enumerate(m.X_test[:7].tolist())]
    source = write_csv(tmp_path / "in.csv", header, rows)
    code, out, err = run(capsys, "iris", "--input", str(source), *bundle_args(iris_bundle, signer))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["row"] for r in lines] == list(range(7))
    assert [r["label"] for r in lines] == m.expected[:7].tolist()
    assert all(len(r["probabilities"]) == 3 for r in lines)


def test_npy_to_csv_file_with_json_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, iris_bundle: Path, signer: Signer
) -> None:
    m = trained_model("iris")
    source = tmp_path / "x.npy"
    np.save(source, m.X_test.astype(np.float64))
    target = tmp_path / "out" / "pred.csv"
    target.parent.mkdir()
    code, out, err = run(
        capsys,
        "iris",
        "--input",
        str(source),
        "--output",
        str(target),
        "--json",
        *bundle_args(iris_bundle, signer),
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rows"] == len(m.X_test) and summary["version"] == 2
    assert summary["format"] == "csv" and summary["output"] == str(target)
    table = list(csv.reader(io.StringIO(target.read_text())))
    assert table[0] == ["row", "label", "p_0", "p_1", "p_2"]
    assert [int(r[1]) for r in table[1:]] == m.expected.tolist()
    assert sorted(p.name for p in target.parent.iterdir()) == ["pred.csv"]  # no temp file left


def test_jsonl_objects_and_lists(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, iris_bundle: Path, signer: Signer
) -> None:
    m = trained_model("iris")
    x = m.X_test[:3].tolist()
    lines = [
        json.dumps(dict(zip(m.feature_names, x[0], strict=True))),
        "",
        json.dumps(x[1]),
        json.dumps(dict(zip(m.feature_names, x[2], strict=True)) | {"extra": "ignored"}),
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "iris", "--input", str(source), *bundle_args(iris_bundle, signer))
    assert code == 0, err
    assert [json.loads(line)["label"] for line in out.splitlines()] == m.expected[:3].tolist()


def test_regression_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, signer: Signer
) -> None:
    d = trained_model("diabetes")
    bundle = write_signed_bundle(tmp_path / "d.efb", "diabetes", signer).path
    source = tmp_path / "x.npy"
    np.save(source, d.X_test[:5])
    code, out, err = run(capsys, "diabetes", "--input", str(source), *bundle_args(bundle, signer))
    assert code == 0, err
    values = [json.loads(line)["value"] for line in out.splitlines()]
    np.testing.assert_allclose(values, d.expected[:5], rtol=1e-5)


@pytest.mark.parametrize(
    ("case", "content", "message"),
    [
        ("bad_cell", "a,b,c,d\n1,2,3,4\n1,2,abc,4\n", "line 3, column 'c': 'abc' is not a number"),
        ("missing_cell", "a,b,c,d\n1,2,,4\n", "NaN or infinite"),
        ("wrong_width", "a,b,c\n1,2,3\n", "the CSV has 3 columns; the model needs 4 features"),
        ("ragged_row", "a,b,c,d\n1,2,3,4\n1,2\n", "line 3: 2 cells, the header has 4"),
        ("empty", "", "the CSV file is empty"),
        ("header_only", "a,b,c,d\n", "the input has no rows"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    iris_bundle: Path,
    signer: Signer,
    case: str,
    content: str,
    message: str,
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(content)
    target = tmp_path / "out.jsonl"
    code, out, err = run(
        capsys,
        "iris",
        "--input",
        str(source),
        "--output",
        str(target),
        *bundle_args(iris_bundle, signer),
    )
    assert code == 2, (case, err)
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, (case, err)
    assert out == "" and list(tmp_path.iterdir()) == [source], case


def test_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, iris_bundle: Path, signer: Signer
) -> None:
    source = write_csv(tmp_path / "in.csv", ["a", "b", "c", "d"], [[1, 2, 3, 4]])
    cases = [
        (["--json"], "--json prints a summary"),
        (["--format", "npy"], "not a readable .npy array"),
    ]
    for extra, message in cases:
        code, _, err = run(
            capsys, "iris", "--input", str(source), *extra, *bundle_args(iris_bundle, signer)
        )
        assert code == 2 and message in err, err
    code, _, err = run(capsys, "wine", "--input", str(source), *bundle_args(iris_bundle, signer))
    assert code == 2 and "holds model 'iris', not 'wine'" in err
    code, _, err = run(capsys, "iris", "--input", str(source), "--bundle", str(iris_bundle))
    assert code == 2 and "need --trust" in err
    code, _, err = run(
        capsys, "iris", "--input", str(tmp_path / "rows.txt"), *bundle_args(iris_bundle, signer)
    )
    assert code == 2 and "cannot tell the format" in err


def test_untrusted_bundle_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, iris_bundle: Path
) -> None:
    stranger = make_signer(tmp_path / "other")
    source = write_csv(tmp_path / "in.csv", ["a", "b", "c", "d"], [[1, 2, 3, 4]])
    code, out, err = run(
        capsys, "iris", "--input", str(source), *bundle_args(iris_bundle, stranger)
    )
    assert code == 3 and err.startswith("error: ") and out == ""


@pytest.mark.subprocess
def test_installed_model_from_config_and_state_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env = make_env(tmp_path)
    result = env.cli("install", str(env.bundle(4)), "--wait", "final")
    assert result.returncode == 0, result.stderr
    m = trained_model("iris")
    source = tmp_path / "x.npy"
    np.save(source, m.X_test[:4])
    code, out, err = run(capsys, "iris", "--input", str(source), "--config", str(env.config_path))
    assert code == 0, err
    assert [json.loads(line)["label"] for line in out.splitlines()] == m.expected[:4].tolist()
    assert env.signer.trust_path is not None
    code, out, err = run(
        capsys,
        "iris",
        "--input",
        str(source),
        "--state-dir",
        str(env.state_dir),
        "--trust",
        str(env.signer.trust_path),
    )
    assert code == 0, err
    assert len(out.splitlines()) == 4
    code, _, err = run(capsys, "wine", "--input", str(source), "--config", str(env.config_path))
    assert code == 2 and "not installed" in err
