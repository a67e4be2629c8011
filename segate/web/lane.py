"""The fast lane: segate's own HTTP/1.1 front for the requests grid clients send most.

Every connection is accepted by a :class:`LaneProtocol`. It serves ``HEAD`` and ``PROPFIND``
with ``Depth: 0`` itself (the stat calls of gfal2, davix and FTS; the benchmark's small
requests), and at the first request of any other kind, or one it does not take (a body sent
with ``Transfer-Encoding``, ``Expect``, ``Upgrade``, a target not in origin form, anything the
parser refuses), it hands the connection to aiohttp's ``RequestHandler`` for the rest of the
connection's life, with every byte it has buffered from the start of that request. aiohttp
then answers exactly as if it had had the connection from the start.

Why: a request through aiohttp's machinery (a Request object, a router, a StreamResponse, a
task per connection loop and per message) costs more than the work segate does for a stat;
the lane parses the head with llhttp (httptools, the parser aiohttp also uses) and writes the
answer as one buffer. The verbs' semantics are not duplicated: both paths call the same cores
(``resolve_target``, ``credentials_from``, the auth chain, ``head_answer``,
``propfind_answer``, ``error_response``, the access log), and tests/integration/
test_fast_lane.py compares the two paths' answers request by request.

Framing is exact: a request is taken only once its whole head (up to the first CRLFCRLF) and
its ``Content-Length`` body are buffered, so the bytes handed to aiohttp always start at a
request's first byte, pipelined or not.

Answers are written once per event-loop turn (:meth:`FastLane.send`): the answers finished in
one turn go out back to back at its end, in order per connection, instead of one ``write`` in
between every two requests' work. On this 2-vCPU VM that raised PROPFIND Depth 0 from ~11.7k to
~16k requests/s (wrk, 64 connections): the client is woken once per burst rather than once per
answer, and the kernel's network work runs together instead of evicting the request path's
caches each time (server CPU per request 136-153 -> 103-113 us, wrk's 34-36 -> 22-23 us).
An answer that closes its connection, and everything pending before a connection is handed to
aiohttp or closed, is written at once.

Known, deliberate differences from aiohttp: bytes a client pipelines after a request that
closes the connection (``Connection: close``, HTTP/1.0) are ignored after the answer, where
aiohttp answers 400 "Data after Connection: close" instead of the request; over plain HTTP a
request whose head is complete is answered even if the client half-closed its side first (over
TLS, uvloop's transport closes at the client's FIN and a request still running is logged 499).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, cast

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from segate.auth.principal import Principal
from segate.dav.propfind import propfind_answer
from segate.dav.read import head_answer
from segate.errors import SegateError, TooManyConnections
from segate.storage.base import StorageError
from segate.web.app import (
    ACCESS,
    CONN_LIMIT,
    REQUEST_IDS,
    SERVER_NAME,
    SERVICES,
    resolve_target,
)
from segate.web.context import Access
from segate.web.credentials import credentials_from, peer_ip
from segate.web.middleware import error_response

log = logging.getLogger("segate")

#: the methods the lane answers itself (with a space: how a request line starts)
_STARTS = (b"HEAD ", b"PROPFIND ")
#: a connection idle this long between requests is closed (aiohttp's keepalive_timeout)
KEEPALIVE = 75.0
#: a request head not complete after this long is dropped (slow-header clients)
HEAD_TIMEOUT = 30.0
#: heads with more header lines go to aiohttp, which refuses more than 128
_MAX_HEADERS = 100
#: buffered bytes past which reading pauses while a request is being served
_READ_HIGH = 1 << 20


class Request:
    """One request the lane serves: what the shared cores need, nothing more. While its head
    is parsed it is also the httptools callback object; the parser's per-message state
    (method, version, keep-alive) is read in ``on_headers_complete``: llhttp resets it once a
    message without a body completes."""

    __slots__ = (
        "body",
        "headers",
        "keep_alive",
        "method",
        "pairs",
        "parser",
        "raw",
        "url",
        "version",
    )

    headers: CIMultiDictProxy[str]
    raw: str

    def __init__(self) -> None:
        self.parser: Any = None
        self.url = b""
        self.pairs: list[tuple[str, str]] = []
        self.method = ""
        self.version = ""
        self.keep_alive = False
        self.body = b""

    # -- httptools callbacks ---------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.pairs.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        p = self.parser
        self.method = p.get_method().decode("ascii", "replace")
        self.version = p.get_http_version()
        self.keep_alive = p.should_keep_alive()

    # -- what the cores ask ------------------------------------------------------------------
    @property
    def query_string(self) -> str:
        """The query as aiohttp sees it: after the first ``?``, without a ``#`` fragment."""
        return self.raw.partition("?")[2].partition("#")[0]

    def query(self) -> MultiDictProxy[str]:
        """The parsed query, as aiohttp parses it (yarl)."""
        return URL.build(
            path=self.raw.partition("?")[0], query_string=self.query_string, encoded=True
        ).query


def _field_bytes(name: str, value: str) -> int:
    """A header line's length on the wire, as aiohttp's limit counts it."""
    return len(name.encode("utf-8", "surrogateescape")) + len(
        value.encode("utf-8", "surrogateescape")
    )


def parse_head(head: bytes, max_body: int, max_field: int) -> tuple[Request, int] | None:
    """The request and its body length, or None when the lane does not take this request.

    A request line or header field near ``max_field`` (``[server] max_header_size``) is left
    to aiohttp, which applies that limit (400)."""
    req = Request()
    parser = httptools.HttpRequestParser(req)
    req.parser = parser
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # (HttpParserUpgrade is not an HttpParserError subclass)
    req.parser = None
    if not req.url.startswith(b"/"):
        return None  # absolute-form or asterisk-form: aiohttp's business
    pairs = req.pairs
    if len(pairs) > _MAX_HEADERS:
        return None  # aiohttp applies its own header-count limit (400)
    if len(head) + 20 > max_field and (
        len(req.url) + 20 > max_field or any(_field_bytes(n, v) + 4 > max_field for n, v in pairs)
    ):
        return None  # a line near the limit: aiohttp applies it
    headers = req.headers = CIMultiDictProxy(CIMultiDict(pairs))
    if "Transfer-Encoding" in headers or "Expect" in headers or "Upgrade" in headers:
        return None
    cls = headers.getall("Content-Length", ())
    length = 0
    if cls:
        cl = cls[0]
        if len(cls) > 1 or not cl.isdigit() or len(cl) > 12:
            return None
        length = int(cl)
    method = req.method
    if method == "HEAD":
        if length:
            return None
    elif method == "PROPFIND":
        depth = headers.getall("Depth", ())
        if len(depth) != 1 or depth[0].strip() != "0" or length > max_body:
            return None
    else:
        return None
    version = req.version
    if version != "1.1" and version != "1.0":
        return None
    hosts = len(headers.getall("Host", ()))
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        return None  # aiohttp answers 400
    req.raw = req.url.decode("utf-8", "surrogateescape")
    return req, length


_date_cache: tuple[int, str] = (0, "")


def http_now() -> str:
    """The ``Date`` header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
    return _date_cache[1]


_PHRASES = {s.value: s.phrase for s in HTTPStatus}


def _phrase(status: int) -> str:
    return _PHRASES.get(status, "")


def render(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    length: int | None,
    version: str,
    keep_alive: bool,
    head: bool,
) -> bytes:
    """The response bytes: status line, headers, and the body unless the request was HEAD."""
    lines = [f"HTTP/{version} {status} {_phrase(status)}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"newline in response header {name!r}")
        if name.lower() in ("content-length", "connection", "date", "server"):
            continue
        lines.append(f"{name}: {value}\r\n")
    n = len(body) if length is None else length
    if length is not None or n or not head:
        lines.append(f"Content-Length: {n}\r\n")
    lines.append(f"Date: {http_now()}\r\nServer: {SERVER_NAME}\r\n")
    if not keep_alive and version == "1.1":
        lines.append("Connection: close\r\n")
    elif keep_alive and version == "1.0":
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    out = "".join(lines).encode("utf-8", "surrogateescape")
    return out if head else out + body


class FastLane:
    """Per worker: builds a :class:`LaneProtocol` per connection (``loop.create_server(lane)``)
    and hands connections over to ``http`` (aiohttp's low-level server, ``runner.server``)."""

    def __init__(self, app: web.Application, http: web.Server) -> None:
        self.app = app
        self.services = app[SERVICES]
        self.access = app[ACCESS]
        self.conns = app[CONN_LIMIT]
        self.ids = app[REQUEST_IDS]
        self.http = http
        srv = self.services.settings.server
        self.enabled = srv.fast_lane
        self.max_head = 2 * srv.max_header_size + 8192
        self.max_body = srv.max_body_xml
        self.max_field = srv.max_header_size
        self.allow_query = self.services.settings.tokens.allow_query_token
        self.connections: set[LaneProtocol] = set()
        self.pending: list[tuple[asyncio.Transport, bytes]] = []  # answers due this turn
        self.closing = False  # shutting down: no new request starts
        self.served = 0  # requests answered by the lane itself (tests, diagnostics)
        self.handed = 0  # connections handed to aiohttp
        self._fqdn: str | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> asyncio.Protocol:
        if not self.enabled:
            return self.http()
        return LaneProtocol(self)

    def send(self, transport: asyncio.Transport, data: bytes) -> None:
        """Write ``data`` at the end of this loop turn, with the other answers finished in it."""
        pending = self.pending
        pending.append((transport, data))
        if len(pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every pending answer now (in the order they were finished)."""
        pending = self.pending
        if not pending:
            return
        self.pending = []
        for transport, data in pending:
            if transport.is_closing():
                # logged as served a moment ago: say that it never left (a TLS client that
                # closed its side, a reset)
                log.info("fast lane: an answer was not sent: the connection closed first")
                continue
            try:
                transport.write(data)
            except (OSError, RuntimeError) as exc:  # this connection's loss only
                log.info("fast lane: cannot write an answer: %s", exc)

    def fqdn(self) -> str:
        """aiohttp's ``request.host`` without a Host header: the machine's name."""
        if self._fqdn is None:
            self._fqdn = socket.getfqdn()
        return self._fqdn

    def start(self, period: float = 5.0) -> None:
        """Close idle and slow connections every ``period`` seconds."""
        loop = asyncio.get_running_loop()

        def sweep() -> None:
            now = loop.time()
            for conn in list(self.connections):
                conn.expire(now)
            self._sweeper = loop.call_later(period, sweep)

        self._sweeper = loop.call_later(period, sweep)

    def close_idle(self) -> None:
        """Shutdown: close every lane connection not serving a request."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.flush()
        for conn in list(self.connections):
            if conn.task is None and conn.transport is not None:
                conn.transport.close()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections, give running requests ``grace`` seconds, cancel the rest."""
        self.close_idle()
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
        self.flush()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()


class LaneProtocol(asyncio.Protocol):
    def __init__(self, lane: FastLane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.remote = "-"  # the client's address in the access log
        self.ip = ""  # ... and in the credentials
        self.handed = False
        self.eof = False  # the client half-closed (plain HTTP): close once all is answered
        self.write_paused = False  # the transport's write buffer is over its high-water mark
        self.read_paused = False
        self.last = 0.0  # loop time of the last request's end (or of the connection)
        self.head_since: float | None = None  # loop time a partial head started arriving
        self.loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport does not subclass asyncio.Transport; it has the same methods
        self.transport = cast(asyncio.Transport, transport)
        self.last = self.loop.time()
        self.ip = peer_ip(transport)
        self.remote = self.ip or "-"
        self.lane.connections.add(self)
        self.lane.conns.opened(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lane.connections.discard(self)
        if not self.handed:
            self.lane.conns.closed(self.transport)
        self.buf.clear()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()
        elif len(self.buf) > _READ_HIGH and not self.read_paused and self.transport:
            self.transport.pause_reading()
            self.read_paused = True

    def pause_writing(self) -> None:
        """The transport holds more unsent answer bytes than its high-water mark (a client
        that sends requests but does not read): serve and read nothing more until it drains,
        so memory does not grow with what such a client sends."""
        self.write_paused = True
        if self.transport is not None and not self.read_paused:
            self.transport.pause_reading()
            self.read_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.task is None and not self.handed:
            self._next()
            self._close_if_done()

    def _close_if_done(self) -> None:
        """Half-closed by the client (plain HTTP): close once every complete request is
        answered."""
        transport = self.transport
        if (
            self.eof
            and self.task is None
            and not self.handed
            and not self.write_paused
            and transport is not None
        ):
            self.lane.flush()
            transport.close()

    def eof_received(self) -> bool | None:
        """The client closed its side. Plain HTTP: the write side stays open until every
        complete request buffered or running is answered, then the connection closes. TLS:
        uvloop's TLS transport cannot stay half-open, so it closes now (a request still running
        is logged as 499). Answers queued for this loop turn are written first either way."""
        self.lane.flush()
        transport = self.transport
        if (
            transport is not None
            and transport.get_extra_info("sslcontext") is None
            # (with none running and writing not paused, no complete request is buffered)
            and (self.task is not None or self.write_paused)
        ):
            self.eof = True
            return True
        return None  # the transport closes, as with aiohttp

    # -- framing -----------------------------------------------------------------------------
    def _next(self) -> None:
        """Take the next whole request from the buffer, or hand the connection over."""
        buf = self.buf
        transport = self.transport
        if transport is None or transport.is_closing():
            self.head_since = None
            return
        if self.write_paused:
            return  # a client not reading its answers: resume_writing calls again
        if self.lane.closing:
            self.lane.flush()
            transport.close()  # shutting down: requests not started are not started now
            return
        if self.read_paused:
            transport.resume_reading()
            self.read_paused = False
        if not buf:
            self.head_since = None
            return
        if not buf.startswith(_STARTS):
            if len(buf) >= 9 or not any(s.startswith(bytes(buf)) for s in _STARTS):
                self._hand_over()
            elif self.head_since is None:
                self.head_since = self.loop.time()  # maybe "HEAD " or "PROPFIND " arriving
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.lane.max_head or b"\n\n" in buf:
                self._hand_over()  # aiohttp gives these their 400/431
            elif self.head_since is None:
                self.head_since = self.loop.time()
            return
        head_len = end + 4
        try:
            parsed = parse_head(bytes(buf[:head_len]), self.lane.max_body, self.lane.max_field)
        except Exception as exc:
            log.warning("fast lane: unexpected %s parsing a request head", type(exc).__name__)
            parsed = None
        if parsed is None:
            self._hand_over()
            return
        req, body_len = parsed
        if len(buf) < head_len + body_len:
            if self.head_since is None:
                self.head_since = self.loop.time()
            return
        req.body = bytes(buf[head_len : head_len + body_len])
        del buf[: head_len + body_len]
        self.head_since = None
        self.task = self.loop.create_task(self._serve(req))

    def _hand_over(self) -> None:
        """Give the connection, and the buffered bytes, to aiohttp's RequestHandler."""
        transport = self.transport
        assert transport is not None
        self.lane.flush()  # the lane's answers before any of aiohttp's
        self.handed = True
        self.lane.handed += 1
        self.lane.connections.discard(self)
        if self.read_paused:
            transport.resume_reading()
            self.read_paused = False
        handler = self.lane.http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self.buf = bytes(self.buf), bytearray()
        if data:
            handler.data_received(data)
        # the client's FIN came to the lane: the handler answers what is complete, then closes
        if self.eof and not handler.eof_received():  # type: ignore[func-returns-value]
            transport.close()

    def expire(self, now: float) -> None:
        """Close the connection if it idled past KEEPALIVE or a head is too slow to arrive."""
        if self.task is not None or self.transport is None:
            return
        if self.head_since is not None:
            if now - self.head_since > HEAD_TIMEOUT:
                log.info("closing a connection from %s: request head too slow", self.remote)
                self.lane.flush()
                self.transport.close()
        elif now - self.last > KEEPALIVE:
            self.lane.flush()
            self.transport.close()

    # -- serving ---------------------------------------------------------------------------
    async def _serve(self, req: Request) -> None:
        lane = self.lane
        services = lane.services
        conns = lane.conns
        started = time.perf_counter()
        lane.served += 1
        conns.active += 1
        access: Access | None = None
        principal: Principal | None = None
        status, reason, keep = 499, "", req.keep_alive
        sent = 0
        head = req.method == "HEAD"
        try:
            try:
                if conns.refused(self.transport):
                    raise TooManyConnections(
                        "too many connections from your address", headers={"Retry-After": "1"}
                    )
                target = resolve_target(req.raw)
                headers = req.headers
                creds = credentials_from(
                    headers,
                    req.query_string,
                    req.query,
                    self.transport,
                    self,
                    headers.get("Host") or lane.fqdn(),
                    self.ip,
                    allow_query=lane.allow_query,
                )
                principal = await services.auth.authenticate(creds)
                access = Access(services, target, creds, principal)
                out: Mapping[str, str]
                if head:
                    out, size = await head_answer(access, headers.get("Want-Digest"))
                    status, body, length = 200, b"", size
                else:
                    status, body = await propfind_answer(access, "0", req.body)
                    out = {"Content-Type": "application/xml; charset=utf-8"}
                    length = None
            except Exception as exc:
                if not isinstance(exc, (SegateError, StorageError)):
                    log.exception("unexpected error serving %s", req.method)
                resp, reason = error_response(exc)
                status, out, length = resp.status, resp.headers, None
                body = resp.body if isinstance(resp.body, bytes) else b""
                if resp.keep_alive is False:
                    keep = False
            try:
                data = render(
                    status,
                    out,
                    body,
                    length=length,
                    version=req.version,
                    keep_alive=keep,
                    head=head,
                )
            except ValueError:
                log.exception("cannot render the answer to %s", req.method)
                status, reason, keep, length = 500, "internal server error", False, None
                body = b"internal server error\n"
                out = {"Content-Type": "text/plain; charset=utf-8"}
                data = render(
                    status, out, body, length=None, version=req.version, keep_alive=False, head=head
                )
            sent = length if length is not None else len(body)
            transport = self.transport
            if transport is None or transport.is_closing():
                # e.g. a TLS client that closed its side: uvloop's TLS transport has no
                # half-close, so the answer cannot be sent; the log says so
                status, reason, keep, sent = 499, "client went away", False, 0
            elif keep and not self.eof:
                lane.send(transport, data)
            else:  # written before the close below
                lane.flush()
                transport.write(data)
        except asyncio.CancelledError:
            status, keep, reason = 499, False, "client went away"
            raise
        finally:
            conns.active -= 1
            lane.access.request(
                lane.ids,
                client=self.remote,
                method=req.method,
                target=req.raw,
                status=status,
                nbytes=sent,
                started=started,
                principal=principal,
                reason=reason,
                decisions=access.reasons if access else (),
            )
            self.task = None
            self.last = self.loop.time()
            if self.transport is not None:
                if not keep or lane.closing:  # shutting down: this was the last one
                    lane.flush()
                    self.transport.close()
                else:  # the next request, or resume reading paused while this one ran
                    self._next()
                self._close_if_done()
