"""The endpoint's HTTP/1.1 server: one event-loop thread on ``selectors``, one object per connection.

Why hand-written: the agent may not depend on an HTTP framework (docs/architecture.md, Import rules)
and a bare event loop does less per request than any of them: one
``bytes.find`` for the head, one ``json.loads``, the model call inline, one
``send``. Why not asyncio: importing it costs about 2 MB resident (it pulls
in ``ssl`` and some forty modules), a seventh of what the whole agent may
add to a bare onnxruntime process. What the endpoint needs of an event loop is
small and lives here: a wake-up socket for worker threads, "call soon"
callbacks run at the end of each pass, and a one-second timer; the
non-blocking sockets with write buffering and back-pressure, one object per
connection, are in :mod:`~edgefleet.agent.endpoint.connection`.
docs/agent-endpoint.md has the benchmark against FastAPI + uvicorn.

Invariants (the per-connection ones are in the connection module):

- No client input can kill the loop: an exception in a connection's socket
  handling closes that connection only.
- :meth:`EndpointServer.stop` stops accepting, lets running requests finish
  and pending answers drain (bounded by a grace period), then closes every
  connection and hands the last inference accounting to the sink.
- Two connection pools: at most ``max_unauth_connections`` that have not yet
  had a head admitted (token checked) and at most ``max_connections`` that
  have. A new connection always gets in: at the unauthenticated limit the one
  waiting longest that has sent nothing is closed (the oldest of all when
  every one has sent something). A head admitted with the authenticated pool full
  closes the longest idle authenticated connection, or gets 503 when none is
  idle. So neither idle sockets nor slow heads lock a client with the token out.
- The tensor budget is charged in admission order: a request that does not
  fit waits (its connection reads nothing more) and the waiting ones are
  resumed first come, first served whenever a charge is released. Small
  requests (:meth:`TensorBudget.is_small`) that fit go ahead of waiting big
  ones: they hold their charge for a moment only.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from edgefleet.agent.endpoint.app import EndpointApp, Job, Outcome, run_job
from edgefleet.agent.endpoint.budget import EndpointLimits, TensorBudget
from edgefleet.agent.endpoint.config import EndpointConfig
from edgefleet.agent.endpoint.connection import _Connection
from edgefleet.agent.endpoint.http11 import DateHeader
from edgefleet.agent.endpoint.metrics import EndpointMetrics
from edgefleet.agent.errors import EndpointError
from edgefleet.agent.model.serving import ServingSet
from edgefleet.agent.telemetry_sink import NullTelemetrySink, TelemetrySink

log = logging.getLogger("edgefleet.agent.endpoint")

_READ = selectors.EVENT_READ
_SWEEP_INTERVAL_S = 1.0
_ACCEPT_PER_PASS = 64


def _agent_version() -> str:
    try:
        from edgefleet.core import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - core always has it
        return "unknown"


class _WorkerPool:
    """Threads running big requests and, after their answers, their telemetry summaries."""

    def __init__(self, workers: int) -> None:
        self._max = workers
        self._queue: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, work: Callable[[], None]) -> None:
        if len(self._threads) < self._max:
            thread = threading.Thread(
                target=self._work, name=f"edgefleet-infer-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._queue.put(work)

    def _work(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:  # pragma: no cover - run_job and summarise never raise
                log.exception("endpoint worker failed")

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


class EndpointServer:
    """The local OIP v2 endpoint over ``serving``, reporting to ``telemetry_sink``.

    ``start()`` listens (raising :class:`EndpointError` when it cannot) and
    serves on a background thread; ``stop()`` ends it.
    """

    def __init__(
        self,
        config: EndpointConfig,
        serving: ServingSet,
        telemetry_sink: TelemetrySink | None = None,
        release_memory: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        # Called after a big request's charge is released, before the next
        # waiting one starts (the daemon passes malloc_trim): the worker
        # threads allocate in their own heaps, and memory one of them freed
        # must go back to the system before another one's request grows.
        self._release_memory = release_memory
        self.serving = serving
        self.sink: TelemetrySink = telemetry_sink or NullTelemetrySink()
        self.metrics = EndpointMetrics()
        self.limits: EndpointLimits = config.limits()
        self.budget = TensorBudget(self.limits)
        self.app = EndpointApp(
            serving,
            self.sink,
            self.metrics,
            token=config.token,
            agent_version=_agent_version(),
            limits=self.limits,
        )
        self.date = DateHeader()
        self.connections: set[_Connection] = set()
        # Both pools keep arrival order (dicts): the oldest is the first to go.
        self._unauthenticated: dict[_Connection, None] = {}
        self._authenticated: dict[_Connection, None] = {}
        self._waiting: deque[_Connection] = deque()
        # Answers written whose telemetry rows a worker is still computing, and the
        # feedback held until there are none (EndpointApp's module docstring).
        self.summaries_running = 0
        self._held: list[Callable[[], object]] = []
        self._wake_scheduled = False
        self.stopping = False
        self.selector: selectors.BaseSelector = None  # type: ignore[assignment]  # set by start()
        self._listeners: list[socket.socket] = []
        self._pool = _WorkerPool(config.workers)
        self._soon: list[Callable[[], object]] = []
        self._from_threads: deque[Callable[[], object]] = deque()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stop_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the endpoint is not listening")
        return self._port

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Listen, then serve on a background thread; raises EndpointError if it cannot listen."""
        if self._thread is not None:
            raise RuntimeError("the endpoint is already running")
        self._listeners = self._listen()
        self._port = int(self._listeners[0].getsockname()[1])
        self.selector = selectors.DefaultSelector()
        for listener in self._listeners:
            self.selector.register(listener, _READ, lambda _mask, s=listener: self._accept(s))
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.selector.register(self._wake_r, _READ, self._on_wake)
        self.app.schedule = self.call_soon
        self._thread = threading.Thread(target=self._run, name="edgefleet-endpoint", daemon=True)
        self._thread.start()
        log.info("endpoint listening on %s", self.url)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, finish running requests (up to ``grace_s``), close everything."""
        thread = self._thread
        if thread is None:
            return
        self.call_soon_threadsafe(lambda: self._begin_stop(grace_s))
        thread.join(timeout=grace_s + 5.0)
        self._thread = None

    def __enter__(self) -> EndpointServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _listen(self) -> list[socket.socket]:
        cfg = self.config
        where = f"{cfg.host}:{cfg.port}"
        # An ASCII host goes as bytes: a str would load the IDNA codec (and
        # unicodedata) for the life of the process.
        host: str | bytes = cfg.host.encode("ascii") if cfg.host.isascii() else cfg.host
        try:
            infos = socket.getaddrinfo(
                host, cfg.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except OSError as e:
            raise EndpointError(f"cannot listen on {where}: {e.strerror or e}") from e
        socks: list[socket.socket] = []
        port = cfg.port
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # With port 0, every address of the host gets the port the first one got.
                sock.bind((address[0], port, *address[2:]))
                port = int(sock.getsockname()[1])
                sock.listen(cfg.backlog)
                sock.setblocking(False)
        except OSError as e:
            for sock in socks:
                sock.close()
            raise EndpointError(f"cannot listen on {where}: {e.strerror or e}") from e
        return socks

    # --- the loop ---------------------------------------------------------------------
    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop thread at the end of this pass (loop thread only)."""
        self._soon.append(callback)

    def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop thread soon (any thread)."""
        self._from_threads.append(callback)
        self._wake()

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is None:
            return
        try:
            wake.send(b"\0")
        except OSError:
            pass  # the wake-up socket is full (a wake-up is pending anyway) or closed

    def offload(
        self,
        job: Job,
        done: Callable[[Outcome], None],
        answer: Callable[[Outcome, Callable[[], None]], None] | None = None,
    ) -> None:
        """Run ``job`` on a worker thread; ``done(outcome)`` then runs on the loop thread.

        With ``answer``, the worker calls ``answer(outcome, post)`` instead of posting
        ``done`` itself: the connection writes the answer from the worker (no wake-up of
        the loop between the result and its bytes) and calls ``post`` before sending,
        which queues ``done`` (the bookkeeping) for the loop; the loop is woken only
        once the answer is sent, so the woken loop does not contend with the send.
        """

        def work() -> None:
            outcome = run_job(job)
            if answer is None:
                self.call_soon_threadsafe(lambda: done(outcome))
                return

            posted = False

            def post() -> None:
                nonlocal posted
                posted = True
                self._from_threads.append(lambda: done(outcome))

            try:
                answer(outcome, post)
            except Exception:  # a bug: the loop still answers (or closes) and frees the request
                log.exception("writing an answer from a worker failed")
                if not posted:
                    post()
            finally:
                self._wake()

        self._pool.submit(work)

    def summarise_later(
        self, outcome: Outcome, summarised: Callable[[Callable[[], None] | None], None]
    ) -> None:
        """Run ``outcome``'s summary on a worker thread, its answer being already written
        (the loop does not share the interpreter with it while sending); what it returned
        then goes to ``summarised`` on the loop thread."""

        def work() -> None:
            record = self.app.summarise(outcome)
            self.call_soon_threadsafe(lambda: summarised(record))

        self.summaries_running += 1
        self._pool.submit(work)

    # --- answered requests still being summarised (loop thread) -------------------------
    def summary_finished(self) -> None:
        self.summaries_running -= 1
        if not self.summaries_running and self._held:
            held, self._held = self._held, []
            for callback in held:
                self.call_soon(callback)

    def after_summaries(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once no answered request is being summarised (feedback)."""
        if self.summaries_running:
            self._held.append(callback)
        else:
            self.call_soon(callback)

    def _run(self) -> None:
        next_sweep = time.monotonic() + _SWEEP_INTERVAL_S
        try:
            while True:
                now = time.monotonic()
                if self._soon or self._from_threads:
                    timeout = 0.0
                elif self._stop_deadline is not None:
                    timeout = 0.02
                else:
                    timeout = max(0.0, next_sweep - now)
                events = self.selector.select(timeout)
                # Worker results first: the bookkeeping of an answer a worker wrote itself
                # (the rest of its bytes, the budget, the summary feedback waits for) is done
                # before anything its client sent after it is read
                # (connection._answer_from_worker).
                self._run_thread_callbacks()
                for key, mask in events:
                    try:
                        key.data(mask)
                    except Exception:  # one connection's trouble never stops the loop
                        log.exception("endpoint connection failed")
                        if isinstance(getattr(key.data, "__self__", None), _Connection):
                            key.data.__self__.abort()
                self._run_callbacks()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_INTERVAL_S
                    for conn in list(self.connections):
                        conn.expire(now)
                if self._stop_deadline is not None and (
                    now >= self._stop_deadline
                    or not (
                        self.summaries_running
                        or any(c.busy or c.flushing for c in self.connections)
                    )
                ):
                    break
        finally:
            for conn in list(self.connections):
                conn.abort()
            self._pool.shutdown()
            try:
                self.app.flush_telemetry()
            finally:
                self.selector.close()
                for sock in (self._wake_r, self._wake_w):
                    if sock is not None:
                        sock.close()

    def _run_thread_callbacks(self) -> None:
        while self._from_threads:
            callback = self._from_threads.popleft()
            try:
                callback()
            except Exception:
                log.exception("endpoint callback failed")

    def _run_callbacks(self) -> None:
        self._run_thread_callbacks()
        soon, self._soon = self._soon, []
        for callback in soon:
            try:
                callback()
            except Exception:
                log.exception("endpoint callback failed")

    def _on_wake(self, _mask: int) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_PER_PASS):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors, for example: try again next pass
                log.warning("cannot accept a connection: %s", e)
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _Connection(self, sock).start()

    # --- connection pools (loop thread) -------------------------------------------------
    def add_unauthenticated(self, conn: _Connection) -> None:
        """Admit a new connection, closing the longest-waiting unauthenticated one if full."""
        pool = self._unauthenticated
        while len(pool) >= self.config.max_unauth_connections:
            # The oldest that has sent nothing goes first: a client whose head
            # already waits in the socket is only about to be read.
            victim = next((c for c in pool if c.silent()), None) or next(iter(pool))
            pool.pop(victim)
            self.metrics.connections_evicted += 1
            victim.abort()
        pool[conn] = None
        self.connections.add(conn)

    def promote(self, conn: _Connection) -> bool:
        """``conn`` had a head admitted; False when the authenticated pool has no room."""
        pool = self._authenticated
        if len(pool) >= self.config.max_connections:
            idle = [c for c in pool if c.idle]
            if not idle:
                return False
            victim = min(idle, key=lambda c: c.last_active)
            pool.pop(victim)
            self.metrics.connections_evicted += 1
            victim.close()
        self._unauthenticated.pop(conn, None)
        pool[conn] = None
        return True

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        self._unauthenticated.pop(conn, None)
        self._authenticated.pop(conn, None)
        if conn in self._waiting:  # the ones behind it must not wait for a gone client
            self._waiting.remove(conn)
            self._schedule_wake()

    # --- tensor budget (loop thread) ----------------------------------------------------
    def acquire(self, conn: _Connection, charge: int) -> bool:
        """Charge ``conn``'s request, or queue it (first come, first served) and return False."""
        if charge == 0:
            return True
        waiting = self._waiting
        if self.budget.is_small(charge) and self.budget.try_acquire(charge):
            # Small requests run inline within this pass (the charge is back
            # before the next one): they never queue behind big batches.
            self.metrics.budget_in_use = self.budget.in_use
            return True
        first = not waiting or waiting[0] is conn
        if first and self.budget.try_acquire(charge):
            if waiting:
                waiting.popleft()
            self.metrics.budget_in_use = self.budget.in_use
            return True
        if conn not in waiting:
            waiting.append(conn)
            self.metrics.budget_waits += 1
        return False

    def release(self, charge: int) -> None:
        self.budget.release(charge)
        self.metrics.budget_in_use = self.budget.in_use
        if self._release_memory is not None and not self.budget.is_small(charge):
            self.call_soon(self._release_memory)
        self._schedule_wake()

    def _schedule_wake(self) -> None:
        if self._waiting and not self._wake_scheduled:
            self._wake_scheduled = True
            self.call_soon(self._wake_waiting)

    def _wake_waiting(self) -> None:
        self._wake_scheduled = False
        waiting = self._waiting
        while waiting:
            first = waiting[0]
            if first.sock is None or first.closing:
                waiting.popleft()
                continue
            first.resume()
            if waiting and waiting[0] is first:
                return  # still does not fit: the others wait behind it

    def _begin_stop(self, grace_s: float) -> None:
        self.stopping = True
        for listener in self._listeners:
            self.selector.unregister(listener)
            listener.close()
        self._listeners = []
        for conn in list(self.connections):
            conn.close_if_idle()
        self._stop_deadline = time.monotonic() + grace_s
