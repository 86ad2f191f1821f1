"""``edgefleet agent predict MODEL --input FILE``: batch inference on the device.

Where the model comes from, in this order:

- ``--bundle FILE --trust trust.json``: a signed ``.efb`` (or an extracted
  bundle directory), verified before use;
- ``--state-dir DIR --trust trust.json``: the active version of MODEL in an
  agent state directory (the daemon's ``slots/`` and ``bundles/``);
- otherwise ``--config agent.toml``: the state directory, profile and trust
  store of the installed agent.

The whole input is read and validated before anything is written, so a bad
cell fails with one line naming it and leaves no output behind; a file given
with ``--output`` appears atomically when complete. Batch predictions are not
counted in telemetry (that is the daemon's serving path).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from edgefleet.agent.deploy.context import DEFAULT_CONFIG
from edgefleet.core.cli.output import emit, json_option, show_progress
from edgefleet.core.errors import UsageError

CHUNK_ROWS = 4096


def _profile_for(name: str | None, bundle_profile: Any) -> Any:
    from edgefleet.agent.model.runtime import ThreadSettings
    from edgefleet.core.errors import ProfileError
    from edgefleet.core.profiles import load_profile

    if name is not None:
        return load_profile(name)
    if isinstance(bundle_profile, str) and bundle_profile:
        with contextlib.suppress(ProfileError):
            return load_profile(bundle_profile)
    return ThreadSettings()


def _load_model(
    model: str,
    bundle: Path | None,
    state_dir: Path | None,
    trust_path: Path | None,
    config_path: Path,
    profile_name: str | None,
) -> Any:
    from edgefleet.agent.deploy.layout import StateLayout
    from edgefleet.agent.deploy.loader import BundleLoader
    from edgefleet.agent.deploy.slots import SlotTable
    from edgefleet.agent.errors import ModelNotFoundError
    from edgefleet.agent.model.runtime import load_bundle, read_manifest
    from edgefleet.core.manifest import Manifest
    from edgefleet.core.profiles import load_profile
    from edgefleet.core.trust import TrustStore

    if bundle is not None or state_dir is not None:
        if trust_path is None:
            raise UsageError("--bundle and --state-dir need --trust trust.json")
        trust = TrustStore.load(trust_path)
    if bundle is not None:
        bundle_profile = None
        if profile_name is None:
            # Only to pick the session threads; load_bundle verifies everything again.
            if bundle.is_dir():
                bundle_profile = read_manifest(bundle).target.get("profile")
            else:
                from edgefleet.core.bundle_verifier import BundleVerifier

                bundle_profile = BundleVerifier(trust).verify(bundle).manifest.target.get("profile")
        loaded = load_bundle(bundle, trust, _profile_for(profile_name, bundle_profile))
        if loaded.name != model:
            raise UsageError(f"{bundle} holds model {loaded.name!r}, not {model!r}")
        return loaded
    if state_dir is not None:
        layout = StateLayout(state_dir)
        active = SlotTable(layout).get(model).active
        if active is None:
            raise ModelNotFoundError(f"model {model!r} is not installed in {state_dir}")
        if profile_name is not None:
            profile = load_profile(profile_name)
        else:
            manifest: Manifest = read_manifest(layout.bundle_dir(active))
            profile = load_profile(str(manifest.target.get("profile", "")))
        return BundleLoader(layout, trust, profile).load(active)
    from edgefleet.agent.deploy.context import AgentContext

    ctx = AgentContext.load(config_path)
    active = SlotTable(ctx.layout).get(model).active
    if active is None:
        raise ModelNotFoundError(f"model {model!r} is not installed (see `edgefleet agent status`)")
    profile = load_profile(profile_name) if profile_name else ctx.profile
    return BundleLoader(ctx.layout, ctx.trust(), profile).load(active)


@contextlib.contextmanager
def _output_stream(output: Path | None) -> Iterator[IO[str]]:
    """stdout, or a temporary sibling of ``output`` renamed into place on success."""
    if output is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with _atomic(output, "w") as stream:
        yield stream


@contextlib.contextmanager
def _atomic(output: Path, mode: str) -> Iterator[Any]:
    """A temporary sibling of ``output`` (text ``w`` or binary ``wb``), renamed when complete."""
    directory = output.parent if str(output.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as e:
        raise UsageError(f"cannot write in {directory}: {e.strerror}") from e
    try:
        text = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as stream:  # type: ignore[call-overload]
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def _read_input(path: str, fmt: str, model: Any, no_header: bool) -> Any:
    from edgefleet.agent.model.tables import read_table

    if path == "-":
        return read_table(fmt, sys.stdin.buffer, model, no_header=no_header)
    try:
        with open(path, "rb") as stream:
            return read_table(fmt, stream, model, no_header=no_header)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e


def _read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e


def _predict_tensors(loaded: Any, path: str, fmt: str, out_fmt: str, output: Path | None) -> int:
    """A format-2 model: named tensors in (.npz or JSON lines), named tensors out."""
    import io

    from edgefleet.agent.model.tensors import (
        is_column_model,
        read_csv_columns,
        read_jsonl_samples,
        read_npz,
        sample_rows,
        write_npz,
    )

    if fmt == "csv" and is_column_model(loaded):
        # One input per DataFrame column: the header names them.
        text = io.StringIO(_read_bytes(path).decode("utf-8-sig", errors="strict"))
        predictions = [loaded.predict_inputs(read_csv_columns(text, loaded))]
    elif fmt == "npz":
        predictions = [loaded.predict_inputs(read_npz(_read_bytes(path), loaded))]
    elif fmt == "jsonl":
        text = io.StringIO(_read_bytes(path).decode("utf-8-sig", errors="strict"))
        predictions = [loaded.predict_inputs(feed) for feed in read_jsonl_samples(text, loaded)]
        if not predictions:
            raise UsageError("the input has no samples")
    else:
        raise UsageError(
            f"model {loaded.name!r} takes named tensors ({', '.join(loaded.input_names)}): "
            "give --input as .npz or JSON lines"
        )
    if out_fmt == "npz":
        if output is None:
            raise UsageError("--output-format npz needs --output FILE.npz")
        merged = _merge(loaded, predictions)
        with _atomic(output, "wb") as stream:
            write_npz(stream, loaded, merged)
        return len(merged)
    if out_fmt != "jsonl":
        raise UsageError(f"model {loaded.name!r} writes named tensors: use .npz or JSON lines")
    import json

    rows = 0
    with _output_stream(output) as stream:
        for prediction in predictions:
            for sample in _split(loaded, prediction):
                line = sample_rows(loaded, sample, rows)
                stream.write(json.dumps(line, separators=(",", ":")) + "\n")
                rows += 1
    return rows


def _merge(loaded: Any, predictions: list[Any]) -> Any:
    """One prediction whose outputs are the given ones concatenated along their batch axes."""
    import numpy as np

    if len(predictions) == 1:
        return predictions[0]
    io_schema = loaded.schema.io
    outputs = []
    for k, name in enumerate(loaded.output_names):
        axis = io_schema.output(name).batch_axis
        parts = [np.asarray(p.outputs[k]) for p in predictions]
        outputs.append(parts[-1] if axis is None else np.concatenate(parts, axis=axis))
    return _Outputs(outputs, sum(len(p) for p in predictions))


class _Outputs:
    """The part of a Prediction the writers read: outputs in order, and the sample count."""

    def __init__(self, outputs: list[Any], rows: int) -> None:
        self.outputs = outputs
        self._rows = rows

    def __len__(self) -> int:
        return self._rows


def _split(loaded: Any, prediction: Any) -> Iterator[Any]:
    """One single-sample view per sample of ``prediction`` (along each output's batch axis)."""
    import numpy as np

    io_schema = loaded.schema.io
    axes = [io_schema.output(name).batch_axis for name in loaded.output_names]
    for i in range(len(prediction)):
        outputs = [
            out if axis is None else np.take(np.asarray(out), [i], axis=axis)
            for out, axis in zip(prediction.outputs, axes, strict=True)
        ]
        yield _Outputs(outputs, 1)


@click.command()
@click.argument("model")
@click.option(
    "--input",
    "input_path",
    required=True,
    help="Rows to predict: CSV with a header, .npy, JSON lines, or .npz of named tensors "
    "('-' reads stdin).",
)
@click.option("--no-header", is_flag=True, help="The CSV has no header row: every line is data.")
@click.option(
    "--format",
    "input_format",
    type=click.Choice(["csv", "npy", "jsonl", "npz"]),
    default=None,
    help="Input format (default: from the file name).",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write predictions here (default: stdout).",
)
@click.option(
    "--output-format",
    type=click.Choice(["jsonl", "csv", "npz"]),
    default=None,
    help="Prediction format (default: csv for *.csv, npz for *.npz, else JSON lines).",
)
@click.option(
    "--bundle",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Use this signed bundle (.efb or extracted directory) instead of the installed model.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Use the active version in this agent state directory.",
)
@click.option(
    "--trust",
    "trust_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Trust store for --bundle / --state-dir.",
)
@click.option(
    "--profile",
    "profile_name",
    default=None,
    help="Device profile for the session threads (default: the agent's or the bundle's).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
)
@json_option
def predict(
    model: str,
    input_path: str,
    no_header: bool,
    input_format: str | None,
    output_path: Path | None,
    output_format: str | None,
    bundle: Path | None,
    state_dir: Path | None,
    trust_path: Path | None,
    profile_name: str | None,
    config_path: Path,
    as_json: bool,
) -> None:
    """Predict every row of an input file with MODEL and write one prediction per row."""
    from edgefleet.agent.model.tables import (
        INPUT_FORMATS,
        OUTPUT_FORMATS,
        RowWriter,
        format_for,
        prediction_rows,
    )

    if bundle is not None and state_dir is not None:
        raise UsageError("give either --bundle or --state-dir, not both")
    if as_json and output_path is None:
        raise UsageError("--json prints a summary on stdout: give --output for the predictions")
    if input_path == "-" and input_format is None:
        raise UsageError("reading stdin needs --format")
    fmt = format_for(input_path, input_format, (*INPUT_FORMATS, "npz"))
    suffix = output_path.suffix.lower() if output_path is not None else ""
    out_fmt = output_format or {".csv": "csv", ".npz": "npz"}.get(suffix, "jsonl")
    assert out_fmt in (*OUTPUT_FORMATS, "npz")
    started = time.monotonic()
    loaded = _load_model(model, bundle, state_dir, trust_path, config_path, profile_name)
    if loaded.schema.io is not None and (
        fmt == "npz" or out_fmt == "npz" or not _table_shaped(loaded)
    ):
        rows = _predict_tensors(loaded, input_path, fmt, out_fmt, output_path)
        _summary(as_json, output_path, loaded, rows, input_path, out_fmt, started)
        return
    if fmt == "npz" or out_fmt == "npz":
        raise UsageError(f"model {loaded.name!r} takes a table: give CSV, .npy or JSON lines")
    X = loaded.validate(_read_input(input_path, fmt, loaded, no_header))
    n = len(X)
    progress = show_progress(as_json)
    with _output_stream(output_path) as stream:
        writer = RowWriter(out_fmt, stream, loaded)
        bar = click.progressbar(length=n, label="predicting", file=sys.stderr) if progress else None
        try:
            for start in range(0, n, CHUNK_ROWS):
                chunk = X[start : start + CHUNK_ROWS]
                writer.write(prediction_rows(loaded, loaded.predict_validated(chunk), start))
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.render_finish()
    _summary(as_json, output_path, loaded, writer.rows, input_path, out_fmt, started)


def _table_shaped(loaded: Any) -> bool:
    """One 2-D input with a fixed width: CSV/.npy rows can feed it."""
    return loaded.schema.io is None or loaded.schema.io.is_table


def _summary(
    as_json: bool,
    output_path: Path | None,
    loaded: Any,
    rows: int,
    input_path: str,
    out_fmt: str,
    started: float,
) -> None:
    result = {
        "model": loaded.name,
        "version": loaded.version,
        "rows": rows,
        "input": input_path,
        "output": str(output_path) if output_path is not None else "-",
        "format": out_fmt,
        "seconds": round(time.monotonic() - started, 3),
    }
    if as_json or output_path is not None:
        emit(
            as_json,
            result,
            lambda r: (
                f"{r['rows']} predictions of {r['model']} v{r['version']} written to {r['output']}"
            ),
        )
