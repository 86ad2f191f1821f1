"""Settings of fleet telemetry: time buckets, retention and where the fleet tables live.

Invariants checked in ``__post_init__``:

- ``coarse_bucket_s`` is a whole multiple of ``bucket_s`` (an hour bucket never straddles two
  day buckets, so coarsening hour -> day only adds whole buckets and totals stay exact);
- raw window bodies are kept at least as long as the alert monitor looks back
  (``raw_retention_s >= monitor_lookback_s``): the monitor reads raw windows, never rollups;
- hourly rollups are kept at least as long as raw windows, day rollups at least as long as
  hourly ones (``None`` keeps day rollups forever).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOUR_S = 3600
DAY_S = 86400


def fleet_location(store_location: Path | str) -> Path | str:
    """Where the fleet tables live: in the hub store's own database — its SQLite file or
    its PostgreSQL database (``[store] url``), so every hub on one store shares them."""
    return store_location


@dataclass(frozen=True)
class FleetSettings:
    bucket_s: int = HOUR_S  # fine time bucket of reports and rollups
    coarse_bucket_s: int = DAY_S  # what fine buckets are coarsened into
    # Raw windows are merged into their (possibly still open) rollup this long after they
    # arrive, by maintenance; 0 = in the ingest transaction itself. Queries read rollups and
    # decode raw windows one by one, so 0 keeps queries fast right after a burst.
    rollup_delay_s: float = 0.0
    raw_retention_s: float = 2 * DAY_S  # raw window bodies (per device and seq)
    fine_retention_s: float = 30 * DAY_S  # hourly rollups, then coarsened to daily
    coarse_retention_s: float | None = 400 * DAY_S  # daily rollups; None = forever
    maintenance_budget: int = 500  # raw windows rolled up per maintenance step
    monitor_lookback_s: float = 6 * HOUR_S  # small windows merge back at most this far

    def __post_init__(self) -> None:
        if self.bucket_s < 60:
            raise ValueError("bucket_s must be at least 60 seconds")
        if self.coarse_bucket_s < self.bucket_s or self.coarse_bucket_s % self.bucket_s:
            raise ValueError("coarse_bucket_s must be a whole multiple of bucket_s")
        if self.rollup_delay_s < 0:
            raise ValueError("rollup_delay_s must not be negative")
        if self.raw_retention_s < self.monitor_lookback_s:
            raise ValueError("raw_retention_s must be at least monitor_lookback_s")
        if self.fine_retention_s < self.raw_retention_s:
            raise ValueError("fine_retention_s must be at least raw_retention_s")
        if self.coarse_retention_s is not None and self.coarse_retention_s < self.fine_retention_s:
            raise ValueError("coarse_retention_s must be at least fine_retention_s")
        if self.maintenance_budget < 1:
            raise ValueError("maintenance_budget must be at least 1")
        if self.monitor_lookback_s <= 0:
            raise ValueError("monitor_lookback_s must be positive")

    def bucket_of(self, t: float) -> int:
        """Start of the fine bucket holding time ``t`` (UTC-aligned)."""
        return int(t // self.bucket_s) * self.bucket_s

    def coarse_bucket_of(self, t: float) -> int:
        return int(t // self.coarse_bucket_s) * self.coarse_bucket_s
