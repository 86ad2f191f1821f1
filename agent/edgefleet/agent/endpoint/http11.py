"""A small sans-IO HTTP/1.1 request parser and response writer (no sockets here).

:class:`RequestParser` turns bytes into :class:`Request` objects; the
connections in ``server.py`` feed it and write what :func:`render_response`
returns. Only what a local inference endpoint needs is accepted:

- request line ``METHOD SP origin-form SP HTTP/1.0|HTTP/1.1`` and CRLF-separated
  header fields; bodies only with ``Content-Length`` (``Transfer-Encoding`` is
  answered with 411 Length Required);
- keep-alive by default on HTTP/1.1 (``Connection: close`` ends it), off on
  HTTP/1.0 unless ``Connection: keep-alive``; pipelined requests are parsed in
  order;
- ``Expect: 100-continue`` is honoured (the protocol sends the interim
  response when :attr:`RequestParser.continue_needed` is set).

Invariants: the parser never buffers more than ``max_header_bytes`` of head
nor more than ``max_body_bytes`` of body for one request: a larger declared
body raises :class:`HttpError` 413 as soon as the head is read, before any of
the body is buffered. :meth:`RequestParser.parse_head` hands out a request's
head before its body, so the connection can check the token and the budget
first. Every :class:`HttpError` closes the connection, because after a framing
error the byte stream cannot be trusted.

A body of :data:`DIRECT_BODY_BYTES` or more is not gathered in the parser's
running buffer: once :meth:`RequestParser.next_request` has checked its
declared size, it gets a buffer of exactly that size, which the connection
fills with ``recv_into`` (:meth:`RequestParser.recv_target`), so its bytes are
copied once, from the socket, and the request's body *is* that buffer (a
``bytearray``; numpy arrays may view it without copying). ``align`` places a
given body offset (where binary tensors start) on a 64-byte boundary, so
the tensors are aligned for numpy and onnxruntime without a copy.
"""

from __future__ import annotations

import ctypes
import re
import time
from dataclasses import dataclass

REASONS: dict[int, bytes] = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}

CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_MAX_HEADERS = 100
# Bodies this large get a buffer of their own, filled from the socket (module docstring).
DIRECT_BODY_BYTES = 64 * 1024
_ALIGN = 64


class HttpError(Exception):
    """A request that cannot be framed or accepted; answered with ``status`` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Head:
    """A request's line and header fields, available before its body."""

    method: str
    target: str
    http11: bool
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    length: int  # Content-Length (0 without one)
    keep_alive: bool


@dataclass(slots=True)
class Request:
    method: str
    target: str
    http11: bool
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes | bytearray  # a bytearray: bodies of DIRECT_BODY_BYTES or more
    keep_alive: bool


class RequestParser:
    """Incremental parser for one connection; call :meth:`feed`, then :meth:`next_request`."""

    def __init__(self, *, max_header_bytes: int, max_body_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buf = bytearray()
        self._head: Head | None = None
        self._head_len = 0
        # The current request's own body buffer (big bodies) and how much of it arrived.
        self._body: bytearray | None = None
        self._body_filled = 0
        self.continue_needed = False
        self._continue_sent = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """No partial request is buffered."""
        return not self._buf and self._head is None

    @property
    def head(self) -> Head | None:
        """The head of the request being received, once complete."""
        return self._head

    @property
    def body_buffered(self) -> int:
        """Bytes of the current request's body received so far (0 before its head)."""
        if self._body is not None:
            return self._body_filled
        return max(0, len(self._buf) - self._head_len) if self._head is not None else 0

    def body_prefix(self, n: int) -> bytes | None:
        """The first ``n`` bytes of the current request's body once received, else None."""
        if self._body is not None:
            return bytes(self._body[:n]) if self._body_filled >= n else None
        if self._head is None or len(self._buf) < self._head_len + n:
            return None
        return bytes(self._buf[self._head_len : self._head_len + n])

    def feed(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            n = min(len(data), len(body) - self._body_filled)
            body[self._body_filled : self._body_filled + n] = data[:n]
            self._body_filled += n
            if n == len(data):
                return
            data = data[n:]
        self._buf += data

    def recv_target(self) -> memoryview | None:
        """Where the socket's next bytes go directly (``recv_into``): the rest of the body
        buffer of the request being received, or None (then :meth:`feed` what arrives)."""
        body = self._body
        if body is None or self._body_filled == len(body):
            return None
        return memoryview(body)[self._body_filled :]

    def received(self, n: int) -> None:
        """``n`` bytes were written into the last :meth:`recv_target`."""
        self._body_filled += n

    def continue_sent(self) -> None:
        self.continue_needed = False
        self._continue_sent = True

    def parse_head(self) -> Head | None:
        """The next request's head once it is complete (its body may not be); raises HttpError.

        The declared body size is not checked here, so a client without a valid
        token learns nothing about the limits (:meth:`next_request` checks it).
        """
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_header_bytes:
                    raise HttpError(
                        431, f"request head is larger than {self.max_header_bytes} bytes"
                    )
                return None
            if end > self.max_header_bytes:
                raise HttpError(431, f"request head is larger than {self.max_header_bytes} bytes")
            self._head = _parse_head(bytes(self._buf[:end]))
            self._head_len = end + 4
            self._continue_sent = False
        return self._head

    def next_request(self, align: int = 0) -> Request | None:
        """The next complete request, or None until more bytes arrive. Raises HttpError.

        ``align``: the body offset to put on a 64-byte boundary when the body gets a
        buffer of its own (module docstring).
        """
        head = self.parse_head()
        if head is None:
            return None
        if head.length > self.max_body_bytes:
            raise HttpError(
                413,
                f"request body of {head.length} bytes exceeds the limit of {self.max_body_bytes}",
            )
        if self._body is None and head.length >= DIRECT_BODY_BYTES:
            self._begin_body(head.length, align)
        if self._body is not None:
            if self._body_filled < len(self._body):
                self._expect_continue(head)
                return None
            body: bytes | bytearray = self._body
            self._body = None
        else:
            total = self._head_len + head.length
            if len(self._buf) < total:
                self._expect_continue(head)
                return None
            body = bytes(self._buf[self._head_len : total])
            del self._buf[:total]
        self._head = None
        self.continue_needed = False
        return Request(head.method, head.target, head.http11, head.headers, body, head.keep_alive)

    def _expect_continue(self, head: Head) -> None:
        if not self._continue_sent and head.headers.get("expect", "").lower() == "100-continue":
            self.continue_needed = True

    def _begin_body(self, length: int, align: int) -> None:
        """Move the body's first bytes out of the running buffer into one of its own."""
        body = bytearray(length + _ALIGN - 1)
        # Deleting from either end of a bytearray moves no bytes and keeps its memory.
        address = ctypes.addressof(ctypes.c_char.from_buffer(body))
        skip = -(address + max(0, align)) % _ALIGN
        del body[:skip]
        del body[length:]
        start = self._head_len
        n = min(length, len(self._buf) - start)
        body[:n] = memoryview(self._buf)[start : start + n]
        del self._buf[: start + n]
        self._head_len = 0
        self._body = body
        self._body_filled = n


_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (/[\x21-\x7e]*) HTTP/(\d)\.(\d)")
# Field values: visible ASCII, obs-text, space and tab; never CR, LF, NUL or other controls.
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r\n")


def _parse_head(head: bytes) -> Head:
    # RFC 9112 2.2: a server should ignore empty lines received before the request line.
    if head.startswith(b"\r\n"):
        head = head.lstrip(b"\r\n")
    eol = head.find(b"\r\n")
    line = head if eol < 0 else head[:eol]
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise HttpError(400, "malformed request line")
    raw_method, raw_target, major, minor = m.groups()
    if major != b"1" or minor not in (b"0", b"1"):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    http11 = minor == b"1"
    headers: dict[str, str] = {}
    if eol >= 0:
        block = head[eol + 2 :] + b"\r\n"
        if _FIELDS.fullmatch(block) is None:
            raise HttpError(400, "malformed header field")
        fields = _FIELD.findall(block)
        if len(fields) > _MAX_HEADERS:
            raise HttpError(431, f"more than {_MAX_HEADERS} header fields")
        for raw_name, raw_value in fields:
            name = raw_name.lower().decode("ascii")
            value = raw_value.decode("latin-1")
            if name in headers:
                if name == "content-length":
                    if headers[name] != value:
                        raise HttpError(400, "conflicting Content-Length fields")
                    continue
                value = headers[name] + ", " + value
            headers[name] = value
    if "transfer-encoding" in headers:
        raise HttpError(411, "Transfer-Encoding is not supported; send a Content-Length")
    raw_length = headers.get("content-length", "0")
    if not raw_length.isdigit() or not raw_length.isascii() or len(raw_length) > 18:
        raise HttpError(400, "Content-Length must be a non-negative integer")
    length = int(raw_length)
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if http11 else "keep-alive" in connection
    return Head(
        raw_method.decode("ascii"),
        raw_target.decode("ascii"),
        http11,
        headers,
        length,
        keep_alive,
    )


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(epoch_s: int) -> str:
    """IMF-fixdate (RFC 9110 5.6.7), independent of the locale.

    >>> http_date(0)
    'Thu, 01 Jan 1970 00:00:00 GMT'
    """
    t = time.gmtime(epoch_s)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


class DateHeader:
    """The ``Date`` header line, formatted at most once per second (any thread: the second
    and its line are swapped together)."""

    def __init__(self) -> None:
        self._cached: tuple[int, bytes] = (-1, b"")

    def line(self) -> bytes:
        now = int(time.time())
        cached = self._cached
        if now != cached[0]:
            cached = self._cached = (now, b"Date: " + http_date(now).encode() + b"\r\n")
        return cached[1]


_STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()
}


def render_response(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    keep_alive: bool = True,
    http11: bool = True,
    date_line: bytes = b"",
    extra_headers: bytes = b"",
) -> bytes:
    """One complete response (head + body) ready for ``transport.write``."""
    status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    return b"".join(
        (
            status_line,
            date_line,
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            _connection_line(keep_alive, http11),
            extra_headers,
            b"\r\n",
            body,
        )
    )


def _connection_line(keep_alive: bool, http11: bool) -> bytes:
    if not keep_alive:
        return b"\r\nConnection: close\r\n"
    # An HTTP/1.0 client keeps the connection only if the response says so.
    return b"\r\n" if http11 else b"\r\nConnection: keep-alive\r\n"
