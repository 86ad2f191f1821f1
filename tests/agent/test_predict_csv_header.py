"""``agent predict`` CSV headers: matched by name; a data-like first row needs --no-header."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
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
def bundle_args(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> list[str]:
    path = write_signed_bundle(tmp_path_factory.mktemp("b") / "iris.efb", "iris", signer).path
    return ["--bundle", str(path), "--trust", str(signer.trust_path)]


def _rows(n: int) -> list[list[float]]:
    return trained_model("iris").X_test[:n].tolist()


def test_headerless_file_is_refused_then_read_whole_with_no_header(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle_args: list[str]
) -> None:
    source = tmp_path / "in.csv"
    with open(source, "w", newline="") as f:
        csv.writer(f).writerows(_rows(5))
    code, out, err = run(capsys, "iris", "--input", str(source), *bundle_args)
    assert code == 2 and out == ""
    assert err.startswith("error: line 1 looks like data") and "--no-header" in err
    assert err.count("\n") == 1
    code, out, err = run(capsys, "iris", "--input", str(source), "--no-header", *bundle_args)
    assert code == 0, err
    labels = [json.loads(line)["label"] for line in out.splitlines()]
    assert labels == trained_model("iris").expected[:5].tolist()  # all 5 rows, none lost


def test_partly_named_header_lists_missing_and_unknown_columns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle_args: list[str]
) -> None:
    names = trained_model("iris").feature_names
    source = tmp_path / "in.csv"
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([names[1], names[0], names[2], "petal wdth"])
        writer.writerows(_rows(3))
    code, out, err = run(capsys, "iris", "--input", str(source), *bundle_args)
    assert code == 2 and out == ""
    assert f"missing {names[3]}" in err and "unknown petal wdth" in err
    assert err.count("\n") == 1
