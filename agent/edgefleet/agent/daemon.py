"""The agent daemon: ``edgefleet agent run`` (lifecycle in the shape of uvicorn's Server).

Startup, in order:

1. take the state lock (one daemon per state directory), sweep crash leftovers;
2. start verifying the installed bundles in a child process
   (:mod:`edgefleet.agent.verify_process`: this process never loads the
   signature code), check the trust store is readable;
3. open the telemetry buffer (an unusable database is moved aside, never fatal);
4. load the active version of every installed model, verifying each against
   the trust store; if an active version does not load, serve the previous
   one (the pointers are left alone and the reason is logged and recorded);
5. resume the persisted deployment (finish or undo the interrupted step);
6. start the endpoint, the deployment thread and (with ``[mqtt]``) the hub
   sync, then report ready.

Main loop: flush telemetry every ``flush_interval_s`` (1 s by default) and
keep the buffer within its budget.

Shutdown on SIGTERM or SIGINT (a second signal forces exit): stop accepting
requests and finish running ones, stop the deployment thread between steps,
flush telemetry, release the lock — all within ``shutdown_timeout_s``.

Logging goes to stderr, one line per event; under systemd (``JOURNAL_STREAM``
set) each line starts with its syslog priority (``<6>``) so journald keeps
the level.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from edgefleet.agent.deploy.atomic_files import atomic_write_json, remove_path
from edgefleet.agent.deploy.layout import StateLock
from edgefleet.agent.deploy.slots import SlotTable
from edgefleet.agent.errors import AgentError

if TYPE_CHECKING:
    from edgefleet.agent.deploy.context import AgentContext
    from edgefleet.agent.deploy.driver import DeploymentDriver
    from edgefleet.agent.deploy.worker import DeploymentWorker
    from edgefleet.agent.model.served import ServedModel
    from edgefleet.agent.telemetry.recorder import ModelRegistration, WindowRecorder

log = logging.getLogger("edgefleet.agent")

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\n", " | ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"


def setup_logging(level: str) -> None:
    """Log to stderr; journald-friendly priority prefixes under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edgefleet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def registration_for(loaded: ServedModel) -> ModelRegistration:
    """What the window recorder needs from a loaded model."""
    from edgefleet.agent.telemetry.recorder import ModelRegistration, reference_from_json

    manifest = getattr(loaded, "manifest", None)
    reference = None
    bundle_dir = getattr(loaded, "bundle_dir", None)
    reference_path = getattr(manifest, "reference_path", None)
    if bundle_dir is not None and reference_path:
        try:
            reference = reference_from_json((Path(bundle_dir) / reference_path).read_bytes())
        except OSError:
            reference = None
    labels = getattr(loaded, "labels", None)
    return ModelRegistration(
        model=loaded.name,
        version=int(loaded.version),
        task=str(getattr(loaded, "task", "classification")),
        labels=None if labels is None else tuple(labels),
        reference=reference,
    )


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl)."""
    try:
        import ctypes  # already loaded: numpy imports it

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand memory the allocator holds but nobody uses back to the system.

    Serving frees as much as it allocates (JSON documents, arrays, telemetry
    folded into windows), but glibc keeps freed chunks inside its heaps, so
    the resident size only grows towards the peak. ``malloc_trim`` returns the
    free pages; it takes about half a millisecond, once per flush.
    """
    if _TRIM is not None:
        _TRIM()


class AgentDaemon:
    """One running agent; :meth:`run` blocks until a shutdown signal."""

    def __init__(self, context: AgentContext) -> None:
        self.ctx = context
        self.config = context.config
        self.stop_event = threading.Event()
        self._signals = 0
        self.endpoint: Any | None = None
        self.worker: DeploymentWorker | None = None
        self.recorder: WindowRecorder | None = None
        self.serving: Any | None = None
        self.sync: Any | None = None

    # --- signals ---------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    # --- lifecycle -------------------------------------------------------------
    def run(self) -> int:
        lock = StateLock(self.ctx.layout)
        self.ctx.layout.ensure()
        if not lock.acquire():
            raise AgentError(
                f"another agent already runs on {self.ctx.layout.root} (it holds agent.lock)"
            )
        try:
            self._startup()
            self._main_loop()
            self._shutdown()
        finally:
            remove_path(self.ctx.layout.root / "endpoint.json")
            lock.release()
        return 0

    def _startup(self) -> None:
        started = time.monotonic()
        ctx = self.ctx
        # Bundles are verified in a child process (this one never loads the
        # signature code); it starts on the installed bundles right away, while
        # this process imports onnxruntime and opens the telemetry buffer.
        loader = ctx.loader(isolated=True)
        try:
            loader.prefetch(self._active_bundles())
        except Exception as e:  # each load starts its own child (and reports) instead
            log.warning("could not start checking the installed bundles early: %s", e)
        try:
            self._start_serving(loader, started)
        finally:
            loader.end_prefetch()

    def _active_bundles(self) -> list[str]:
        try:
            return [p.active for p in SlotTable(self.ctx.layout).all().values() if p.active]
        except Exception:  # the loads report unreadable slots properly
            return []

    def _start_serving(self, loader: Any, started: float) -> None:
        from edgefleet.agent.deploy.deployment_queue import DeploymentQueue
        from edgefleet.agent.deploy.record import DeployStateFile
        from edgefleet.agent.deploy.store import sweep_leftovers
        from edgefleet.agent.deploy.worker import DeploymentWorker
        from edgefleet.agent.endpoint import EndpointConfig, EndpointServer
        from edgefleet.agent.model.serving import ServingSet
        from edgefleet.agent.telemetry.recorder import WindowRecorder

        ctx = self.ctx
        serving = ServingSet(ready=False)
        loader.check_trust()
        buffer = ctx.open_buffer_or_reset()
        recorder = WindowRecorder(buffer, ctx.window_s)

        def on_swap(name: str, loaded: ServedModel | None) -> None:
            if loaded is None:
                recorder.unregister_active(name)
            else:
                recorder.register_model(registration_for(loaded))

        serving.on_swap(on_swap)

        def make_driver() -> DeploymentDriver:
            return ctx.driver(
                serving=serving,
                tap=recorder,
                events=recorder.record_event,
                loader=loader,
                isolated=True,
            )

        # The deployment code is loaded only when there is a deployment to
        # resume or, later, a request in the inbox: a daemon that only serves
        # never needs it.
        driver: DeploymentDriver | None = None
        if DeployStateFile(ctx.layout.deploy_file).load().current is None:
            removed = sweep_leftovers(ctx.layout)
            if removed:
                log.info("removed %d crash leftovers", removed)
        else:
            from edgefleet.agent.deploy.machine import State

            driver = make_driver()
            current = driver.resume()
            if current is not None and current.state is State.ROLLING_BACK:
                # Restore the pointers before loading anything: the version being
                # undone may be what killed the previous run.
                driver.run()
        self._load_models(loader, serving, recorder)
        loader.end_prefetch()
        recorder.restore()
        self.recorder, self.serving = recorder, serving
        endpoint_cfg = EndpointConfig.from_settings(self.config.endpoint, ctx.profile)
        self.endpoint = EndpointServer(endpoint_cfg, serving, recorder, release_freed_memory)
        self.endpoint.start()
        self.worker = DeploymentWorker(
            driver, ctx.layout, factory=make_driver, queue=DeploymentQueue()
        )
        self.worker.start()
        self._start_hub_sync(buffer, self.worker)
        serving.ready = True
        atomic_write_json(
            ctx.layout.root / "endpoint.json",
            {"pid": os.getpid(), "url": self.endpoint.url, "port": self.endpoint.port},
        )
        log.info(
            "ready in %.2f s: device %s, profile %s, serving %s on %s",
            time.monotonic() - started,
            self.config.device_id,
            ctx.profile.name,
            ", ".join(f"{m.name}:{m.version}" for m in serving.snapshot().values()) or "no models",
            self.endpoint.url,
        )

    def _start_hub_sync(self, buffer: Any, worker: DeploymentWorker) -> None:
        """Talk to the hub when agent.toml has [mqtt]; offline, the agent just serves."""
        if self.config.mqtt is None:
            return
        try:
            from edgefleet.agent.sync.wiring import hub_sync_for

            self.sync = hub_sync_for(self.ctx, buffer, worker)
            if self.sync is not None:
                self.sync.start()
        except Exception:  # the hub link never takes inference down
            log.exception("hub sync did not start; serving offline")
            self.sync = None

    def _load_models(self, loader: Any, serving: Any, recorder: WindowRecorder) -> None:
        slots = SlotTable(self.ctx.layout)
        for model, pointers in slots.all().items():
            if serving.find(model) is not None:
                continue  # resuming a deployment already loaded it
            for role, sha in (("active", pointers.active), ("previous", pointers.previous)):
                if sha is None:
                    continue
                try:
                    serving.swap(model, loader(sha))
                except Exception as e:
                    reason = f"cannot load {role} version of {model} ({sha[:12]}): {e}"
                    log.error("%s", reason)
                    self._record_event(recorder, model, "load_failed", reason, sha)
                    continue
                if role == "previous":
                    log.warning("serving the previous version of %s", model)
                break

    @staticmethod
    def _record_event(
        recorder: WindowRecorder, model: str, state: str, reason: str, sha: str
    ) -> None:
        try:
            recorder.record_event(
                {
                    "model": model,
                    "version": None,
                    "state": state,
                    "reason": reason,
                    "at": time.time(),
                    "bundle_sha256": sha,
                }
            )
        except Exception:
            log.exception("could not record event")

    def _main_loop(self) -> None:
        assert self.recorder is not None
        interval = self.config.telemetry.flush_interval_s
        while not self.stop_event.wait(interval):
            self._flush()

    def _flush(self) -> None:
        assert self.recorder is not None
        try:
            self.recorder.flush()
            report = self.recorder.buffer.enforce_budget()
            if report.dropped_records:
                log.warning(
                    "telemetry over budget: dropped %d records (%d requests)",
                    report.dropped_records,
                    report.dropped_requests,
                )
        except Exception:
            log.exception("telemetry flush failed; keeping the data in memory")
        release_freed_memory()

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        if self.serving is not None:
            self.serving.ready = False
        if self.endpoint is not None:
            grace = max(0.1, min(5.0, (deadline - time.monotonic()) / 2))
            try:
                self.endpoint.stop(grace_s=grace)
            except Exception:
                log.exception("endpoint did not stop cleanly")
        if self.sync is not None:
            try:
                self.sync.stop(timeout_s=max(0.1, min(5.0, deadline - time.monotonic())))
            except Exception:
                log.exception("hub sync did not stop cleanly")
        if self.worker is not None:
            stopped = self.worker.stop(max(0.1, deadline - time.monotonic() - 0.5))
            if stopped:
                if self.worker.driver is not None:
                    self.worker.driver.suspend()
            else:
                log.warning("deployment step still running; it resumes at the next start")
        if self.recorder is not None:
            self._flush()
            self.recorder.buffer.close()
        log.info("stopped")


def run_agent(config_path: Path | None) -> int:
    """Entry point of ``edgefleet agent run``."""
    from edgefleet.agent.deploy.context import AgentContext

    context = AgentContext.load(config_path)
    setup_logging(context.config.log_level)
    daemon = AgentDaemon(context)
    daemon.install_signal_handlers()
    return daemon.run()


_USAGE = "usage: python -m edgefleet.agent.daemon [--debug] [agent run] [--config FILE]"


def main(argv: list[str] | None = None) -> int:
    """``python -m edgefleet.agent.daemon [agent run] --config FILE``: the daemon without the CLI.

    What ``edgefleet agent run`` executes (see its module); errors are
    reported like the CLI does: one ``error: ...`` line, the family's exit code.
    """
    from edgefleet.agent.config import DEFAULT_CONFIG_PATH
    from edgefleet.core.errors import EXIT_USAGE, EdgefleetError, exit_code_for

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if args[:2] == ["agent", "run"]:
        args = args[2:]
    config_path = DEFAULT_CONFIG_PATH
    if len(args) == 2 and args[0] == "--config":
        config_path = Path(args[1])
    elif len(args) == 1 and args[0].startswith("--config="):
        config_path = Path(args[0].split("=", 1)[1])
    elif args:
        sys.stderr.write(f"{_USAGE}\n")
        return EXIT_USAGE
    try:
        return run_agent(config_path)
    except EdgefleetError as e:
        if debug:
            raise
        sys.stderr.write(f"error: {' '.join(str(e).split()) or 'unknown error'}\n")
        return exit_code_for(e)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
