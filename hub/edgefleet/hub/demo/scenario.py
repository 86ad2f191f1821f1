"""The demo's story, step by step, with the real commands.

Every action a user would take is the real ``edgefleet`` command, run as a child
process (keys, registry, pack, hub device add / publish / rollout / drift / alerts,
hub serve, agent run); the demo only trains the models (scikit-learn, in process),
plays the clients (HTTP to each agent's endpoint) and reads the hub store to follow
what happens. The hub never imports the packager or the agent: those run as commands.

Invariants:

- every child is started through one :class:`ProcessSupervisor` and stopped in
  :meth:`DemoRun.close`, whatever happened (error, Ctrl-C, SIGTERM);
- every wait has a deadline and checks that the hub and the agents are still alive,
  so a dead process ends the demo with its log tail instead of a hang;
- the run produces one summary (:mod:`~edgefleet.hub.demo.summary`), from what the hub
  and the agents report, not from what the demo asked for.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.core.errors import OperationalError
from edgefleet.hub.demo.fleet_view import DeviceFacts, FleetView, RolloutFacts
from edgefleet.hub.demo.narration import Narrator
from edgefleet.hub.demo.processes import (
    ManagedProcess,
    ProcessSupervisor,
    edgefleet_argv,
)
from edgefleet.hub.demo.summary import (
    DemoSummary,
    RolloutOutcome,
    drift_verdicts,
    render_drift_table,
)
from edgefleet.hub.demo.traffic import TrafficPump
from edgefleet.hub.demo.training import (
    DRIFT_SCALE,
    MODEL_NAME,
    SIZE_FEATURES,
    DemoData,
    TrainedVersion,
    train_versions,
)
from edgefleet.hub.demo.workspace import (
    AgentTuning,
    Workspace,
    plan_fleet,
    prepare_root,
    tune_agent_config,
    write_hub_files,
)

POLL_S = 0.5
# Deployment states a device rests in (the agent's deployment machine's final states).
SETTLED_STATES = frozenset({None, "idle", "committed", "rolled_back", "failed", "rejected"})
PARALLEL_JOBS = 2
HUB_TICK_S = 0.5


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 6
    workdir: Path | None = None
    keep: bool = False
    requests_per_s: float = 8.0
    tuning: AgentTuning = field(default_factory=AgentTuning)
    # Gates of the demo's rollouts: seconds instead of the production minutes.
    v1_gates: tuple[str, ...] = ("bake=2s", "min_inferences=20", "device_timeout=90s")
    v2_phases: str = "1,50%,100%"
    v2_gates: tuple[str, ...] = (
        "bake=3s",
        "min_inferences=40",
        "max_error_rate=0.02",
        "max_latency_p95_ratio=3",
        "device_timeout=90s",
    )
    v3_phases: str = "1,100%"
    v3_gates: tuple[str, ...] = ("bake=3s", "min_inferences=40", "device_timeout=90s")
    drift_rows: int = 1500  # drifted rows each drifted device must answer before the check


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class DemoRun:
    """One run of the demo; use as a context manager so that :meth:`close` always runs."""

    def __init__(self, options: DemoOptions, narrator: Narrator) -> None:
        self.options = options
        self.say = narrator
        self.started = time.monotonic()
        self.fleet = plan_fleet(options.devices)
        self._own_root = options.workdir is None
        if options.workdir is None:
            root = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
        else:
            root = options.workdir.resolve()
            prepare_root(root)
        self.ws = Workspace(root)
        self.procs = ProcessSupervisor(self.ws.logs, run_marker=str(root))
        self.hub: ManagedProcess | None = None
        self.agents: dict[str, ManagedProcess] = {}
        self.pump: TrafficPump | None = None
        self.view: FleetView | None = None
        self.summary = DemoSummary(workdir=str(root), devices=self.fleet)

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> DemoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keep_on_failure(self) -> None:
        """A failed run keeps its work directory: the logs say what went wrong."""
        self._own_root = False

    def close(self) -> None:
        """Stop the clients, the agents, then the hub; remove the work dir unless kept."""
        if self.pump is not None:
            self.pump.stop()
            self.pump = None
        if self.view is not None:
            self.view.close()
            self.view = None
        agents = [a for a in self.agents.values() if a.running()]
        if agents:
            self.say.say(f"stopping {len(agents)} agents and the hub")
        self.procs.stop_all(grace_s=15.0)
        self.summary.wall_time_s = round(time.monotonic() - self.started, 1)
        if self._own_root and not self.options.keep:
            self._keep_report_outside()
            shutil.rmtree(self.ws.root, ignore_errors=True)
            self.summary.workdir = None

    def _keep_report_outside(self) -> None:
        # The HTML report is the one file worth keeping when the work dir goes away.
        if not self.ws.report.exists():
            return
        fd, name = tempfile.mkstemp(prefix="edgefleet-demo-drift-", suffix=".html")
        with open(fd, "wb") as out:
            out.write(self.ws.report.read_bytes())
        self.summary.report = name

    # -- running commands and waiting ---------------------------------------------------

    def _show(self, argv: Sequence[str]) -> list[str]:
        prefix = f"{self.ws.root}/"
        return ["edgefleet", *(a.replace(prefix, "") for a in argv)]

    def edgefleet(self, name: str, *args: str, show: bool = True, timeout_s: float = 120.0) -> Any:
        """Run ``edgefleet ARGS --json`` and return its JSON result."""
        if show:
            self.say.command(self._show(args))
        result = self.procs.run(name, edgefleet_argv(*args, "--json"), timeout_s)
        return self._parse(name, args, result.returncode, result.stdout, result.log_path)

    def _parse(self, name: str, args: Sequence[str], code: int, out: str, log: Path) -> Any:
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            why = tail[-1] if tail else f"exit code {code}"
            raise OperationalError(f"`{' '.join(self._show(args))}` failed ({why}); log: {log}")
        try:
            return json.loads(out)
        except ValueError as e:
            raise OperationalError(f"{name}: no JSON on stdout; log: {log}") from e

    def _check_alive(self) -> None:
        for proc in [self.hub, *self.agents.values()]:
            if proc is not None and not proc.running():
                raise OperationalError(
                    f"{proc.name} exited with code {proc.popen.returncode}; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )

    def wait_for(
        self,
        what: str,
        done: Callable[[], bool],
        timeout_s: float,
        progress: Callable[[], str] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            if done():
                return
            if progress is not None:
                self.say.progress(progress())
            if time.monotonic() > deadline:
                detail = f" ({progress()})" if progress is not None else ""
                raise OperationalError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}{detail}"
                )
            time.sleep(POLL_S)

    def _view(self) -> FleetView:
        if self.view is None:
            self.view = FleetView(self.ws.hub_store)
        return self.view

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

    def step_keys_and_hub(self) -> None:
        self.say.step("Signing keys and a hub with an embedded MQTT broker")
        for name in ("publisher", "hub"):
            argv = ["keys", "generate", name, "--out", str(self.ws.keys)]
            self.say.command(self._show(argv))
            result = self.procs.run(f"keys-{name}", edgefleet_argv(*argv))
            if result.returncode != 0:
                raise OperationalError(f"key generation failed; log: {result.log_path}")
        port = free_port()
        write_hub_files(self.ws, port, HUB_TICK_S)
        self.say.say(f"hub.toml: store hub.db, broker 127.0.0.1:{port}, tick {HUB_TICK_S}s")
        argv = ["hub", "serve", "--embedded-broker", "--config", str(self.ws.hub_config)]
        self.say.command(self._show(argv))
        self.hub = self.procs.spawn("hub", edgefleet_argv(*argv))
        self.wait_for("the hub's broker to listen", lambda: _port_open(port), 30.0)
        self.say.ok(f"hub running (pid {self.hub.pid}), amqtt broker on port {port}")

    def step_enroll(self) -> None:
        self.say.step(f"Enroll {len(self.fleet)} devices in two groups with two profiles")
        for i, device in enumerate(self.fleet):
            out = self.ws.device_dir(device.device_id)
            args = [
                "hub", "device", "add", device.device_id,
                "--profile", device.profile, "--group", device.group,
                "--out", str(out), "--state-dir", str(self.ws.state_dir(device.device_id)),
                "--endpoint-port", "0", "--config", str(self.ws.hub_config),
            ]  # fmt: skip
            self.edgefleet(f"enroll-{device.device_id}", *args, show=i < 2)
            tune_agent_config(self.ws.agent_config(device.device_id), self.options.tuning)
        if len(self.fleet) > 2:
            self.say.say(f"… and {len(self.fleet) - 2} more")
        for group in sorted({d.group for d in self.fleet}):
            members = [d for d in self.fleet if d.group == group]
            self.say.say(
                f"{group} ({members[0].profile}): {', '.join(d.device_id for d in members)}"
            )
        t = self.options.tuning
        self.say.say(
            f"agent.toml tuned for a demo: {t.window_s}s telemetry windows, probation "
            f"{t.probation_min_requests} requests or {t.probation_max_seconds:.0f}s"
        )

    def step_start_agents(self) -> None:
        self.say.step("Start one agent process per device (each with its own state directory)")
        for i, device in enumerate(self.fleet):
            argv = ["agent", "run", "--config", str(self.ws.agent_config(device.device_id))]
            if i == 0:
                self.say.command(self._show(argv))
            self.agents[device.device_id] = self.procs.spawn(
                f"agent-{device.device_id}", edgefleet_argv(*argv)
            )
        self.say.ok(f"{len(self.agents)} agents starting (they boot while the models train)")

    def step_train(self) -> tuple[list[TrainedVersion], DemoData]:
        self.say.step("Train three versions on scikit-learn's breast-cancer data set")
        versions, data = train_versions(self.ws.models)
        for v in versions:
            metrics = ", ".join(f"{k} {val:.3f}" for k, val in v.metrics.items())
            self.say.say(f"v{v.version}: {v.description}: {metrics} (held out)")
        return versions, data

    def step_register_and_pack(self, versions: list[TrainedVersion]) -> dict[tuple[int, str], Path]:
        """Register v1..v3 (each the parent of the next) and pack each for both profiles.

        Registrations form a chain; a version is packed as soon as it is registered,
        two commands at a time, so the packager works while the registry does.
        """
        profiles = sorted({d.profile for d in self.fleet})
        self.say.step(
            f"Register the versions with metrics and lineage; pack each for "
            f"{' and '.join(profiles)} (signed bundles)"
        )
        # Registrations first: they are the critical path (each one unblocks two packs).
        registrations: list[_Job] = []
        packs: list[_Job] = []
        for v in versions:
            args = [
                "registry", "register", str(v.model_path), "--name", MODEL_NAME,
                "--dataset", str(v.dataset_path), "--reference-data", str(v.reference_path),
                "--registry", str(self.ws.registry),
            ]  # fmt: skip
            for k, metric in v.metrics.items():
                args += ["--metric", f"{k}={metric}"]
            for k, param in v.params.items():
                args += ["--param", f"{k}={param}"]
            after: tuple[str, ...] = ()
            if v.version > 1:
                args += ["--parent", f"{MODEL_NAME}:{v.version - 1}"]
                after = (f"register-v{v.version - 1}",)
            registrations.append(_Job(f"register-v{v.version}", args, after, show=v.version == 2))
            for profile in profiles:
                pack = [
                    "pack", f"{MODEL_NAME}:{v.version}", "--profile", profile,
                    "--key", str(self.ws.publisher_key), "--out", str(self.ws.bundles),
                    "--registry", str(self.ws.registry),
                ]  # fmt: skip
                name = f"pack-v{v.version}-{profile}"
                show = v.version == 1 and profile == profiles[0]
                packs.append(_Job(name, pack, (f"register-v{v.version}",), show=show))
        results = self._run_jobs(registrations + packs, PARALLEL_JOBS)
        bundles: dict[tuple[int, str], Path] = {}
        for v in versions:
            for profile in profiles:
                path = Path(results[f"pack-v{v.version}-{profile}"]["bundle"])
                bundles[(v.version, profile)] = path if path.is_absolute() else self.ws.root / path
        self.say.ok(
            f"{MODEL_NAME}:1 ← {MODEL_NAME}:2 ← {MODEL_NAME}:3 (parent links), "
            f"{len(bundles)} bundles signed with keys/publisher.key"
        )
        return bundles

    def _run_jobs(self, jobs: list[_Job], parallel: int) -> dict[str, Any]:
        """Run commands respecting ``after``, ``parallel`` at a time; their JSON by name."""
        pending = list(jobs)
        running: list[tuple[_Job, ManagedProcess]] = []
        results: dict[str, Any] = {}
        while pending or running:
            for job in list(pending):
                if len(running) >= parallel:
                    break
                if all(dep in results for dep in job.after):
                    pending.remove(job)
                    if job.show:
                        self.say.command(self._show(job.args))
                    child = self.procs.start_command(job.name, edgefleet_argv(*job.args, "--json"))
                    running.append((job, child))
            for entry in list(running):
                job, child = entry
                if child.running():
                    continue
                running.remove(entry)
                result = self.procs.finish(child, 10.0)
                results[job.name] = self._parse(
                    job.name, job.args, result.returncode, result.stdout, result.log_path
                )
                self.say.say(_job_line(job.name, results[job.name]))
            self._check_alive()
            self.say.progress(f"{len(results)}/{len(jobs)} done")
            time.sleep(0.1)
        return results

    def step_publish(self, bundles: dict[tuple[int, str], Path], versions: tuple[int, ...]) -> None:
        names = ", ".join(f"v{v}" for v in versions)
        self.say.step(f"Publish {names} to the hub (verified against the publisher key)")
        first = True
        for (version, _profile), path in sorted(bundles.items()):
            if version not in versions:
                continue
            args = ["hub", "publish", str(path), "--config", str(self.ws.hub_config)]
            record = self.edgefleet(f"publish-{path.stem}", *args, show=first)
            first = False
            sha = str(record.get("sha256", ""))[:12]
            self.say.say(
                f"{path.name}: sha256 {sha}…, signed by {len(record.get('signer_keyids', []))} key(s)"
            )

    def step_wait_fleet_online(self) -> None:
        self.say.step("Wait for every agent: endpoint up, connected to the hub")
        ids = [d.device_id for d in self.fleet]

        def ports() -> dict[str, int | None]:
            return {d: self.ws.endpoint_port(d) for d in ids}

        def online() -> dict[str, DeviceFacts]:
            return self._view().devices(MODEL_NAME)

        def ready() -> bool:
            return all(p is not None for p in ports().values()) and all(
                f.online for f in online().values()
            )

        def progress() -> str:
            up = sum(1 for p in ports().values() if p is not None)
            on = sum(1 for f in online().values() if f.online)
            return f"{up}/{len(ids)} endpoints up, {on}/{len(ids)} online at the hub"

        self.wait_for("the agents", ready, 90.0, progress)
        self.say.ok(progress())

    def step_start_traffic(self, data: DemoData) -> None:
        self.say.step("Clients start sending requests to every device's local endpoint")
        pump = TrafficPump(
            data, [d.device_id for d in self.fleet], requests_per_s=self.options.requests_per_s
        )
        for d in self.fleet:
            port = self.ws.endpoint_port(d.device_id)
            assert port is not None
            pump.set_port(d.device_id, port)
        pump.start()
        self.pump = pump
        self.say.say(
            f"{self.options.requests_per_s:g} requests/s per device, {pump.rows_per_request} rows "
            "each: POST /v2/models/cancer/infer (Open Inference Protocol v2, JSON)"
        )
        self.say.say("until a model is installed the agents answer 404 (nothing to serve yet)")

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


@dataclass(frozen=True)
class _Job:
    name: str
    args: list[str]
    after: tuple[str, ...] = ()
    show: bool = False


def _job_line(name: str, report: dict[str, Any]) -> str:
    if name.startswith("register-"):
        parent = report.get("parent")
        metrics = report.get("metrics") or {}
        shown = ", ".join(f"{k} {v}" for k, v in sorted(metrics.items()))
        return (
            f"registered {report.get('ref')}"
            + (f" (parent {parent})" if parent else "")
            + (f": {shown}" if shown else "")
        )
    version = report.get("model", {}).get("version")
    profile = report.get("target", {}).get("profile")
    quant = report.get("quantization", {})
    variant = quant.get("variant") or quant.get("method") or "?"
    packaged = report.get("validation", {}).get("packaged", {})
    accuracy = packaged.get("accuracy")
    acc = f", accuracy {accuracy:.3f}" if isinstance(accuracy, int | float) else ""
    return (
        f"packed v{version} for {profile}: {report.get('size', 0) / 1024:.0f} KiB, {variant}{acc}"
    )
