"""The demo's fleet setup, step by step, with the real commands: keys and a hub,
enrolled devices, their agents, three trained versions registered and packed,
bundles published, the fleet online and clients sending requests.

The story that follows (rollouts, drift, the final state) is in
:mod:`~edgefleet.demo.scenario`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.core.errors import OperationalError
from edgefleet.demo.console_probe import ConsoleAccess, api_healthy
from edgefleet.demo.fleet_view import DeviceFacts
from edgefleet.demo.harness import DemoHarness
from edgefleet.demo.processes import ManagedProcess, edgefleet_argv
from edgefleet.demo.traffic import TrafficPump
from edgefleet.demo.training import (
    MODEL_NAME,
    DemoData,
    TrainedVersion,
    train_versions,
)
from edgefleet.demo.workspace import tune_agent_config, write_hub_files

PARALLEL_JOBS = 2
HUB_TICK_S = 0.5


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


class FleetSetupSteps(DemoHarness):
    """The steps that bring the fleet up, before anything is rolled out."""

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
        api = f"127.0.0.1:{free_port()}"
        argv = [
            "hub", "serve", "--embedded-broker", "--api", api, "--config", str(self.ws.hub_config),
        ]  # fmt: skip
        self.say.command(self._show(argv))
        self.hub = self.procs.spawn("hub", edgefleet_argv(*argv))
        self.wait_for("the hub's broker to listen", lambda: _port_open(port), 30.0)
        url = f"http://{api}/"
        self.wait_for("the hub's API to answer", lambda: api_healthy(url), 30.0)
        self.say.ok(f"hub running (pid {self.hub.pid}), amqtt broker on port {port}")
        self.step_console_token(url)

    def step_console_token(self, url: str) -> None:
        """A viewer token for the dashboard, printed once like `hub token create` does."""
        args = ["hub", "token", "create", "demo", "--role", "viewer"]
        created = self.edgefleet("token", *args, "--config", str(self.ws.hub_config))
        access = ConsoleAccess(url, str(created["token"]), str(created.get("role", "viewer")))
        self.summary.console = access
        self.say.ok(f"fleet console: open {url} while the demo runs")
        self.say.say(f"viewer token (paste it into the dashboard): {access.token}")

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
