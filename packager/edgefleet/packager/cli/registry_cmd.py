"""``edgefleet registry``: register, list, show, compare, lineage, alias, retire.

Every subcommand takes ``--registry DIR`` (else ``$EDGEFLEET_REGISTRY``, else
``./.edgefleet/registry``) and ``--json``. Only ``register`` creates a
registry; the others refuse a folder that is not one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.io_schema import OUTPUT_ROLES
from edgefleet.core.io_schema import TASKS as SCHEMA_TASKS
from edgefleet.packager.errors import InvalidNameError
from edgefleet.packager.registry.compare import compare_versions
from edgefleet.packager.registry.records import ModelVersion
from edgefleet.packager.registry.refs import parse_pairs, parse_ref, parse_versioned_ref
from edgefleet.packager.registry.store import ENV_VAR, Registry, resolve_registry_path

F = TypeVar("F", bound=Callable[..., Any])


def registry_option(f: F) -> F:
    return click.option(
        "--registry",
        "registry_dir",
        type=click.Path(file_okay=True, dir_okay=True, path_type=Path),
        envvar=ENV_VAR,
        default=None,
        help=f"Registry folder (default: ${ENV_VAR}, else ./.edgefleet/registry).",
    )(f)


def open_registry(registry_dir: Path | None, *, create: bool = False) -> Registry:
    return Registry.open(resolve_registry_path(registry_dir), create=create)


@click.group(name="registry")
def registry() -> None:
    """Model registry: versions, metrics, lineage and aliases."""


# -- register -------------------------------------------------------------------


def _parse_date(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise InvalidNameError(
            f"--trained-at expects an ISO date like 2024-05-01, got {text!r}"
        ) from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@registry.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name (letters, digits, '.', '_', '-').")
@click.option("--metric", "metrics", multiple=True, metavar="K=V", help="A numeric metric.")
@click.option("--param", "params", multiple=True, metavar="K=V", help="A training parameter.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="A free-form tag.")
@click.option("--dataset", type=click.Path(path_type=Path), help="Training dataset (hashed).")
@click.option("--parent", metavar="N:V", help="The version this one was derived from.")
@click.option(
    "--reference-data",
    type=click.Path(path_type=Path),
    help="Held-out rows (.npz, .npy or .csv with a header) for validation and drift.",
)
@click.option("--labels", type=click.Path(path_type=Path), help="Labels of the reference rows.")
@click.option("--trained-at", metavar="DATE", help="Training date (default: the file's mtime).")
@click.option(
    "--task",
    type=click.Choice(SCHEMA_TASKS),
    default=None,
    help="What the model does (ONNX files; default: from its metadata, else raw).",
)
@click.option(
    "--class-names", metavar="A,B,C|FILE", help="Class names, comma-separated or one per line."
)
@click.option(
    "--output-role",
    "output_roles",
    multiple=True,
    metavar="NAME=ROLE",
    help=f"Role of an output ({'|'.join(r for r in OUTPUT_ROLES if r != 'value')}).",
)
@click.option(
    "--state", "state", multiple=True, metavar="IN=OUT", help="Recurrent state input=output."
)
@click.option(
    "--batch-axis",
    "batch_axes",
    multiple=True,
    metavar="NAME=K|none",
    help="Batch axis of an input or output (default 0 when its first dimension is dynamic).",
)
@registry_option
@json_option
def register(
    path: Path,
    name: str,
    metrics: tuple[str, ...],
    params: tuple[str, ...],
    tags: tuple[str, ...],
    dataset: Path | None,
    parent: str | None,
    reference_data: Path | None,
    labels: Path | None,
    trained_at: str | None,
    task: str | None,
    class_names: str | None,
    output_roles: tuple[str, ...],
    state: tuple[str, ...],
    batch_axes: tuple[str, ...],
    registry_dir: Path | None,
    as_json: bool,
) -> None:
    """Register a scikit-learn pickle/joblib or an ONNX file as the next version of NAME.

    Loading a pickle runs code from it: register only files you trust.
    """
    from edgefleet.packager.registry.intake import RegistrationInput, prepare_registration

    request = RegistrationInput(
        model_path=path,
        name=name,
        metrics={k: float(v) for k, v in parse_pairs(metrics, "--metric", numeric=True).items()},
        params=parse_pairs(params, "--param"),
        tags=parse_pairs(tags, "--tag"),
        dataset_path=dataset,
        parent=parent,
        reference_path=reference_data,
        labels_path=labels,
        trained_at=_parse_date(trained_at),
        task=task,
        class_names=parse_class_names(class_names),
        output_roles=dict(tensor_pairs(output_roles, "--output-role")),
        state=tuple(tensor_pairs(state, "--state")),
        batch_axes=parse_batch_axes(batch_axes),
    )
    # Validate every input before the registry folder is created or touched.
    new = prepare_registration(request)
    with open_registry(registry_dir, create=True) as reg:
        mv = reg.register(new, now=time.time())
    if new.notice:
        click.echo(new.notice, err=True)
    emit(as_json, mv.to_dict(), lambda _: _registered_line(mv))


def parse_class_names(text: str | None) -> tuple[str, ...] | None:
    """``a,b,c`` or a file with one name per line (blank lines skipped)."""
    if text is None:
        return None
    path = Path(text)
    if "," not in text and path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidNameError(f"--class-names: cannot read {path}: {e}") from e
    else:
        names = [part.strip() for part in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise InvalidNameError("--class-names names no class")
    if len(set(names)) != len(names):
        raise InvalidNameError("--class-names lists a name twice")
    return tuple(names)


def tensor_pairs(items: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` pairs whose NAME is an ONNX tensor name (any text but '=')."""
    out: list[tuple[str, str]] = []
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name or not value:
            raise InvalidNameError(f"{option} expects NAME=VALUE, got {item!r}")
        if any(name == seen for seen, _ in out):
            raise InvalidNameError(f"{option} {name} given twice")
        out.append((name, value))
    return out


def parse_batch_axes(items: tuple[str, ...]) -> dict[str, int | None]:
    """``NAME=K`` or ``NAME=none`` pairs."""
    out: dict[str, int | None] = {}
    for name, value in tensor_pairs(items, "--batch-axis"):
        text = value.strip().lower()
        if text == "none":
            out[name] = None
        elif text.isdigit():
            out[name] = int(text)
        else:
            raise InvalidNameError(f"--batch-axis {name}={value}: expected an axis number or none")
    return out


def _registered_line(mv: ModelVersion) -> str:
    if mv.io_schema is not None:
        ins = ", ".join(
            f"{i['name']} {i['dtype']}{list(i['shape'])}" for i in mv.io_schema["inputs"]
        )
        head = f"registered {mv.ref} ({mv.estimator}, {mv.task}; inputs {ins}; "
        tail = f"reference {mv.reference.rows} samples)" if mv.reference else "no reference data)"
        return head + tail
    parts = [f"registered {mv.ref}", f"{mv.estimator}, {mv.task}, {mv.n_features} features"]
    if mv.reference:
        labelled = "with labels" if mv.reference.y_sha256 else "without labels"
        parts.append(f"reference {mv.reference.rows} rows {labelled}")
    else:
        parts.append("no reference data (needed to pack)")
    return parts[0] + " (" + "; ".join(parts[1:]) + ")"


# -- list / show ---------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) if len(value) <= 12 else f"{len(value)} items"
    return str(value)


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items())) or "-"


@registry.command(name="list")
@click.argument("name", required=False)
@registry_option
@json_option
def list_versions(name: str | None, registry_dir: Path | None, as_json: bool) -> None:
    """List registered versions (of NAME only, if given)."""
    with open_registry(registry_dir) as reg:
        versions = reg.versions(name)
    result = {"versions": [mv.to_dict() for mv in versions]}

    def render(_: Any) -> str:
        if not versions:
            return "no models registered"
        rows = [
            [
                mv.ref,
                mv.status,
                mv.task,
                mv.estimator,
                (mv.to_dict()["created_at"] or "-"),
                ", ".join(mv.aliases) or "-",
                _metrics_text(mv.metrics),
            ]
            for mv in versions
        ]
        header = ["MODEL", "STATUS", "TASK", "ESTIMATOR", "CREATED", "ALIASES", "METRICS"]
        return _table(header, rows)

    emit(as_json, result, render)


def _features_text(mv: ModelVersion) -> str:
    names = [f.name for f in mv.features]
    shown = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"
    categorical = sum(1 for f in mv.features if f.kind == "categorical")
    kinds = f"{categorical} categorical" if categorical else "all numeric"
    return f"{mv.n_features} ({shown}; {kinds})"


def _tensor_text(t: dict[str, Any]) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in t["shape"])
    axis = "" if t.get("batch_axis") is None else f", batch axis {t['batch_axis']}"
    return f"{t['name']} {t['dtype']}[{dims}] ({t['role']}{axis})"


def _io_lines(mv: ModelVersion) -> list[str]:
    """The features of a table, or the named inputs and outputs of a tensor model."""
    if mv.io_schema is None:
        return [f"  features      {_features_text(mv)}"]
    schema = mv.io_schema
    lines = [f"  input         {_tensor_text(t)}" for t in schema["inputs"]]
    lines += [f"  output        {_tensor_text(t)}" for t in schema["outputs"]]
    lines += [f"  state         {p['input']} <- {p['output']}" for p in schema.get("state", [])]
    return lines


def _framework_text(mv: ModelVersion) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(mv.framework_versions.items()))
    if mv.framework in mv.framework_versions:
        return versions
    return f"{mv.framework}: {versions}" if versions else mv.framework


def _version_text(mv: ModelVersion) -> str:
    d = mv.to_dict()
    lines = [
        f"{mv.ref}  [{mv.status.upper()}]" if mv.retired else mv.ref,
        f"  estimator     {mv.estimator} ({_framework_text(mv)})",
        f"  task          {mv.task}" + (f", labels {_fmt(mv.labels)}" if mv.labels else ""),
        *_io_lines(mv),
        f"  artifact      {mv.artifact_format}, {mv.artifact_size} bytes, sha256 {mv.artifact_sha256[:16]}",
        f"  created       {d['created_at']} by {mv.created_by}"
        + (f", commit {mv.git_commit[:12]}" if mv.git_commit else ""),
        f"  trained       {d['trained_at'] or '-'}",
        f"  metrics       {_metrics_text(mv.metrics)}",
        f"  params        {_metrics_text(mv.params)}",
        f"  tags          {_metrics_text(mv.tags)}",
        f"  parent        {mv.parent or '-'}",
        f"  aliases       {', '.join(mv.aliases) or '-'}",
    ]
    if mv.dataset:
        ds = mv.dataset
        lines.append(
            f"  dataset       {ds.path} (sha256 {ds.sha256[:16]}, rows {_fmt(ds.rows)}, "
            f"columns {_fmt(ds.columns)})"
        )
    if mv.reference:
        ref = mv.reference
        labelled = "with labels" if ref.y_sha256 else "without labels"
        if mv.io_schema is not None:
            lines.append(f"  reference     {ref.rows} samples {labelled}")
        else:
            lines.append(f"  reference     {ref.rows} rows x {ref.columns} columns {labelled}")
    else:
        lines.append("  reference     none (register with --reference-data to pack)")
    if mv.retired:
        lines.append(f"  retired       {d['retired_at']}: {mv.retired_reason or 'no reason given'}")
    return "\n".join(lines)


@registry.command()
@click.argument("ref")
@registry_option
@json_option
def show(ref: str, registry_dir: Path | None, as_json: bool) -> None:
    """Show one version (N:V or N@ALIAS), or every version of N."""
    parsed = parse_ref(ref)
    with open_registry(registry_dir) as reg:
        if parsed.version is None and parsed.alias is None:
            versions = reg.versions(parsed.name)
            result: dict[str, Any] = {
                "name": parsed.name,
                "versions": [mv.to_dict() for mv in versions],
                "aliases": {a: mv.version for mv in versions for a in mv.aliases},
            }
            emit(as_json, result, lambda _: "\n\n".join(_version_text(mv) for mv in versions))
            return
        mv = reg.get(parsed)
    emit(as_json, mv.to_dict(), lambda _: _version_text(mv))


# -- compare / lineage -----------------------------------------------------------------


@registry.command()
@click.argument("ref_a")
@click.argument("ref_b")
@click.option(
    "--evidence",
    "evidence_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Field evidence JSON (edgefleet hub evidence MODEL:V --json), one per version.",
)
@registry_option
@json_option
def compare(
    ref_a: str,
    ref_b: str,
    evidence_files: tuple[Path, ...],
    registry_dir: Path | None,
    as_json: bool,
) -> None:
    """Compare two versions side by side (metrics with deltas B - A), with field evidence."""
    with open_registry(registry_dir) as reg:
        a = reg.get(parse_ref(ref_a))
        b = reg.get(parse_ref(ref_b))
    result = compare_versions(a, b)
    if evidence_files:
        from edgefleet.packager.registry.evidence import evidence_rows

        result["evidence"] = evidence_rows((a.ref, b.ref), evidence_files)

    def render(_: Any) -> str:
        out = []
        for section, with_delta in (
            ("metrics", True),
            ("evidence", True),
            ("params", False),
            ("tags", False),
            ("metadata", False),
        ):
            rows = result.get(section)
            if not rows:
                continue
            header = [section.upper(), a.ref, b.ref, "DELTA" if with_delta else "CHANGED"]
            body = []
            for row in rows:
                last = _delta(row.get("delta")) if with_delta else ("*" if row["changed"] else "")
                a_text, b_text = _fmt(row["a"]), _fmt(row["b"])
                if row["key"].endswith("sha256"):
                    a_text, b_text = a_text[:16], b_text[:16]
                body.append([row["key"], a_text, b_text, last])
            out.append(_table(header, body))
        return "\n\n".join(out)

    emit(as_json, result, render)


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.6g}"


@registry.command()
@click.argument("ref")
@registry_option
@json_option
def lineage(ref: str, registry_dir: Path | None, as_json: bool) -> None:
    """The chain of parents of a version, with their datasets."""
    with open_registry(registry_dir) as reg:
        chain = reg.lineage(parse_ref(ref))
    result = {
        "ref": chain[0].ref,
        "chain": [
            {
                "ref": mv.ref,
                "status": mv.status,
                "created_at": mv.to_dict()["created_at"],
                "estimator": mv.estimator,
                "dataset": mv.dataset.to_dict() if mv.dataset else None,
                "params": dict(mv.params),
                "metrics": dict(mv.metrics),
                "parent": mv.parent,
            }
            for mv in chain
        ],
    }

    def render(_: Any) -> str:
        lines = [" <- ".join(mv.ref for mv in chain)]
        for mv in chain:
            ds = mv.dataset
            data = (
                f"dataset {ds.path} sha256 {ds.sha256[:16]} rows {_fmt(ds.rows)}"
                if ds
                else "no dataset"
            )
            retired = " [RETIRED]" if mv.retired else ""
            lines.append(
                f"  {mv.ref}{retired}: {mv.estimator}, {data}, {_metrics_text(mv.metrics)}"
            )
        return "\n".join(lines)

    emit(as_json, result, render)


# -- alias / retire -------------------------------------------------------------------


@registry.command()
@click.argument("ref")
@click.argument("alias_name", metavar="ALIAS")
@registry_option
@json_option
def alias(ref: str, alias_name: str, registry_dir: Path | None, as_json: bool) -> None:
    """Point NAME@ALIAS at version N:V (moving the alias if it exists)."""
    parsed = parse_versioned_ref(ref)
    with open_registry(registry_dir) as reg:
        mv = reg.set_alias(parsed, alias_name, now=time.time())
    result = {"alias": f"{mv.name}@{alias_name}", "ref": mv.ref, "version": mv.version}
    emit(as_json, result, lambda r: f"{r['alias']} -> {r['ref']}")


@registry.command()
@click.argument("ref")
@click.option("--reason", help="Why the version is retired (shown everywhere).")
@registry_option
@json_option
def retire(ref: str, reason: str | None, registry_dir: Path | None, as_json: bool) -> None:
    """Retire version N:V: it stays visible but can no longer be packed or aliased."""
    parsed = parse_versioned_ref(ref)
    with open_registry(registry_dir) as reg:
        mv = reg.retire(parsed, reason=reason, now=time.time())
    emit(
        as_json,
        mv.to_dict(),
        lambda _: f"retired {mv.ref}" + (f" ({mv.retired_reason})" if mv.retired_reason else ""),
    )


# -- import (MLflow) ---------------------------------------------------------------
from edgefleet.packager.cli.import_cmd import add_import_command  # noqa: E402

add_import_command(registry, registry_option, open_registry)
