"""``edgefleet registry import``: an MLflow model as the next version (see mlflow_import)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from edgefleet.core.cli.output import emit, json_option


def add_import_command(group: click.Group, registry_option: Any, open_registry: Any) -> None:
    """Attach ``import`` to the ``registry`` group (kept here so MLflow stays optional)."""

    @group.command(name="import")
    @click.argument("source")
    @click.option("--name", required=True, help="Model name in the edgefleet registry.")
    @click.option(
        "--tracking-uri",
        default=None,
        help="MLflow tracking server or store (default: $MLFLOW_TRACKING_URI).",
    )
    @click.option(
        "--reference-data",
        type=click.Path(path_type=Path),
        help="Held-out rows (default: the model's MLflow input example).",
    )
    @click.option("--labels", type=click.Path(path_type=Path), help="Labels of the rows.")
    @registry_option
    @json_option
    def import_(
        source: str,
        name: str,
        tracking_uri: str | None,
        reference_data: Path | None,
        labels: Path | None,
        registry_dir: Path | None,
        as_json: bool,
    ) -> None:
        """Import an MLflow model: a folder with MLmodel, runs:/ID/PATH, models:/NAME/V or @ALIAS.

        Takes the sklearn, lightgbm, xgboost or onnx flavor, the input example
        (as reference rows), and the run's metrics, params, datasets and ids.
        Loading a pickled flavor runs code from it: import only models you trust.
        """
        from edgefleet.packager.registry.intake import prepare_registration
        from edgefleet.packager.registry.mlflow_import import ImportRequest, prepared_import

        request = ImportRequest(source, name, tracking_uri, reference_data, labels)
        with prepared_import(request) as registration:
            new = prepare_registration(registration)
        with open_registry(registry_dir, create=True) as reg:
            mv = reg.register(new, now=time.time())
        if new.notice:
            click.echo(new.notice, err=True)
        emit(as_json, mv.to_dict(), lambda _: f"imported {source} as {mv.ref}")
