"""Which buffered records to merge or drop when the telemetry store is over budget.

docs/agent.md (Telemetry buffer, Budget): when the store is full, old windows are merged into coarser ones
(totals stay exact) before anything is dropped, and drops are counted.

The policy, as a pure function of the buffered records' metadata:

1. Candidates for merging are pairs of windows of the same model version that
   are next to each other in that version's sequence and were never handed to
   the hub (a shipped record may already be stored there; merging it into
   another would count it twice).
2. Pairs are taken by the span they would cover, shortest first, then oldest
   first. All data is coarsened to 2x before anything becomes 4x, and within
   a level the oldest windows go first, so recent windows keep their detail
   longest.
3. Only when no pair is left are records dropped: the oldest windows first,
   events only when no window is left (they are small and say what happened
   to a deployment).

The caller applies a plan, measures the real store size and asks again until
it fits; each plan only frees about ``excess_bytes`` (estimated from the sizes
of the bodies that disappear).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RecordMeta:
    seq: int
    kind: str
    model: str | None
    version: int | None
    start_s: float | None
    end_s: float | None
    size: int
    shipped: bool


@dataclass(frozen=True)
class BudgetPlan:
    """``merges``: (keep_seq, absorbed_seq) pairs, absorbed into keep; ``drops``: seqs to delete."""

    merges: tuple[tuple[int, int], ...] = ()
    drops: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.merges and not self.drops


def merge_candidates(records: Sequence[RecordMeta]) -> list[tuple[RecordMeta, RecordMeta]]:
    """Adjacent unshipped window pairs of one model version, in preference order."""
    groups: dict[tuple[str | None, int | None], list[RecordMeta]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.seq):
        if record.kind == "window":
            groups[(record.model, record.version)].append(record)
    pairs: list[tuple[RecordMeta, RecordMeta]] = []
    for windows in groups.values():
        for a, b in zip(windows, windows[1:], strict=False):
            if not a.shipped and not b.shipped:
                pairs.append((a, b))

    def preference(pair: tuple[RecordMeta, RecordMeta]) -> tuple[float, float, int]:
        a, b = pair
        span = (b.end_s or 0.0) - (a.start_s or 0.0)
        return (span, a.start_s or 0.0, a.seq)

    pairs.sort(key=preference)
    return pairs


def plan_budget(records: Sequence[RecordMeta], excess_bytes: int) -> BudgetPlan:
    """Merges (or, when nothing can merge, drops) that free about ``excess_bytes``."""
    if excess_bytes <= 0 or not records:
        return BudgetPlan()
    merges: list[tuple[int, int]] = []
    used: set[int] = set()
    freed = 0
    for a, b in merge_candidates(records):
        if a.seq in used or b.seq in used:
            continue
        merges.append((a.seq, b.seq))
        used.update((a.seq, b.seq))
        # The merged body is about as large as the larger of the two.
        freed += min(a.size, b.size)
        if freed >= excess_bytes:
            break
    if merges:
        return BudgetPlan(merges=tuple(merges))
    drops: list[int] = []
    ordered = sorted(records, key=lambda r: (r.kind != "window", r.seq))
    for record in ordered:
        drops.append(record.seq)
        freed += record.size
        if freed >= excess_bytes:
            break
    return BudgetPlan(drops=tuple(drops))
