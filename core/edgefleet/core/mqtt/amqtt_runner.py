"""amqtt's MQTT broker on its own asyncio event loop in a daemon thread.

One runner for both places that embed amqtt: the ``AmqttBroker`` test fixture
(:mod:`edgefleet.core.testing.brokers`) and the hub's ``hub serve
--embedded-broker``. Each hands it an amqtt broker config dict (listeners,
plugins); what the broker allows is theirs to decide, running it is this
module's job.

Invariants:

- amqtt is imported by :meth:`AmqttRunner.start`, never when this module is
  imported: amqtt is only in the ``hub`` extra, and code that merely could
  embed a broker must not pay for loading it.
- ``start(timeout_s)`` returns once every listener is bound and listening
  (amqtt's ``Broker.start`` awaits ``asyncio.start_server``), or raises
  :class:`~edgefleet.core.errors.TransportError` saying why: amqtt is not
  installed, an address is already in use, amqtt refused the config, or the
  broker did not come up within the timeout. A failed start leaves no thread
  or loop behind.
- ``stop(timeout_s)`` shuts the broker down (sessions dropped, listeners
  closed), cancels whatever tasks are left on the loop, closes it and joins
  the thread. It never raises, so it is safe in ``finally`` blocks; a broker
  that does not stop in time is logged and left to its daemon thread.
- A stopped runner can be started again; each start gets a new loop and thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
from collections.abc import Mapping
from typing import Any

from edgefleet.core.errors import TransportError

log = logging.getLogger("edgefleet.core.mqtt.amqtt")

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
AMQTT_MISSING = "the amqtt broker needs amqtt: pip install 'edgefleet[hub]'"


class AmqttRunner:
    """Start and stop one amqtt ``Broker`` built from ``config`` on a private event loop."""

    def __init__(self, config: Mapping[str, Any], *, thread_name: str = "amqtt-broker") -> None:
        self._config = dict(config)
        self._thread_name = thread_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._shutdown_timeout_s = STOP_TIMEOUT_S

    @property
    def binds(self) -> tuple[str, ...]:
        """The ``host:port`` of each configured listener, for messages."""
        listeners = self._config.get("listeners") or {}
        return tuple(
            str(listener["bind"])
            for listener in listeners.values()
            if isinstance(listener, Mapping) and "bind" in listener
        )

    @property
    def running(self) -> bool:
        thread = self._thread
        return (
            thread is not None
            and thread.is_alive()
            and self._ready.is_set()
            and self._error is None
        )

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Run the broker; return once it listens (see the module docstring for errors)."""
        if self.running:
            return
        try:
            from amqtt.broker import Broker
        except ImportError as e:
            raise TransportError(AMQTT_MISSING) from e
        where = ", ".join(self.binds) or "its default listener"
        self._ready.clear()
        self._error = None
        # Loop and task exist before the thread does, so stop() can always reach them.
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._task = loop.create_task(self._serve(Broker, loop))
        self._thread = threading.Thread(
            target=self._run, args=(loop, self._task), name=self._thread_name, daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise TransportError(f"amqtt broker did not start on {where} within {timeout_s:g} s")
        error = self._error
        if error is not None:
            self.stop()
            in_use = _address_in_use(error)
            if in_use is not None:
                raise TransportError(
                    f"amqtt broker not started: {where} is already in use ({in_use})"
                ) from error
            raise TransportError(f"amqtt broker did not start on {where}: {error}") from error

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Shut the broker down and join its thread, waiting at most about ``timeout_s``."""
        loop, task, thread = self._loop, self._task, self._thread
        self._loop = self._task = self._thread = None
        if loop is None or task is None or thread is None:
            return
        self._shutdown_timeout_s = timeout_s
        if thread.is_alive():
            # The loop may close between the check and the call once the broker failed.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
            thread.join(timeout_s)
        if thread.is_alive():
            log.warning(
                "amqtt broker on %s did not stop within %g s; leaving its thread",
                ", ".join(self.binds),
                timeout_s,
            )

    async def _serve(self, broker_class: Any, loop: asyncio.AbstractEventLoop) -> None:
        broker = broker_class(self._config, loop=loop)
        await broker.start()
        self._ready.set()
        try:
            # Runs until stop() cancels this task.
            await loop.create_future()
        finally:
            await asyncio.wait_for(broker.shutdown(), self._shutdown_timeout_s)

    def _run(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            if not self._ready.is_set():  # cancelled by a start() that gave up waiting
                self._error = TransportError("start was abandoned")
        except BaseException as e:  # handed to start() in the caller's thread
            if self._ready.is_set():
                log.warning(
                    "amqtt broker on %s stopped with an error: %r", ", ".join(self.binds), e
                )
            else:
                self._error = e
        finally:
            self._ready.set()  # a failed boot must not leave start() waiting out its timeout
            _close_loop(loop)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await whatever amqtt left on ``loop`` (handlers, plugins), then close it."""
    try:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _address_in_use(error: BaseException) -> OSError | None:
    """The EADDRINUSE behind ``error`` (amqtt wraps it in ``BrokerError``), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.EADDRINUSE:
            return current
        current = current.__cause__ or current.__context__
    return None
