"""Which models and versions the fleet database holds telemetry for, from its indexes.

``SELECT DISTINCT`` over the windows and rollups reads every stored row (seconds on a
10,000-device fleet). Each (model, version) pair is found here by index seeks instead
("skip scan": the next version of the same model, else the first version of the next
model), in the rollups' primary key per level and in the index of windows not yet rolled
up. A window that is rolled up is in a rollup row, so the two together name every pair a
full scan would. (A row-value bound, ``(model, version) > (?, ?)``, would walk every row of
the pair it starts from: the seek needs the two bounds apart.) The same statements run on
both engines (the fleet connection's ``?`` placeholders).
"""

from __future__ import annotations

from edgefleet.hub.fleet.database import FleetConnection

_ROLLUPS = "SELECT model, version FROM fleet_rollups WHERE level = ? AND "
_RAW = "SELECT model, version FROM fleet_records WHERE kind = 'window' AND rolled = 0 AND "
_SAME_MODEL = "model = ? AND version > ? ORDER BY model, version LIMIT 1"
_NEXT_MODEL = "model > ? ORDER BY model, version LIMIT 1"


def _pairs(conn: FleetConnection, head: str, *params: object) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    row = conn.execute(head + _NEXT_MODEL, (*params, "")).fetchone()
    while row is not None and row[0] is not None:
        model, version = str(row[0]), int(row[1])
        found.append((model, version))
        row = conn.execute(head + _SAME_MODEL, (*params, model, version)).fetchone()
        if row is None:
            row = conn.execute(head + _NEXT_MODEL, (*params, model)).fetchone()
    return found


def models_and_versions(
    conn: FleetConnection, levels: tuple[int, int] | None
) -> dict[str, list[int]]:
    """Model -> its versions with telemetry, sorted; ``levels``: the rollup levels
    (bucket lengths) the database records, None when it holds no rollups yet."""
    pairs = set(_pairs(conn, _RAW))
    for level in levels or ():
        pairs.update(_pairs(conn, _ROLLUPS, level))
    out: dict[str, list[int]] = {}
    for model, version in sorted(pairs):
        out.setdefault(model, []).append(version)
    return out
