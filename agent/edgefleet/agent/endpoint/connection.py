"""One client connection of the endpoint: reads, parses, dispatches and writes in request order.

The event loop that drives these objects is in :mod:`~edgefleet.agent.endpoint.server`;
framing is :mod:`~edgefleet.agent.endpoint.http11`, routing
:mod:`~edgefleet.agent.endpoint.app`.

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
  connection; handler bugs answer 500 for that request only.
- Idle keep-alive connections close after ``keepalive_timeout_s``; a request
  whose bytes do not all arrive within ``request_timeout_s`` gets 408, one whose
  head does not within ``header_timeout_s`` too.
- Nothing of a body is read before its head was admitted: the token checked
  (401 and close otherwise) and the request charged to the server's tensor
  budget. A request the budget cannot take now waits with reading paused; the
  charge is released when its answer is written or the connection is lost
  with no job running.
- A binary inference request (``Inference-Header-Content-Length``) is admitted
  twice: its head as above, then, once its JSON header is buffered and before
  any of its binary tensors is read (reading stops at the header's end), at
  the charge its header declares (:meth:`EndpointApp.admit_binary`); that
  charge replaces the head's, and a request that must wait for it holds none.
- A connection is *unauthenticated* until one of its heads is admitted; the
  server keeps separate limits for both kinds (:mod:`~edgefleet.agent.endpoint.server`).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgefleet.agent.endpoint.app import Job, Outcome, WaitsForTelemetry, error_body, run_job
from edgefleet.agent.endpoint.http11 import (
    CONTINUE_RESPONSE,
    Head,
    HttpError,
    Request,
    RequestParser,
    render_response,
)

if TYPE_CHECKING:  # the server imports this module; the type is only for annotations
    from edgefleet.agent.endpoint.server import EndpointServer

log = logging.getLogger("edgefleet.agent.endpoint")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_RECV_BYTES = 256 * 1024
_WRITE_HIGH = 64 * 1024  # stop parsing further requests while this much waits to be sent
_WRITE_LOW = 16 * 1024  # ... and go on once the backlog is down to this
_PAUSE_READING_AT = 1 << 20


class _Connection:
    """One client connection: reads, parses, dispatches and writes in request order."""

    def __init__(self, server: EndpointServer, sock: socket.socket) -> None:
        self.server = server
        self.app = server.app
        self.metrics = server.metrics
        cfg = server.config
        limits = server.limits
        # Binary bodies may be larger than JSON ones (a binary byte is one tensor byte);
        # the app refuses a JSON body over max_body_bytes from its head.
        self.parser = RequestParser(
            max_header_bytes=cfg.max_header_bytes,
            max_body_bytes=limits.max_body_bytes + limits.per_request,
        )
        self.offload_at = cfg.offload_body_bytes
        self.sock: socket.socket | None = sock
        self._out = bytearray()
        self._mask = 0
        self._close_when_flushed = False
        self.busy = False
        self.summarising = False  # answered, its telemetry rows still being computed
        # A worker writing a job's answer itself holds this; the loop takes it to close the
        # socket and to collect what the worker could not send (_answer_from_worker).
        self.lock = threading.Lock()
        self._worker_unsent: memoryview | None = None
        self._worker_failed = False
        self._worker_accounted = False
        self._worker_after_failed = False
        self.closing = False
        self.write_paused = False
        self.read_paused = False
        self.last_active = self.accepted_at = time.monotonic()
        self.partial_since: float | None = None
        self.eof = False
        self.authenticated = False  # one of its heads was admitted
        self.admitted = False  # the head being received was admitted
        self.waiting = False  # admitted head waits for room in the tensor budget
        self.charge = 0  # tensor bytes charged for the request in progress
        self.header_wait: int | None = None  # binary request: JSON header bytes to price
        self.tensor_offset = 0  # binary request: where its tensors start in the body

    # --- socket side ------------------------------------------------------------------
    def start(self) -> None:
        server = self.server
        if server.stopping:
            self.refuse()
            return
        server.add_unauthenticated(self)
        self.metrics.connections_open = len(server.connections)
        self.metrics.connections_total += 1
        self._update_interest()

    def refuse(self) -> None:
        """Answer 503 and close (no room for another client)."""
        self.metrics.connections_refused += 1
        self.closing = True
        self.send(render_response(503, error_body("too many connections"), keep_alive=False))
        self.close()

    def resume(self) -> None:
        """The budget may have room now: try the waiting request again (loop thread)."""
        if not self.waiting or self.sock is None:
            return
        self.waiting = False
        self.read_paused = False
        self._drain()

    def on_events(self, mask: int) -> None:
        if mask & _WRITE and self.sock is not None:
            self._on_writable()
        if mask & _READ and self.sock is not None:
            self._on_readable()

    def _on_readable(self) -> None:
        assert self.sock is not None
        target = self.parser.recv_target()
        if target is not None:
            self._read_body(self.sock, target)
            return
        size = _RECV_BYTES
        if self.header_wait is not None:  # read no binary tensor before it is priced
            size = max(1, self.header_wait - self.parser.body_buffered)
        try:
            data = self.sock.recv(size)
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

    def _read_body(self, sock: socket.socket, target: memoryview) -> None:
        """A big body straight into its own buffer: all the socket holds, copied once."""
        got = 0
        eof = False
        try:
            while got < len(target):
                n = sock.recv_into(target[got:])
                if not n:
                    eof = True
                    break
                got += n
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.abort()
            return
        if got:
            self.parser.received(got)
            self.data_received(b"")
        if eof and self.sock is not None:
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
        with self.lock:  # never under a worker writing an answer (its fd could be reused)
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
        self.server.forget(self)
        if not self.busy:  # a running job keeps its charge until it is done
            self._release()
        self.metrics.connections_open = len(self.server.connections)

    def _release(self) -> None:
        if self.charge:
            charge, self.charge = self.charge, 0
            self.server.release(charge)

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
        while not (self.closing or self.busy or self.write_paused or self.waiting):
            try:
                head = parser.parse_head()
                if head is not None and not self.admitted and not self._admit(head):
                    break
                if (
                    head is not None
                    and self.header_wait is not None
                    and not self._admit_header(head)
                ):
                    break
                req = parser.next_request(align=self.tensor_offset)
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
            self.admitted = False
            self._dispatch(req)
        if self.eof and not (self.busy or self.closing or self.waiting) and self.sock is not None:
            self.close()
        elif self.read_paused and not (self.busy or self.waiting) and self.sock is not None:
            self.read_paused = False
        self._update_interest()

    def _admit(self, head: Head) -> bool:
        """Token, limits and budget from the head; False: refused (answered) or waiting."""
        verdict = self.app.admit(head)
        if isinstance(verdict, Outcome):
            self._write(verdict, None)
            return False
        if not self.authenticated:
            if not self.server.promote(self):
                self.refuse()
                return False
            self.authenticated = True
        if not self.server.acquire(self, verdict):
            # Wait for room: read nothing more of this request until then.
            self.waiting = True
            self.read_paused = True
            self.partial_since = None
            return False
        self.charge = verdict
        self.admitted = True
        self.partial_since = time.monotonic()  # the body's clock starts now
        self.header_wait = self.app.binary_header_wait(head)
        self.tensor_offset = self.header_wait or 0
        return True

    def _admit_header(self, head: Head) -> bool:
        """A binary request's JSON header, priced; False: not all here, refused or waiting."""
        assert self.header_wait is not None
        header = self.parser.body_prefix(self.header_wait)
        if header is None:
            return False
        verdict = self.app.admit_binary(head, header)
        if isinstance(verdict, Outcome):
            self.header_wait = None
            self._write(verdict, None)
            return False
        self._release()  # the head's charge; waiting for the whole one holds nothing
        if not self.server.acquire(self, verdict):
            self.waiting = True
            self.read_paused = True
            return False
        self.charge = verdict
        self.header_wait = None
        return True

    def _dispatch(self, req: Request) -> None:
        try:
            routed = self.app.route(req)
        except Exception as e:  # a routing bug must not kill the connection's loop
            log.exception("routing failed")
            routed = Outcome(500, error_body(f"internal error: {type(e).__name__}"))
        if isinstance(routed, Outcome):
            self._write(routed, req)
        elif isinstance(routed, WaitsForTelemetry) and self.server.summaries_running:
            # Feedback waits until the answers already out are known to the sink.
            self.busy = True
            self.server.after_summaries(lambda: self._run_held(routed, req))
        else:
            self._run(routed, req)

    def _run(self, job: Job, req: Request) -> None:
        if len(req.body) < self.offload_at:
            # Small: inline, summary included (a batch-1 table row costs nothing to summarise).
            outcome = run_job(job)
            record = self.app.summarise(outcome)
            self._write(outcome, req)
            if record is not None:
                record()
        else:
            self.busy = True
            # Nothing is written while the job runs, so with nothing waiting to be sent now
            # the worker may write the answer itself.
            answer = None if self._out else lambda o, post: self._answer_from_worker(o, req, post)
            self.server.offload(job, lambda outcome: self._job_done(outcome, req), answer)

    def _run_held(self, job: Job, req: Request) -> None:
        self.busy = False
        self._run(job, req)
        self._drain()

    def _answer_from_worker(self, outcome: Outcome, req: Request, post: Callable[[], None]) -> None:
        """Write a job's answer from the worker that ran it (worker thread).

        The answer is accounted first (metrics under their lock, refusals to the sink),
        then the loop's bookkeeping (:meth:`_job_done`: the budget, what was not sent,
        the telemetry summary) is queued; it waits for :attr:`lock`, held until the send
        is done, and the loop runs worker results before reading sockets, so it is done
        before anything the client sends after its answer is read. The loop closes the
        socket only under :attr:`lock`.
        """
        data = render_response(
            outcome.status,
            outcome.body,
            content_type=outcome.content_type,
            keep_alive=self._keep_alive(outcome, req),
            http11=req.http11,
            date_line=self.server.date.line(),
            extra_headers=outcome.extra_headers,
        )
        with self.lock:
            sock = self.sock
            # Accounted before the bytes go out, as on the loop (_write).
            self._worker_accounted = True
            self._worker_after_failed = not self._account(
                outcome, None if sock is None else outcome.status
            )
            post()
            if sock is None:
                return  # the client left
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._worker_failed = True
                return
            self._worker_unsent = memoryview(data)[sent:]

    def _job_done(self, outcome: Outcome, req: Request) -> None:
        with self.lock:  # a worker writing the answer has finished
            unsent, self._worker_unsent = self._worker_unsent, None
            failed, self._worker_failed = self._worker_failed, False
            accounted, self._worker_accounted = self._worker_accounted, False
            if self._worker_after_failed:
                self._worker_after_failed = False
                self.metrics.sink_failures += 1
        # With a summary still to come the request keeps the connection (nothing further is
        # parsed) and its charge (its input is still held) until _summarised.
        self.summarising = outcome.summary is not None
        self.busy = self.summarising
        if failed:
            self.abort()
        self._write(outcome, req, unsent, accounted)
        if self.summarising:
            self.server.summarise_later(outcome, self._summarised)
        else:
            self._drain()

    def _summarised(self, record: Callable[[], None] | None) -> None:
        """The worker has summarised the answered request: queue it for the sink."""
        if record is not None:
            record()
        self.summarising = False
        self.busy = False
        self._release()
        self.server.summary_finished()
        self._drain()

    def _keep_alive(self, outcome: Outcome, req: Request | None) -> bool:
        return req is not None and req.keep_alive and not outcome.close and not self.server.stopping

    def _write(
        self,
        outcome: Outcome,
        req: Request | None,
        unsent: memoryview | None = None,
        accounted: bool = False,
    ) -> None:
        """Account for ``outcome`` and send it; ``unsent``: a worker already sent the answer
        but for these bytes, ``accounted``: and accounted for it (:meth:`_answer_from_worker`)."""
        if not self.summarising:
            self._release()  # one request at a time: whatever was charged is answered now
        if self.sock is None:
            # The client left before its answer: the work was still done, account for it.
            if not accounted and not self._account(outcome):
                self.metrics.sink_failures += 1
            return
        keep_alive = self._keep_alive(outcome, req)
        # Accounted before the bytes go out, so a client holding its answer can
        # count on the request being counted (metrics, probation, telemetry);
        # the costly part, the sink call for inferences, still runs at the end
        # of the event-loop pass, after the answers were sent.
        if not accounted and not self._account(outcome, outcome.status):
            self.metrics.sink_failures += 1
        if unsent is None:
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
        elif unsent:
            self._out += unsent
            if len(self._out) > _WRITE_HIGH:
                self.write_paused = True
            self._update_interest()
        if not keep_alive:
            self.close()

    def _account(self, outcome: Outcome, status: int | None = None) -> bool:
        """The answer's status (when given) and ``outcome.after``, under the metrics lock
        (loop or worker thread); False when ``after`` failed (logged; the loop counts it)."""
        with self.metrics.lock:
            if status is not None:
                self.metrics.response(status)
            if outcome.after is None:
                return True
            try:
                outcome.after()
            except Exception:
                log.exception("telemetry sink failed")
                return False
            return True

    # --- housekeeping (called by the sweeper) -------------------------------------
    def expire(self, now: float) -> None:
        if self.closing or self.busy or self.waiting or self.sock is None:
            return
        cfg = self.server.config
        parser = self.parser
        if not self.authenticated:
            # Not one admitted head yet: the header clock runs from the accept.
            if now - self.accepted_at > cfg.header_timeout_s:
                if parser.idle:
                    self.close()
                else:
                    self._timed_out("request head not completed in time")
            return
        since = self.partial_since
        if since is not None and parser.head is None and now - since > cfg.header_timeout_s:
            self._timed_out("request head not completed in time")
        elif since is not None and now - since > cfg.request_timeout_s:
            self._timed_out("request not completed in time")
        elif parser.idle and now - self.last_active > cfg.keepalive_timeout_s:
            self.close()

    def _timed_out(self, message: str) -> None:
        self._write(Outcome(408, error_body(message), close=True), None)

    def silent(self) -> bool:
        """Nothing received: no partial head and no bytes waiting in the socket."""
        sock = self.sock
        if sock is None or not self.parser.idle:
            return sock is None
        try:
            return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return True

    @property
    def idle(self) -> bool:
        """Between requests: nothing buffered, running, charged or waiting to be sent."""
        return (
            self.parser.idle
            and not (self.busy or self.waiting or self.charge or self._out)
            and self.sock is not None
        )

    def close_if_idle(self) -> None:
        if not self.busy and self.sock is not None:
            self.close()
