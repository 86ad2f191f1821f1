"""``edgefleet pack N[:V|@ALIAS] --profile P --key KEY [--key ...]``: a signed bundle plus a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option, show_progress
from edgefleet.packager.cli.registry_cmd import open_registry, registry_option
from edgefleet.packager.quantize import QUANTIZE_CHOICES
from edgefleet.packager.registry.refs import parse_ref


@click.command(name="pack")
@click.argument("ref", metavar="N[:V|@ALIAS]")
@click.option("--profile", required=True, help="Device profile name or .toml path.")
@click.option(
    "--key",
    "key_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Private signing key (from 'edgefleet keys generate'); repeat to sign with several.",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZE_CHOICES),
    default="auto",
    show_default=True,
    help="auto measures every applicable variant and keeps the smallest that qualifies.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=0.01,
    show_default=True,
    help="Largest absolute metric drop a quantized variant may have against float32 "
    "(accuracy for classifiers registered with --labels).",
)
@click.option(
    "--min-cosine",
    type=float,
    default=0.99,
    show_default=True,
    help="Tensor models: lowest cosine similarity per output a quantized variant may have.",
)
@click.option(
    "--max-abs-diff",
    type=float,
    default=None,
    help="Tensor models: largest absolute difference any float output of a quantized "
    "variant may have against float32 (default: not gated; the cosine decides).",
)
@click.option(
    "--allow-batch-dependent",
    is_flag=True,
    help="Tensor models: accept a variant whose output for a sample depends on the rest of "
    "its batch (dynamic int8 scales activations per batch).",
)
@click.option(
    "--preprocess",
    default=None,
    metavar="image:layout=nhwc,dtype=uint8,mean=M1:M2:M3,std=S1:S2:S3|audio:dtype=int16",
    help="Tensor models: prepend Cast/Transpose/normalize to the image input (mean and std "
    "in pixel units, one per channel), or Cast/scale to an audio input, so devices send "
    "raw pixels or PCM.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for the bundle (created if missing).",
)
@click.option(
    "--profiles",
    "profiles_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Extra folder of device profiles (searched first).",
)
@registry_option
@json_option
def pack(
    ref: str,
    profile: str,
    key_paths: tuple[Path, ...],
    quantize: str,
    max_accuracy_drop: float,
    min_cosine: float,
    max_abs_diff: float | None,
    allow_batch_dependent: bool,
    preprocess: str | None,
    out_dir: Path,
    profiles_dir: Path | None,
    registry_dir: Path | None,
    as_json: bool,
) -> None:
    """Convert, quantize, validate and sign a registered model for one device profile."""
    from edgefleet.packager.build import PackRequest
    from edgefleet.packager.build import pack as build_pack

    request = PackRequest(
        ref=parse_ref(ref),
        profile=profile,
        key_paths=key_paths,
        out_dir=out_dir,
        quantize=quantize,
        max_accuracy_drop=max_accuracy_drop,
        profiles_dir=profiles_dir,
        min_cosine=min_cosine,
        max_abs_diff=max_abs_diff,
        allow_batch_dependent=allow_batch_dependent,
        preprocess=preprocess,
    )
    verbose = show_progress(as_json)

    def progress(message: str) -> None:
        if verbose:
            click.echo(f"... {message}", err=True)

    with open_registry(registry_dir) as reg:
        result = build_pack(
            reg, request, now=time.time(), clock=time.perf_counter, progress=progress
        )
    emit(as_json, result.to_dict(), render_report)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def render_tensor_report(result: dict[str, Any]) -> str:
    """The report of a format-2 (tensor) bundle: fidelity per output, smoke set, budgets."""
    model, target = result["model"], result["target"]
    q, v = result["quantization"], result["validation"]
    lines = [
        f"packed {model['name']}:{model['version']} ({model['task']}) for {target['profile']} "
        f"-> {result['bundle']}",
        f"  bundle        {_size(result['size'])} (model {_size(v['size_bytes'])}), "
        f"sha256 {result['sha256']}",
        f"  signed by     {', '.join(k[:16] for k in result.get('signer_keyids', []))}",
        f"  quantization  {q['method']}: {q['reason']}",
        *_tensor_variant_lines(q),
        f"  graph         {_optimisation_line(v.get('graph_optimization'))}",
        f"  fidelity      packaged vs {v['fidelity']['compared_with']} on "
        f"{v['fidelity']['samples']} samples",
    ]
    for name, row in v["fidelity"]["outputs"].items():
        if "max_abs_diff" in row:
            lines.append(
                f"    {name}: max abs diff {row['max_abs_diff']:.3g}, "
                f"max rel err {row['max_rel_err']:.3g}, cosine {row['cosine']:.6f}"
            )
        else:
            lines.append(f"    {name}: {'equal' if row.get('equal') else 'DIFFERENT'}")
    smoke = v["smoke"]
    generated = ", ".join(smoke["generated_inputs"]) or "none"
    lines += [
        f"  smoke set     {smoke['samples']} samples, {_size(smoke['bytes'])}, "
        f"regenerated on the device: {generated}",
        f"  drift         {_drift_line(v['drift'])}",
        f"  took          {result['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def _optimisation_line(info: Any) -> str:
    if not isinstance(info, dict):
        return "not optimised offline"
    if not info.get("applied"):
        return f"packed as registered ({info.get('level')} optimisation: {info.get('reason')})"
    return (
        f"optimised offline at onnxruntime's {info['level']} level (portable across CPUs and "
        f"providers): {info['nodes_before']} -> {info['nodes_after']} nodes, "
        f"{_size(info['bytes_before'])} -> {_size(info['bytes_after'])}"
    )


def _drift_line(drift: Any) -> str:
    if not isinstance(drift, dict):
        return str(drift)
    if drift.get("reference") is None:
        return f"no drift reference: {drift.get('reason')}"
    outputs = ", class distribution" if drift.get("outputs") else ""
    return (
        f"{drift['reference']}: {drift['features']} features per sample{outputs} "
        f"from {drift['samples']} samples, {_size(drift['bytes'])}"
    )


def _tensor_variant_lines(q: dict[str, Any]) -> list[str]:
    lines = []
    for row in q.get("variants", []):
        cosines = [o["cosine"] for o in row.get("outputs", {}).values() if "cosine" in o]
        cosine = f", min cosine {min(cosines):.4f}" if cosines else ""
        note = f"  {row['reason']}" if row.get("reason") else ""
        p50 = f", p50 {row['p50_ms']:.3f} ms" if row.get("p50_ms") is not None else ""
        top1 = [
            o["top1_agreement"] for o in row.get("outputs", {}).values() if "top1_agreement" in o
        ]
        agree = f", top-1 {min(top1):.3f}" if top1 else ""
        if row.get("accuracy") is not None:
            agree += f", accuracy {row['accuracy']:.4f}"
        name = row["variant"] + (f"/{row['calibration']}" if row.get("calibration") else "")
        lines.append(
            f"    {name:<18} {row['status']:<9} {_size(row.get('size_bytes')):>10}"
            f"{cosine}{agree}{p50}{note}"
        )
    for name, why in sorted(q.get("not_applicable", {}).items()):
        lines.append(f"    {name:<18} n/a       {why}")
    if q.get("latency_measured_on"):
        lines.append(f"    latency measured on {q['latency_measured_on']}")
    return lines


def _measured_on(machine: str, target: dict[str, Any]) -> str:
    """Where latency was measured, against the target's architecture."""
    from edgefleet.packager.selection import arch_name

    arch = target.get("arch", "?")
    if arch_name(machine) == arch:
        return f"measured on this {machine} machine, the target's architecture, not the device"
    return f"measured on {machine}: this machine's architecture, not the target's {arch}"


def render_report(result: dict[str, Any]) -> str:
    """The readable pack report (the same facts as ``--json``)."""
    if result.get("format_version", 1) > 1:
        return render_tensor_report(result)
    model, target = result["model"], result["target"]
    q, v = result["quantization"], result["validation"]
    metric = v["metric"]
    lines = [
        f"packed {model['name']}:{model['version']} for {target['profile']} -> {result['bundle']}",
        f"  bundle        {_size(result['size'])}, sha256 {result['sha256']}",
        f"  signed by     {', '.join(k[:16] for k in result.get('signer_keyids', []))}",
        f"  quantization  {q['method']} ({q['format']}): {q['reason']}",
        "  variants",
    ]
    header = f"    {'VARIANT':<9} {'STATUS':<9} {'SIZE':>10} {metric.upper()[:12]:>12} "
    header += f"{'DROP':>7} {'AGREE':>7} {'P50 ms':>8} {'P95 ms':>8}  NOTE"
    lines.append(header)
    for row in q["variants"]:
        agree = "-" if row["label_agreement"] is None else f"{row['label_agreement']:.1%}"
        lines.append(
            f"    {row['variant']:<9} {row['status']:<9} {_size(row['size_bytes']):>10} "
            f"{_num(row['metric']):>12} {_num(row['metric_drop']):>7} {agree:>7} "
            f"{_num(row['p50_ms'], '.3f'):>8} {_num(row['p95_ms'], '.3f'):>8}  {row['reason']}"
        )
    for name, why in sorted(q["not_applicable"].items()):
        lines.append(f"    {name:<9} n/a       {why}")
    fidelity = v["fidelity"]
    lines += [
        f"  validation    {metric} original {_num(v['original'][metric])}, packaged "
        f"{_num(v['packaged'][metric])} on {v['dataset']['rows']} held-out rows; "
        f"label agreement {_num(v['label_agreement'], '.2%')}; "
        f"max probability diff {_num(v['max_probability_diff'], '.3g')}",
        f"  fidelity      float32 ONNX vs {fidelity['compared_with']} on {fidelity['rows']} "
        f"rows: label agreement {_num(fidelity['label_agreement'], '.2%')}, "
        f"max probability diff {_num(fidelity['max_probability_diff'], '.3g')}, "
        f"max value diff {_num(fidelity['max_value_diff'], '.3g')}",
        f"  latency       p50 {_num(v['latency_ms']['p50'], '.3f')} ms, p95 "
        f"{_num(v['latency_ms']['p95'], '.3f')} ms (1 row, {v['latency_ms']['intra_op_threads']} "
        f"intra-op threads, {_measured_on(v['latency_ms']['measured_on'], target)})",
        f"  smoke set     {v['smoke']['rows']} rows, atol {v['smoke']['atol']:.3g}",
        f"  took          {result['seconds']:.1f} s",
    ]
    return "\n".join(lines)
