"""Who runs the directive trust rules: this process, or a short-lived child.

The rules are :func:`edgefleet.core.directive.check_directive`, whichever
implementation runs them, so a directive gets the same verdict and the same
reason in both:

- :class:`InProcessDirectiveChecker` calls it here (tests, tools, many
  simulated devices in one process).
- :class:`ChildDirectiveChecker` sends ``{"op": "directive", ...}`` to a
  verification child (:mod:`edgefleet.agent.verify_process`), so the daemon
  never loads ``cryptography`` for a directive. Directives are rare, so each
  check spawns its own child.

A refusal is a :class:`~edgefleet.core.errors.DirectiveError` with the rule's
message. A check that could not run (the child did not start, died, or could
not read the trust store) is a :class:`DirectiveCheckUnavailable`: the caller
accepts nothing and tries again later.

Importing this module loads no signature code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.agent.errors import AgentError
from edgefleet.core.errors import DirectiveError, EdgefleetError

if TYPE_CHECKING:
    from edgefleet.core.directive import Directive
    from edgefleet.core.trust import TrustStore


class DirectiveCheckUnavailable(AgentError):
    """The directive could not be checked now (not a verdict on the directive)."""


class DirectiveChecker(Protocol):
    def check(
        self, envelope: Mapping[str, Any], device_id: str, last_seq: int | None, now: float
    ) -> Directive:
        """The checked directive; DirectiveError (refused) or DirectiveCheckUnavailable."""
        ...


class InProcessDirectiveChecker:
    """``check_directive`` against a trust store held by this process."""

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust

    def check(
        self, envelope: Mapping[str, Any], device_id: str, last_seq: int | None, now: float
    ) -> Directive:
        from edgefleet.core.directive import check_directive

        return check_directive(envelope, self.trust, device_id, last_seq, now)


class ChildDirectiveChecker:
    """``check_directive`` in a verification child reading the trust store at ``trust_path``."""

    def __init__(self, trust_path: Path, *, python: str | None = None) -> None:
        self.trust_path = Path(trust_path)
        self.python = python

    def check(
        self, envelope: Mapping[str, Any], device_id: str, last_seq: int | None, now: float
    ) -> Directive:
        from edgefleet.agent.verify_process import VerifyProcess
        from edgefleet.core.directive import Directive

        process = VerifyProcess(self.trust_path, python=self.python)
        try:
            with process:
                body = process.check_directive(envelope, device_id, last_seq, now)
            return Directive.from_dict(body)
        except DirectiveError:
            raise
        except EdgefleetError as e:
            raise DirectiveCheckUnavailable(f"directive not checked yet: {e}") from e


def as_checker(trust: TrustStore | DirectiveChecker) -> DirectiveChecker:
    """A checker for ``trust``: a trust store is checked against in this process."""
    if hasattr(trust, "check"):
        return trust  # type: ignore[return-value]
    return InProcessDirectiveChecker(trust)  # type: ignore[arg-type]
