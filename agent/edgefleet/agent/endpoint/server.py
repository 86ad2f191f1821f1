"""The endpoint's HTTP/1.1 server: one asyncio event loop, one protocol object per connection.

Why hand-written: the agent may not depend on an HTTP framework (DESIGN.md §1)
and a bare :class:`asyncio.Protocol` does less per request than any of them:
one ``bytes.find`` for the head, one ``json.loads``, the model call inline, one
``transport.write``. docs/agent-endpoint.md has the benchmark against
FastAPI + uvicorn.

Invariants:

- Responses on a connection go out in request order: while a request runs on
  a worker thread the connection parses nothing further (pipelined bytes wait
  in the buffer, reading pauses past 1 MiB).
- Small requests run inline on the loop thread (a batch-1 model call is tens
  of microseconds; a thread hand-off would cost more); bodies of
  ``offload_body_bytes`` or more run on the worker pool so the loop keeps
  answering health checks.
- No client input can kill the loop: framing errors answer 4xx and close the
  connection; handler bugs answer 500 for that request only.
- Idle keep-alive connections close after ``keepalive_timeout_s``; a request
  whose bytes do not all arrive within ``request_timeout_s`` gets 408.
- :meth:`EndpointServer.stop` stops accepting, lets running requests finish
  (bounded by a grace period), then closes every connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

from edgefleet.agent.endpoint.app import EndpointApp, Outcome, error_body, run_job
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
from edgefleet.agent.errors import AgentError
from edgefleet.agent.serving import ServingSet
from edgefleet.agent.telemetry_sink import NullTelemetrySink, TelemetrySink

log = logging.getLogger("edgefleet.agent.endpoint")

_PAUSE_READING_AT = 1 << 20
_SWEEP_INTERVAL_S = 1.0


def _agent_version() -> str:
    try:
        from edgefleet.core import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - core always has it
        return "unknown"


class _Connection(asyncio.Protocol):
    def __init__(self, server: EndpointServer) -> None:
        self.server = server
        self.app = server.app
        self.metrics = server.metrics
        self.loop = server.loop
        cfg = server.config
        self.parser = RequestParser(
            max_header_bytes=cfg.max_header_bytes, max_body_bytes=cfg.max_body_bytes
        )
        self.offload_at = cfg.offload_body_bytes
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closing = False
        self.write_paused = False
        self.read_paused = False
        self.last_active = 0.0
        self.partial_since: float | None = None
        self.eof = False

    # --- asyncio callbacks ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.last_active = self.loop.time()
        server = self.server
        if len(server.connections) >= server.config.max_connections or server.stopping:
            self.metrics.connections_refused += 1
            self.closing = True
            transport.write(
                render_response(503, error_body("too many connections"), keep_alive=False)
            )
            transport.close()
            return
        server.connections.add(self)
        self.metrics.connections_open = len(server.connections)
        self.metrics.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self.metrics.connections_open = len(self.server.connections)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.loop.time()
        self.parser.feed(data)
        if self.busy or self.write_paused:
            if self.parser.buffered > _PAUSE_READING_AT and not self.read_paused:
                self.read_paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._drain()

    def eof_received(self) -> bool:
        # Half-close: answer what was fully received, then close (keep the transport open).
        self.eof = True
        if not self.busy:
            self._drain()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy:
            self._drain()

    # --- request processing -------------------------------------------------------
    def _drain(self) -> None:
        parser = self.parser
        while not (self.closing or self.busy or self.write_paused):
            try:
                req = parser.next_request()
            except HttpError as e:
                self._write(Outcome(e.status, error_body(e.message), close=True), None)
                return
            if req is None:
                if parser.continue_needed and self.transport is not None:
                    self.transport.write(CONTINUE_RESPONSE)
                    parser.continue_sent()
                if parser.idle:
                    self.partial_since = None
                elif self.partial_since is None:
                    self.partial_since = self.loop.time()
                break
            self.partial_since = None
            self._dispatch(req)
        if self.eof and not (self.busy or self.closing) and self.transport is not None:
            self.closing = True
            self.transport.close()
        elif self.read_paused and not self.busy and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

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
            future = self.loop.run_in_executor(self.server.executor, run_job, routed)
            future.add_done_callback(lambda f: self._job_done(f, req))

    def _job_done(self, future: asyncio.Future[Outcome], req: Request) -> None:
        self.busy = False
        if future.cancelled():
            outcome = Outcome(503, error_body("the agent is shutting down"), close=True)
        else:
            outcome = future.result()  # run_job never raises
        self._write(outcome, req)
        self._drain()

    def _write(self, outcome: Outcome, req: Request | None) -> None:
        transport = self.transport
        if transport is None:
            # The client left before its answer: the work was still done, account for it.
            self._account(outcome)
            return
        keep_alive = (
            req is not None and req.keep_alive and not outcome.close and not self.server.stopping
        )
        transport.write(
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
        self.metrics.response(outcome.status)
        self._account(outcome)
        if not keep_alive:
            self.closing = True
            transport.close()

    def _account(self, outcome: Outcome) -> None:
        if outcome.after is not None:
            try:
                outcome.after()
            except Exception:
                self.metrics.sink_failures += 1
                log.exception("telemetry sink failed")

    # --- housekeeping (called by the sweeper) -------------------------------------
    def expire(self, now: float) -> None:
        if self.closing or self.busy or self.transport is None:
            return
        cfg = self.server.config
        if self.partial_since is not None and now - self.partial_since > cfg.request_timeout_s:
            self._write(Outcome(408, error_body("request not completed in time"), close=True), None)
        elif self.parser.idle and now - self.last_active > cfg.keepalive_timeout_s:
            self.closing = True
            self.transport.close()

    def close_if_idle(self) -> None:
        if not self.busy and self.transport is not None:
            self.closing = True
            self.transport.close()


class EndpointServer:
    """The local OIP v2 endpoint over ``serving``, reporting to ``telemetry_sink``.

    ``start()``/``stop()`` run it on a background thread with its own event
    loop; ``start_async()``/``stop_async()`` run it on the caller's loop.
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
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
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

    # --- on the caller's loop -----------------------------------------------------
    async def start_async(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="edgefleet-infer"
        )
        try:
            self._server = await self.loop.create_server(
                lambda: _Connection(self),
                self.config.host,
                self.config.port,
                reuse_address=True,
                backlog=self.config.backlog,
            )
        except OSError as e:
            self.executor.shutdown(wait=False)
            raise AgentError(
                f"cannot listen on {self.config.host}:{self.config.port}: {e.strerror or e}"
            ) from e
        self.app.schedule = self.loop.call_soon
        sock = self._server.sockets[0]
        self._port = int(sock.getsockname()[1])
        self._sweeper = self.loop.create_task(self._sweep())
        log.info("endpoint listening on %s", self.url)

    async def stop_async(self, grace_s: float = 5.0) -> None:
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = self.loop.time() + grace_s
        while any(c.busy for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.app.flush_telemetry()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_S)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.expire(now)

    # --- on a background thread ---------------------------------------------------
    def start(self) -> None:
        """Listen on a background thread; returns once accepting (raises if it cannot)."""
        if self._thread is not None:
            raise RuntimeError("the endpoint is already running")
        started = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as e:
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="edgefleet-endpoint", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, finish running requests (up to ``grace_s``), close everything."""
        thread = self._thread
        if thread is None:
            return
        loop = self.loop
        future = asyncio.run_coroutine_threadsafe(self.stop_async(grace_s), loop)
        try:
            future.result(timeout=grace_s + 5.0)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=grace_s + 5.0)
            self._thread = None

    def __enter__(self) -> EndpointServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
