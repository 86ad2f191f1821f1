"""Former import path of :mod:`edgefleet.agent.model.serving` (kept so existing imports work)."""

from edgefleet.agent.model.serving import *  # noqa: F403
