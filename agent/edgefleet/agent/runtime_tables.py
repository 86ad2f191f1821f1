"""Former import path of :mod:`edgefleet.agent.model.tables` (kept so existing imports work)."""

from edgefleet.agent.model.tables import *  # noqa: F403
