"""Which hub process does the once-per-fleet work of a tick, and under which fencing epoch.

Several ``hub serve`` processes may share one PostgreSQL store. The work of the tick that
must happen once per fleet, not once per hub — rollout transitions, directive issuance,
re-signing and publication, hub-store telemetry retention, the fleet alert monitor (so an
alert and its webhook fire once) and the maintenance of the fleet tables every hub shares
(roll-up, coarsening, retention) — is done by the holder of the
store lease :data:`LEASE` only, inside ``store.fenced(LEASE, epoch)`` so a holder that
lost the lease (paused, cut off) cannot write after another took over. The fleet monitor
and maintenance write the fleet tables, which are not fenced: they check ``holds()`` before
each round, and a round an old holder finishes late is harmless — fleet writes are
serialised (see ``fleet/database.py``), a roll-up step takes only rows not rolled up yet,
and an alert is opened only where none is open for its key.

Rules (pure timing, the store decides ownership):

- the lease lasts :func:`lease_ttl` (at least 10 s, three ticks); the holder renews it
  every tick, so another hub takes over at most ``ttl + tick_s`` after the holder died;
- a hub cut from the broker for more than two ticks releases the lease (someone with a
  broker connection should publish directives) and does no singleton work until it is
  connected again;
- on SQLite there is one ``hub serve`` per store (the serve lock): it is always the
  holder, with no lease and no fence, exactly as a single hub always worked.

One broker client id per hub process: on a shared store a hub also holds the lease
``client:<client_id>`` while it runs (claimed at start, renewed every tick). A second hub
configured with the same ``broker.client_id`` would take the first one's broker session
over and over; it is refused at start with one line naming the holder, unless that
holder is a process of this host that no longer runs (a ``kill -9`` then restart).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.store import HubStore

log = logging.getLogger("edgefleet.hub")

LEASE = "hub-singleton"
MIN_TTL_S = 10.0


def lease_ttl(tick_s: float) -> float:
    return max(MIN_TTL_S, 3.0 * tick_s)


def process_identity() -> str:
    """Names this process as a lease holder: host, pid and a nonce (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class SingletonWork:
    """The lease side of the tick: ``claim`` before the singleton work, ``release`` at stop."""

    def __init__(
        self,
        store: HubStore,
        tick_s: float,
        *,
        shared: bool,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.shared = shared
        self.holder = holder or process_identity()
        self.ttl_s = lease_ttl(tick_s)
        self.grace_s = 2.0 * tick_s
        self.clock = clock
        self.epoch: int | None = None
        self._cut_since: float | None = None
        self._client_lease: str | None = None

    def claim_client_id(self, client_id: str) -> None:
        """Hold ``client:<client_id>`` for this process or raise ``HubConfigError``."""
        if not self.shared:
            return
        name = f"client:{client_id}"
        if self.store.claim_lease(name, self.holder, self.ttl_s) is not None:
            self._client_lease = name
            return
        held = self.store.lease_holder(name)
        if held is not None and holder_is_gone(held[0]):
            self.store.release_lease(name, held[0])
            if self.store.claim_lease(name, self.holder, self.ttl_s) is not None:
                self._client_lease = name
                return
        who = held[0] if held is not None else "another hub"
        raise HubConfigError(
            f"broker.client_id {client_id!r} is in use by hub {who}; give each hub process"
            " its own client_id (the broker keeps one session per client id)"
        )

    def claim(self, connected: bool) -> tuple[bool, int | None]:
        """(do the singleton work now?, the epoch to fence it with; None = no fence)."""
        if not self.shared:
            return True, None
        now = self.clock()
        if connected:
            self._cut_since = None
        else:
            self._cut_since = self._cut_since if self._cut_since is not None else now
            if now - self._cut_since > self.grace_s:
                self.release()
                return False, None
        if self._client_lease is not None:
            self.store.claim_lease(self._client_lease, self.holder, self.ttl_s)
        epoch = self.store.claim_lease(LEASE, self.holder, self.ttl_s)
        if epoch != self.epoch:
            if epoch is not None:
                log.info("hub: %s holds the singleton work (epoch %d)", self.holder, epoch)
            elif self.epoch is not None:
                log.warning("hub: lost the singleton work (epoch %d) to another hub", self.epoch)
        self.epoch = epoch
        return epoch is not None, epoch

    def holds(self) -> bool:
        """Whether this hub did the singleton work at its last claim (always, unshared)."""
        return not self.shared or self.epoch is not None

    def release(self) -> None:
        if self.shared and self.epoch is not None:
            self.store.release_lease(LEASE, self.holder)
            log.info("hub: released the singleton work (epoch %d)", self.epoch)
            self.epoch = None

    def release_client_id(self) -> None:
        if self._client_lease is not None:
            self.store.release_lease(self._client_lease, self.holder)
            self._client_lease = None


def holder_is_gone(holder: str) -> bool:
    """True for a holder named by :func:`process_identity` on this host whose pid is gone."""
    host, _, rest = holder.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
