"""Bounds on numbers that every store and reader must hold exactly (no imports: the
daemon, the hub and the packager all use it)."""

from __future__ import annotations

# The largest model version: SQLite and PostgreSQL integers stop at 2^63 - 1 and JSON
# numbers read as doubles at 2^53 - 1 (a larger signed version once installed, then
# broke every telemetry flush and `hub publish`).
MAX_MODEL_VERSION = 2**53 - 1
