"""``edgefleet demo``: the whole story on one machine, in a few minutes."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.core.cli.output import emit, json_option
from edgefleet.core.errors import OperationalError
from edgefleet.demo.narration import Narrator
from edgefleet.demo.processes import interrupts_raise, signals_ignored
from edgefleet.demo.scenario import DemoOptions, DemoRun
from edgefleet.demo.summary import render_summary
from edgefleet.demo.workspace import MAX_DEVICES, MIN_DEVICES


@click.command()
@click.option(
    "--devices",
    type=click.IntRange(MIN_DEVICES, MAX_DEVICES),
    default=6,
    show_default=True,
    help="Agent processes to run (half per group).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run in this (new or empty) directory and keep it; default: a temporary one.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary work directory at the end.")
@json_option
def demo(devices: int, workdir: Path | None, keep: bool, as_json: bool) -> None:
    """Train, register, pack, publish and roll out a model to a local fleet of agents.

    Starts a hub with an embedded MQTT broker and DEVICES agent processes, rolls v1
    and then v2 out in gated phases while clients send requests, injects input drift
    on two devices and shows the hub finding it, then rolls out a broken v3 and shows
    the rollout aborting and rolling back by itself. Every process it starts is
    stopped at the end, also on Ctrl-C. Exit code 1 if the story did not hold.
    """
    narrator = Narrator(quiet=as_json)
    options = DemoOptions(devices=devices, workdir=workdir, keep=keep)
    with interrupts_raise():
        run = DemoRun(options, narrator)
        try:
            run.run()
        except KeyboardInterrupt:
            narrator.warn("interrupted: stopping every process the demo started")
            raise
        except Exception as e:
            run.keep_on_failure()
            # The one error line must say where to look, also with --json (no narration).
            e.args = (f"{e}; logs kept in {run.ws.logs}",)
            raise
        finally:
            with signals_ignored():
                run.close()
    result = run.summary.to_dict()
    emit(as_json, result, render_summary)
    if not result["ok"]:
        failed_checks = [name for name, ok in result["checks"].items() if not ok]
        raise OperationalError(f"the demo's story did not hold: {', '.join(failed_checks)}")
