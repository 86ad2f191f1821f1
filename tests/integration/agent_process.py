"""``python -m tests.integration.agent_process --config agent.toml``: the real agent daemon
with its hub sync.

This is edgefleet's own ``AgentDaemon``. When the daemon does not start the hub sync
itself, this starts it exactly as the daemon is meant to (``hub_sync_for`` after
startup, ``stop`` before shutdown); once the daemon does, nothing is added.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgefleet.agent.daemon import AgentDaemon, setup_logging
from edgefleet.agent.deploy.context import AgentContext
from edgefleet.agent.sync import HubSync, hub_sync_for
from edgefleet.core.errors import EdgefleetError, exit_code_for


class SyncedDaemon(AgentDaemon):
    added_sync: HubSync | None = None

    def _startup(self) -> None:
        super()._startup()
        if getattr(self, "sync", None) is None and self.recorder is not None:
            self.added_sync = hub_sync_for(self.ctx, self.recorder.buffer)
            if self.added_sync is not None:
                self.added_sync.start()

    def _shutdown(self) -> None:
        if self.added_sync is not None:
            self.added_sync.stop()
        super()._shutdown()


def main(argv: list[str]) -> int:
    config = Path(argv[argv.index("--config") + 1])
    try:
        context = AgentContext.load(config)
        setup_logging(context.config.log_level)
        daemon = SyncedDaemon(context)
        daemon.install_signal_handlers()
        return daemon.run()
    except EdgefleetError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code_for(e)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
