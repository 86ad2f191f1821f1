"""Retention of the hub store's telemetry, run from the service's tick.

The store keeps telemetry for the rollout gates only. :class:`TelemetryRetention` deletes
what no gate can read any more (see :func:`retention_cutoff`), at most every
``RETENTION_INTERVAL_S`` and at most ``RETENTION_ROWS_PER_TICK`` records per round, so a
backlog (say after an upgrade) goes on at the next tick instead of holding up rollouts and
directives. The bounded, batched delete and the dedupe mark it leaves behind are the
store's (``HubStore.prune_telemetry``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edgefleet.hub.rollout.machine import ACTIVE_STATES
from edgefleet.hub.store import HubStore, RolloutRecord

RETENTION_INTERVAL_S = 300.0
RETENTION_ROWS_PER_TICK = 20_000


def retention_cutoff(now: float, retention_s: float, active: Iterable[RolloutRecord]) -> float:
    """Hub-store telemetry received before this may be deleted.

    Older than ``retention_s``, and older than what any active (created, running or
    paused) rollout reads: its gates compare telemetry since its creation minus its
    ``baseline_lookback_s``, and deleting inside that window would change their verdict
    halfway through the rollout.
    """
    cutoff = now - retention_s
    for rollout in active:
        cutoff = min(cutoff, rollout.created_at - rollout.plan.gates.baseline_lookback_s)
    return cutoff


class TelemetryRetention:
    """Paces the deletes: one bounded round per ``RETENTION_INTERVAL_S`` (the tick thread)."""

    def __init__(
        self, store: HubStore, retention_s: float, tally: Callable[[str, int], object]
    ) -> None:
        self.store = store
        self.retention_s = retention_s
        self.tally = tally
        self._next = 0.0  # clock time of the next round

    def run(self, now: float) -> int:
        """Delete expired telemetry if a round is due; returns how many records went."""
        if now < self._next:
            return 0
        self._next = now + RETENTION_INTERVAL_S  # a failure waits for the next round
        cutoff = retention_cutoff(now, self.retention_s, self.store.list_rollouts(ACTIVE_STATES))
        deleted = self.store.prune_telemetry(cutoff, max_rows=RETENTION_ROWS_PER_TICK)
        if deleted:
            self.tally("telemetry.pruned", deleted)
        if deleted >= RETENTION_ROWS_PER_TICK:
            self._next = now  # more to delete: go on at the next tick
        return deleted
