"""The demo's story, step by step, with the real commands.

Every action a user would take is the real ``edgefleet`` command, run as a child
process (keys, registry, pack, hub device add / publish / rollout / drift / alerts,
hub serve, agent run); the demo only trains the models (scikit-learn, in process),
plays the clients (HTTP to each agent's endpoint) and reads the hub store to follow
what happens. The hub never imports the packager or the agent: those run as commands.

Invariants:

- every child is started through one :class:`ProcessSupervisor` and stopped in
  :meth:`DemoRun.close`, whatever happened (error, Ctrl-C, SIGTERM); every wait has
  a deadline (:mod:`~edgefleet.demo.harness`, the base of :class:`DemoRun`);
- the run produces one summary (:mod:`~edgefleet.demo.summary`), from what the hub
  and the agents report, not from what the demo asked for.

Parts: :mod:`~edgefleet.demo.harness` (work directory, children, commands,
waits), :mod:`~edgefleet.demo.setup_steps` (keys, hub, enrollment, agents,
training, register and pack, publish, traffic), and here the rollouts, the drift
check and the final state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from edgefleet.core.errors import OperationalError
from edgefleet.demo.console_probe import devices_seen
from edgefleet.demo.fleet_view import RolloutFacts
from edgefleet.demo.harness import DemoOptions
from edgefleet.demo.setup_steps import FleetSetupSteps
from edgefleet.demo.summary import (
    DemoSummary,
    RolloutOutcome,
    drift_verdicts,
    render_drift_table,
)
from edgefleet.demo.training import DRIFT_SCALE, MODEL_NAME, SIZE_FEATURES

__all__ = ["DemoOptions", "DemoRun"]  # the command imports both from here

# Deployment states a device rests in (the agent's deployment machine's final states).
SETTLED_STATES = frozenset({None, "idle", "committed", "rolled_back", "failed", "rejected"})


class DemoRun(FleetSetupSteps):
    """One run of the demo; use as a context manager so that :meth:`close` always runs."""

    # -- the story ---------------------------------------------------------------------

    def run(self) -> DemoSummary:
        self.say.say(f"work directory: {self.ws.root}")
        self.step_keys_and_hub()
        self.step_enroll()
        self.step_start_agents()
        versions, data = self.step_train()
        bundles = self.step_register_and_pack(versions)
        self.step_publish(bundles, (1, 2))
        self.step_wait_fleet_online()
        self.step_start_traffic(data)
        self.step_rollout(1, "all", "100%", self.options.v1_gates, "v1 to every device", 90.0)
        self.step_rollout(
            2, "all", self.options.v2_phases, self.options.v2_gates, "v2 in phases", 120.0
        )
        self.step_drift()
        self.step_publish(bundles, (3,))
        self.step_rollout(
            3, "all", self.options.v3_phases, self.options.v3_gates, "the broken v3", 60.0, True
        )
        self.step_final_state()
        return self.summary

    def step_rollout(
        self,
        version: int,
        selector: str,
        phases: str,
        gates: Sequence[str],
        title: str,
        timeout_s: float,
        broken: bool = False,
    ) -> RolloutFacts:
        self.say.step(f"Roll out {title}")
        if broken:
            self.say.say(
                "v3 expects a 31st feature the clients do not send: its smoke set passes "
                "on the device, live requests do not"
            )
        args = [
            "hub", "rollout", "create", f"{MODEL_NAME}:{version}", "--to", selector,
            "--phases", phases, "--config", str(self.ws.hub_config),
        ]  # fmt: skip
        for gate in gates:
            args += ["--gate", gate]
        created = self.edgefleet(f"rollout-v{version}", *args)
        rollout_id = str(created["rollout"])
        sizes = [str(s) for s in created.get("phase_sizes", [])]
        self.say.say(
            f"rollout {rollout_id}: {created.get('devices')} devices in {len(sizes)} phase(s), "
            f"cumulative {' → '.join(sizes)}"
        )
        seen_events = 0
        facts = self._view().rollout(rollout_id)

        def done() -> bool:
            nonlocal facts, seen_events
            facts = self._view().rollout(rollout_id)
            for _at, event, detail in facts.events[seen_events:]:
                self.say.say(f"hub: {event}: {detail}" if detail else f"hub: {event}")
            seen_events = len(facts.events)
            return facts.final

        def progress() -> str:
            counts = ", ".join(
                f"{facts.count(s)} {s}"
                for s in ("committed", "installing", "failed", "pending", "not_started")
                if facts.count(s)
            )
            phase = f"phase {facts.phase or '-'}/{facts.phase_count}"
            verdict = f", gates: {facts.verdict}" if facts.verdict else ""
            return f"{facts.state} {phase}: {counts}{verdict}"

        self.wait_for(f"rollout {rollout_id}", done, timeout_s, progress)
        outcome = RolloutOutcome.of(facts)
        self.summary.rollouts.append(outcome)
        if facts.state == "completed":
            self.say.ok(f"v{version} rollout completed on {len(facts.installs)} devices")
        else:
            self.say.warn(
                f"v{version} rollout {facts.state}: {outcome.abort_reason or facts.reason}"
            )
        if facts.state in ("completed", "rolled_back"):
            target = version if facts.state == "completed" else version - 1
            self._wait_versions(
                target, [d for d, s in facts.installs.items() if s != "not_started"]
            )
        if broken:
            self._narrate_device_failures(facts)
        return facts

    def _narrate_device_failures(self, facts: RolloutFacts) -> None:
        """What each device that did not keep the new version says about it."""
        devices = self._view().devices(MODEL_NAME)
        for device, install in sorted(facts.installs.items()):
            if install not in ("failed", "rolled_back", "timed_out"):
                continue
            d = devices[device]
            if d.deployment_version == facts.version and d.deployment_reason:
                self.say.say(f"{device} (agent): {d.deployment_state}: {d.deployment_reason}")
            else:
                self.say.say(f"{device} (hub): {install}: {facts.details.get(device) or '-'}")

    def _wait_versions(self, version: int, device_ids: list[str]) -> None:
        def on_version() -> int:
            devices = self._view().devices(MODEL_NAME)
            return sum(1 for d in device_ids if devices[d].version == version)

        self.wait_for(
            f"devices to report v{version}",
            lambda: on_version() == len(device_ids),
            60.0,
            lambda: f"{on_version()}/{len(device_ids)} devices report v{version} active",
        )
        self.say.ok(f"{len(device_ids)} devices report v{version} active")

    def step_drift(self) -> None:
        drifted = [d for d in self.fleet if d.drifts]
        names = " and ".join(d.device_id for d in drifted)
        self.say.step(f"Inject input drift on {names}")
        self.say.say(
            f"their scanners were recalibrated: {', '.join(SIZE_FEATURES)} now read "
            f"×{DRIFT_SCALE} (the other devices keep sending reference-like rows)"
        )
        assert self.pump is not None
        pump = self.pump
        before = pump.snapshot()
        # Drift must dominate what each drifted device sent to v2 since it got it, so the
        # device's whole v2 history (what `hub drift` merges) is judged drifted.
        need = {
            d.device_id: max(
                self.options.drift_rows,
                before[d.device_id].ok_by_version[2] * pump.rows_per_request,
            )
            for d in drifted
        }
        for d in drifted:
            pump.set_drift(d.device_id, True)

        def drifted_rows() -> dict[str, int]:
            snap = pump.snapshot()
            return {d: snap[d].drifted_rows for d in need}

        self.wait_for(
            "drifted traffic",
            lambda: all(drifted_rows()[d] >= n for d, n in need.items()),
            90.0,
            lambda: ", ".join(f"{d} {drifted_rows()[d]}/{n} drifted rows" for d, n in need.items()),
        )
        # The last windows close after window_s and reach the hub on the next sync tick.
        time.sleep(self.options.tuning.window_s + 2.0)
        self.say.ok("drifted rows served; asking the hub")
        args = [
            "hub", "drift", f"{MODEL_NAME}:2", "--by", "device", "--html", str(self.ws.report),
            "--config", str(self.ws.hub_config),
        ]  # fmt: skip
        result = self.edgefleet("drift", *args)
        verdicts = drift_verdicts(result)
        for _ in range(10):
            if all(verdicts.get(d.device_id, {}).get("verdict") == "drift" for d in drifted):
                break
            # A verdict needs enough rows at the hub; windows may still be on their way.
            time.sleep(2.0)
            result = self.edgefleet("drift", *args, show=False)
            verdicts = drift_verdicts(result)
        self.summary.drift = verdicts
        self.summary.drift_fleet = result.get("fleet", {})
        self.summary.report = str(self.ws.report)
        self.say.block(render_drift_table(verdicts, self.fleet))
        alerts = self.edgefleet("alerts", "hub", "alerts", "--config", str(self.ws.hub_config))
        self.summary.alerts = list(alerts.get("alerts", []))
        self.say.say(f"hub alerts: {len(self.summary.alerts)} ({alerts.get('open', 0)} open)")

    def step_final_state(self) -> None:
        self.say.step("Final state")

        def settled() -> bool:
            devices = self._view().devices(MODEL_NAME).values()
            return all(d.online and d.deployment_state in SETTLED_STATES for d in devices)

        # The last rollback may still be on its way through a device's deployment queue.
        try:
            self.wait_for("the devices to settle", settled, 20.0)
        except OperationalError as e:
            self.say.warn(str(e))
        self.summary.device_facts = self._view().devices(MODEL_NAME)
        if self.pump is not None:
            self.summary.traffic = {d: t.to_dict() for d, t in self.pump.snapshot().items()}
        try:
            alerts = self.edgefleet(
                "alerts", "hub", "alerts", "--config", str(self.ws.hub_config), show=False
            )
            self.summary.alerts = list(alerts.get("alerts", []))
        except OperationalError as e:
            self.say.warn(str(e))
        self.summary.counters = self._view().counters()
        self._check_console()

    def _check_console(self) -> None:
        """The dashboard's API, with the viewer token, lists the fleet (while the hub runs)."""
        if self.summary.console is None:
            return
        try:
            self.summary.console_devices = devices_seen(self.summary.console)
        except OperationalError as e:
            self.say.warn(f"fleet console: {e}")
            return
        self.say.say(
            f"fleet console at {self.summary.console.url}: the viewer token lists "
            f"{len(self.summary.console_devices)} devices"
        )
