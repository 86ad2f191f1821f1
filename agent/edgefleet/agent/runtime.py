"""Former import path of :mod:`edgefleet.agent.model.runtime` (kept so existing imports work)."""

from edgefleet.agent.model.runtime import *  # noqa: F403
