"""Why a model serves nothing: one line for ``agent status`` and the state sent to the hub.

A model the device knows (it was installed or tried) serves nothing when its
active slot is empty: typically a first install that failed its smoke set or
probation and was rolled back to "no version". The device then says so and
why, instead of only answering 404 to its clients. Pure: the callers pass what
they read from the slot table and the last deployment.
"""

from __future__ import annotations

from edgefleet.core.protocol import DeploymentInfo

PREFIX = "nothing served"
# Deployment outcomes after which an empty active slot stays empty.
_ENDED_BADLY = frozenset({"rolled_back", "failed", "rejected"})


def not_served_reason(
    *,
    kind: str | None,
    version: int | None,
    state: str | None,
    reason: str | None,
) -> str:
    """``nothing served: install v1 rolled back (probation failed: ...)``, from the last deployment
    of a model whose active slot is empty (all None: nothing was ever deployed)."""
    if state is None:
        return f"{PREFIX}: no version installed"
    if reason is not None and reason.startswith(PREFIX):
        return reason
    what = (
        " ".join(part for part in (kind, None if version is None else f"v{version}") if part)
        or "deployment"
    )
    line = f"{PREFIX}: {what} {state.replace('_', ' ')}"
    return f"{line} ({reason})" if reason else line


def reason_without_active(deployment: DeploymentInfo) -> str | None:
    """The reason to report for a model with no active version: the deployment's own
    while it is under way, else why nothing serves (at most 1024 characters, as the
    state message allows)."""
    if deployment.state not in _ENDED_BADLY:
        return deployment.reason
    why = not_served_reason(
        kind=None, version=deployment.version, state=deployment.state, reason=deployment.reason
    )
    return why[:1024]
