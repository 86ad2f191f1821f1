"""Output helpers shared by every command: one JSON object with ``--json``,
readable text otherwise, progress only on a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout and nothing else."
)


def emit(as_json: bool, result: Any, render: Callable[[Any], str] | None = None) -> None:
    """Print ``result`` as one JSON object (``--json``) or as text from ``render``."""
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
    elif render is not None:
        click.echo(render(result))
    else:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


def show_progress(as_json: bool) -> bool:
    """Progress is shown on a terminal only, never with ``--json``."""
    return not as_json and sys.stderr.isatty()
