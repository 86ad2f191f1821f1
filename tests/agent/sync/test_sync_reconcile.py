"""next_action: one scenario table for the reconciliation rules (pure)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from tests.agent.sync.fakes import bundle

from edgefleet.agent.sync.reconcile import (
    DOWNLOADING,
    FAILED,
    HANDED,
    REFUSED,
    InstalledModel,
    LedgerEntry,
    Step,
    key_of,
    next_action,
    prune,
)
from edgefleet.core.directive import Assignment, Directive

V1, V2, V3 = bundle(version=1), bundle(version=2), bundle(version=3)
OTHER = bundle(model="wine", version=1)


@dataclass
class Case:
    assignments: tuple[Assignment, ...]
    installed: dict[str, InstalledModel] = field(default_factory=dict)
    ledger: tuple[LedgerEntry, ...] = ()
    idle: bool = True
    downloaded: frozenset[str] = frozenset()
    budget: int = 1 << 20
    expect: Step | None = None
    expect_model: str | None = None
    reason: str | None = None


def entry(a: Assignment, state: str, **kw: object) -> LedgerEntry:
    return LedgerEntry.start(a, state, 0.0, **kw)  # type: ignore[arg-type]


ON_V2 = {"iris": InstalledModel(V2.sha, 2, V1.sha, 1)}

CASES = {
    "nothing installed: download": Case((V1.assignment(),), expect=Step.DOWNLOAD),
    "already active: nothing to do": Case((V2.assignment(),), installed=ON_V2, expect=None),
    "newer version: download": Case((V3.assignment(),), installed=ON_V2, expect=Step.DOWNLOAD),
    "downloaded and driver idle: install": Case(
        (V3.assignment(),), installed=ON_V2, downloaded=frozenset({V3.sha}), expect=Step.INSTALL
    ),
    "downloaded but driver busy: wait": Case(
        (V3.assignment(),),
        installed=ON_V2,
        downloaded=frozenset({V3.sha}),
        idle=False,
        expect=Step.WAIT,
    ),
    "downloads go on while the driver is busy": Case(
        (V3.assignment(),), installed=ON_V2, idle=False, expect=Step.DOWNLOAD
    ),
    "downgrade without permission: refuse": Case(
        (V1.assignment(),), installed=ON_V2, expect=Step.REFUSE, reason="downgrade refused"
    ),
    "signed downgrade to the previous slot: rollback": Case(
        (V1.assignment(allow_downgrade=True),), installed=ON_V2, expect=Step.ROLLBACK
    ),
    "signed downgrade, previous slot, driver busy: wait": Case(
        (V1.assignment(allow_downgrade=True),), installed=ON_V2, idle=False, expect=Step.WAIT
    ),
    "over the bundle budget: refuse": Case(
        (V3.assignment(),), installed=ON_V2, budget=100, expect=Step.REFUSE, reason="budget"
    ),
    "shadow mode: refuse": Case(
        (V3.assignment(mode="shadow"),), installed=ON_V2, expect=Step.REFUSE, reason="shadow"
    ),
    "handed to the driver: wait for its outcome": Case(
        (V3.assignment(),),
        installed=ON_V2,
        ledger=(entry(V3.assignment(), HANDED, request_id="x"),),
        expect=Step.WAIT,
    ),
    "failed before: never again for the same rollout": Case(
        (V3.assignment(),), installed=ON_V2, ledger=(entry(V3.assignment(), FAILED),), expect=None
    ),
    "failed before, new rollout id: try again": Case(
        (V3.assignment(rollout_id="r-2"),),
        installed=ON_V2,
        ledger=(entry(V3.assignment(), FAILED),),
        expect=Step.DOWNLOAD,
    ),
    "refused one does not block the next model": Case(
        (V1.assignment(), OTHER.assignment()),
        installed=ON_V2,
        ledger=(entry(V1.assignment(), REFUSED),),
        expect=Step.DOWNLOAD,
        expect_model="wine",
    ),
    "models are handled in name order": Case(
        (OTHER.assignment(), V3.assignment()),
        installed=ON_V2,
        expect=Step.DOWNLOAD,
        expect_model="iris",
    ),
    "download in progress continues": Case(
        (V3.assignment(),),
        installed=ON_V2,
        ledger=(entry(V3.assignment(), DOWNLOADING, attempts=1),),
        expect=Step.DOWNLOAD,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_next_action(name: str) -> None:
    case = CASES[name]
    now = time.time()
    directive = Directive("dev-1", 1, now, now + 60, case.assignments)
    action = next_action(
        directive,
        case.installed,
        {e.key: e for e in case.ledger},
        deployer_idle=case.idle,
        downloaded=case.downloaded,
        max_bundle_bytes=case.budget,
    )
    if case.expect is None:
        assert action is None
        return
    assert action is not None
    assert action.step is case.expect
    if case.expect_model is not None:
        assert action.assignment.model == case.expect_model
    if case.reason is not None:
        assert case.reason in (action.reason or "")


def test_no_directive_means_nothing_to_do() -> None:
    assert next_action(None, {}, {}, deployer_idle=True, downloaded=(), max_bundle_bytes=1) is None


def test_prune_keeps_named_assignments_and_requests_with_the_driver() -> None:
    named, gone, handed = V3.assignment(), V1.assignment(), OTHER.assignment()
    ledger = {
        key_of(named): entry(named, FAILED),
        key_of(gone): entry(gone, REFUSED),
        key_of(handed): entry(handed, HANDED, request_id="r"),
    }
    assert set(prune(ledger, [key_of(named)])) == {key_of(named), key_of(handed)}


def test_ledger_entries_round_trip() -> None:
    e = entry(V3.assignment(), FAILED, reason="bad", result="rolled_back", attempts=2)
    assert LedgerEntry.from_dict(e.to_dict()) == e
