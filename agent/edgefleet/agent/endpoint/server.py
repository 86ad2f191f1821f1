"""The endpoint's HTTP/1.1 server: one event-loop thread on ``selectors``, one object per connection.

Why hand-written: the agent may not depend on an HTTP framework (DESIGN.md §1)
and a bare event loop does less per request than any of them: one
``bytes.find`` for the head, one ``json.loads``, the model call inline, one
``send``. Why not asyncio: importing it costs about 2 MB resident (it pulls
in ``ssl`` and some forty modules), a seventh of what the whole agent may
add to a bare onnxruntime process. What the endpoint needs of an event loop is
small and lives here: non-blocking sockets with write buffering and
back-pressure, a wake-up socket for worker threads, "call soon" callbacks
run at the end of each pass, and a one-second timer. docs/agent-endpoint.md
has the benchmark against FastAPI + uvicorn.

Invariants:

- Responses on a connection go out in request order: while a request runs on
  a worker thread the connection parses nothing further (pipelined bytes wait
  in the buffer, reading pauses past 1 MiB); while more than 64 KiB of
  answers wait to be sent, no further request is parsed either.
- Small requests run inline on the loop thread (a batch-1 model call is tens
  of microseconds; a thread hand-off would cost more); bodies of
  ``offload_body_bytes`` or more run on the worker pool so the loop keeps
  answering health checks.
- No client input can kill the loop: framing errors answer 4xx and close the
  connection; handler bugs answer 500 for that request only; an exception in
  a connection's socket handling closes that connection only.
- Idle keep-alive connections close after ``keepalive_timeout_s``; a request
  whose bytes do not all arrive within ``request_timeout_s`` gets 408.
- :meth:`EndpointServer.stop` stops accepting, lets running requests finish
  and pending answers drain (bounded by a grace period), then closes every
  connection and hands the last inference accounting to the sink.
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

from edgefleet.agent.endpoint.app import EndpointApp, Job, Outcome, error_body, run_job
from edgefleet.agent.endpoint.config import EndpointConfig
from edgefleet.agent.endpoint.http11 import (
    CONTINUE_RESPONSE,
    DateHeader,
    HttpError,
    Request,
    RequestParser,
    render_response,
)
from edgefleet.agent.endpoint.metrics import EndpointMetrics
from edgefleet.agent.errors import EndpointError
from edgefleet.agent.serving import ServingSet
from edgefleet.agent.telemetry_sink import NullTelemetrySink, TelemetrySink

log = logging.getLogger("edgefleet.agent.endpoint")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_RECV_BYTES = 256 * 1024
_WRITE_HIGH = 64 * 1024  # stop parsing further requests while this much waits to be sent
_WRITE_LOW = 16 * 1024  # ... and go on once the backlog is down to this
_PAUSE_READING_AT = 1 << 20
_SWEEP_INTERVAL_S = 1.0
_ACCEPT_PER_PASS = 64


def _agent_version() -> str:
    try:
        from edgefleet.core import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - core always has it
        return "unknown"


class _Connection:
    """One client connection: reads, parses, dispatches and writes in request order."""

    def __init__(self, server: EndpointServer, sock: socket.socket) -> None:
        self.server = server
        self.app = server.app
        self.metrics = server.metrics
        cfg = server.config
        self.parser = RequestParser(
            max_header_bytes=cfg.max_header_bytes, max_body_bytes=cfg.max_body_bytes
        )
        self.offload_at = cfg.offload_body_bytes
        self.sock: socket.socket | None = sock
        self._out = bytearray()
        self._mask = 0
        self._close_when_flushed = False
        self.busy = False
        self.closing = False
        self.write_paused = False
        self.read_paused = False
        self.last_active = time.monotonic()
        self.partial_since: float | None = None
        self.eof = False

    # --- socket side ------------------------------------------------------------------
    def start(self) -> None:
        server = self.server
        if len(server.connections) >= server.config.max_connections or server.stopping:
            self.metrics.connections_refused += 1
            self.closing = True
            self.send(render_response(503, error_body("too many connections"), keep_alive=False))
            self.close()
            return
        server.connections.add(self)
        self.metrics.connections_open = len(server.connections)
        self.metrics.connections_total += 1
        self._update_interest()

    def on_events(self, mask: int) -> None:
        if mask & _WRITE and self.sock is not None:
            self._on_writable()
        if mask & _READ and self.sock is not None:
            self._on_readable()

    def _on_readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if data:
            self.data_received(data)
        else:
            self.eof_received()
        self._update_interest()

    def _on_writable(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        del self._out[:sent]
        if not self._out and self._close_when_flushed:
            self._close_now()
            return
        if self.write_paused and len(self._out) <= _WRITE_LOW:
            self.write_paused = False
            if not self.busy:
                self._drain()
        self._update_interest()

    def send(self, data: bytes) -> None:
        """Write ``data`` (buffered when the socket cannot take it all now)."""
        sock = self.sock
        if sock is None or self._close_when_flushed:
            return
        if not self._out:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort()
                return
            if sent == len(data):
                return
            self._out += memoryview(data)[sent:]
        else:
            self._out += data
        if len(self._out) > _WRITE_HIGH:
            self.write_paused = True
        self._update_interest()

    def close(self) -> None:
        """Close once everything written so far is sent; read nothing more."""
        self.closing = True
        if self.sock is None:
            return
        if not self._out:
            self._close_now()
        else:
            self._close_when_flushed = True
            self._update_interest()

    def abort(self) -> None:
        """Close now, dropping whatever was not sent."""
        self.closing = True
        if self.sock is not None:
            self._close_now()

    def _close_now(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self._mask:
            self.server.selector.unregister(sock)
            self._mask = 0
        try:
            sock.close()
        except OSError:
            pass
        self._out.clear()
        self.connection_lost()

    def _update_interest(self) -> None:
        sock = self.sock
        if sock is None:
            return
        mask = 0
        if not (self.closing or self.eof or self.read_paused):
            mask |= _READ
        if self._out:
            mask |= _WRITE
        if mask == self._mask:
            return
        selector = self.server.selector
        if not self._mask:
            selector.register(sock, mask, self.on_events)
        elif not mask:
            selector.unregister(sock)
        else:
            selector.modify(sock, mask, self.on_events)
        self._mask = mask

    @property
    def flushing(self) -> bool:
        return self.sock is not None and bool(self._out)

    # --- protocol side -------------------------------------------------------------------
    def connection_lost(self) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self.metrics.connections_open = len(self.server.connections)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        self.parser.feed(data)
        if self.busy or self.write_paused:
            if self.parser.buffered > _PAUSE_READING_AT:
                self.read_paused = True
            return
        self._drain()

    def eof_received(self) -> None:
        # Half-close: answer what was fully received, then close.
        self.eof = True
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        parser = self.parser
        while not (self.closing or self.busy or self.write_paused):
            try:
                req = parser.next_request()
            except HttpError as e:
                self._write(Outcome(e.status, error_body(e.message), close=True), None)
                return
            if req is None:
                if parser.continue_needed and self.sock is not None:
                    self.send(CONTINUE_RESPONSE)
                    parser.continue_sent()
                if parser.idle:
                    self.partial_since = None
                elif self.partial_since is None:
                    self.partial_since = time.monotonic()
                break
            self.partial_since = None
            self._dispatch(req)
        if self.eof and not (self.busy or self.closing) and self.sock is not None:
            self.close()
        elif self.read_paused and not self.busy and self.sock is not None:
            self.read_paused = False
        self._update_interest()

    def _dispatch(self, req: Request) -> None:
        try:
            routed = self.app.route(req)
        except Exception as e:  # a routing bug must not kill the connection's loop
            log.exception("routing failed")
            routed = Outcome(500, error_body(f"internal error: {type(e).__name__}"))
        if isinstance(routed, Outcome):
            self._write(routed, req)
        elif len(req.body) < self.offload_at:
            self._write(run_job(routed), req)
        else:
            self.busy = True
            self.server.offload(routed, lambda outcome: self._job_done(outcome, req))

    def _job_done(self, outcome: Outcome, req: Request) -> None:
        self.busy = False
        self._write(outcome, req)
        self._drain()

    def _write(self, outcome: Outcome, req: Request | None) -> None:
        if self.sock is None:
            # The client left before its answer: the work was still done, account for it.
            self._account(outcome)
            return
        keep_alive = (
            req is not None and req.keep_alive and not outcome.close and not self.server.stopping
        )
        # Accounted before the bytes go out, so a client holding its answer can
        # count on the request being counted (metrics, probation, telemetry);
        # the costly part, the sink call for inferences, still runs at the end
        # of the event-loop pass, after the answers were sent.
        self.metrics.response(outcome.status)
        self._account(outcome)
        self.send(
            render_response(
                outcome.status,
                outcome.body,
                content_type=outcome.content_type,
                keep_alive=keep_alive,
                http11=req.http11 if req is not None else True,
                date_line=self.server.date.line(),
                extra_headers=outcome.extra_headers,
            )
        )
        if not keep_alive:
            self.close()

    def _account(self, outcome: Outcome) -> None:
        if outcome.after is not None:
            try:
                outcome.after()
            except Exception:
                self.metrics.sink_failures += 1
                log.exception("telemetry sink failed")

    # --- housekeeping (called by the sweeper) -------------------------------------
    def expire(self, now: float) -> None:
        if self.closing or self.busy or self.sock is None:
            return
        cfg = self.server.config
        if self.partial_since is not None and now - self.partial_since > cfg.request_timeout_s:
            self._write(Outcome(408, error_body("request not completed in time"), close=True), None)
        elif self.parser.idle and now - self.last_active > cfg.keepalive_timeout_s:
            self.close()

    def close_if_idle(self) -> None:
        if not self.busy and self.sock is not None:
            self.close()


class _WorkerPool:
    """Threads running big requests; each result goes back through ``done``."""

    def __init__(self, workers: int) -> None:
        self._max = workers
        self._queue: SimpleQueue[tuple[Job, Callable[[Outcome], None]] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, job: Job, done: Callable[[Outcome], None]) -> None:
        if len(self._threads) < self._max:
            thread = threading.Thread(
                target=self._work, name=f"edgefleet-infer-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._queue.put((job, done))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job, done = item
            done(run_job(job))

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
    ) -> None:
        self.config = config
        self.serving = serving
        self.sink: TelemetrySink = telemetry_sink or NullTelemetrySink()
        self.metrics = EndpointMetrics()
        self.app = EndpointApp(
            serving, self.sink, self.metrics, token=config.token, agent_version=_agent_version()
        )
        self.date = DateHeader()
        self.connections: set[_Connection] = set()
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
        wake = self._wake_w
        if wake is None:
            return
        try:
            wake.send(b"\0")
        except OSError:
            pass  # the wake-up socket is full (a wake-up is pending anyway) or closed

    def offload(self, job: Job, done: Callable[[Outcome], None]) -> None:
        """Run ``job`` on a worker thread; ``done(outcome)`` then runs on the loop thread."""
        self._pool.submit(job, lambda outcome: self.call_soon_threadsafe(lambda: done(outcome)))

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
                for key, mask in self.selector.select(timeout):
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
                    or not any(c.busy or c.flushing for c in self.connections)
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

    def _run_callbacks(self) -> None:
        while self._from_threads:
            callback = self._from_threads.popleft()
            try:
                callback()
            except Exception:
                log.exception("endpoint callback failed")
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

    def _begin_stop(self, grace_s: float) -> None:
        self.stopping = True
        for listener in self._listeners:
            self.selector.unregister(listener)
            listener.close()
        self._listeners = []
        for conn in list(self.connections):
            conn.close_if_idle()
        self._stop_deadline = time.monotonic() + grace_s
