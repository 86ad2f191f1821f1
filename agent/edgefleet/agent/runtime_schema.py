"""Former import path of :mod:`edgefleet.agent.model.schema` (kept so existing imports work)."""

from edgefleet.agent.model.schema import *  # noqa: F403
