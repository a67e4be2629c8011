"""aiohttp's connection handler with segate's answer to requests its HTTP parser rejects, to
clients that half-close, and to clients that go away.

aiohttp answers a request it cannot parse (bare-LF line endings, a header line over
``max_header_size``, bad framing) with a 400 whose body is the parser's message, which quotes
the raw request bytes, ``Authorization: Bearer ...`` included (field report B09). Its handler
class has no hook for this, and ``web.Server`` builds ``RequestHandler`` directly, so
:func:`install` re-classes the low-level server (``runner.server``, public) to build
:class:`GatewayRequestHandler`, whose ``handle_error`` answers such requests with a generic
one-line 400. The same class answers the requests a plain-HTTP client sent in full before
its FIN (aiohttp closed at the FIN), never carries out one whose body the FIN cut short, and
logs a client gone mid-request as one quiet line instead of aiohttp's traceback. It relies
on RequestHandler's internal state (``_messages``, ``_waiter``, ``_close``, ``_upgraded``,
``_request_in_progress``, ``_request_handler``); tests/integration/test_half_close.py pins
the behaviour against the installed aiohttp. Everything else is aiohttp's own behaviour.
Works the same for the real server and the in-process test server, which both call it after
``runner.setup()``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from segate.web.redact import redact_text, safe_for_log

log = logging.getLogger("segate.http")


class GatewayRequestHandler(RequestHandler):
    """A RequestHandler whose parse-error answer never echoes the request, and which answers
    the requests a plain-HTTP client sent in full before half-closing its side."""

    __slots__ = ("_cut", "_eof", "_handle", "_newest", "_started")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._eof = False  # the client half-closed: close once the complete requests are answered
        self._newest: StreamReader | None = None  # body of the newest request parsed
        self._started: StreamReader | None = None  # body of the newest request handled
        self._cut: StreamReader | None = None  # a request's body cut short by the FIN
        handle = self._request_handler
        assert handle is not None  # set by RequestHandler.__init__
        self._handle: Callable[[BaseRequest], Awaitable[web.StreamResponse]] = handle
        self._request_handler = self._unless_cut

    async def _unless_cut(self, request: BaseRequest) -> web.StreamResponse:
        """The application's handler, for every request but one whose body the client's FIN
        cut short: that one is not carried out, and the connection closes."""
        payload = request.content
        if payload is self._cut:
            log.info(
                "closing a connection from %s: the client closed its side before the body of "
                "%s %s was complete; not carried out",
                request.remote,
                safe_for_log(request.method, 20),
                safe_for_log(redact_text(request.path), 200),
            )
            raise ConnectionResetError("the request body was cut short by the client")
        self._started = payload
        return await self._handle(request)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:  # what this call parsed is at the end of the queue
            self._newest = self._messages[-1][1]

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """aiohttp closes at the client's FIN, losing answers to requests sent in full before
        it (``printf 'GET ...' | nc -N``, scripts ending with shutdown(SHUT_WR)). On plain HTTP
        keep the write side open while a request runs or waits, then close after the last.
        A request whose body the FIN cut short is not carried out if its handler has not
        started: the requests before it are answered and the connection closes. If its
        handler is running (it may act on the head alone, as without a FIN), its answer is
        sent, a handler reading the body gets an error, and the connection closes.
        TLS: uvloop's TLS transport has no half-close."""
        transport = self.transport
        if (
            transport is None
            or transport.get_extra_info("sslcontext") is not None
            # idle: no request queued, and the handler task waits for one (or none came)
            or not (self._messages or (self._waiter is None and self._newest is not None))
        ):
            return None
        newest = self._newest
        if newest is not None and not newest.is_eof():
            if newest is not self._started:
                self._cut = newest  # not started: it never will be
            elif not self._request_in_progress:
                return None  # answered, the rest of its body still awaited: close now
            else:
                # its handler is running and may have acted on the head alone (a DELETE
                # with a body): its answer is sent, a handler reading the body gets an error,
                # and the connection closes after it (finish_response)
                newest.set_exception(ConnectionResetError("the client closed before the body"))
        self._eof = True
        if not (self._request_in_progress or self._messages or self._upgraded):
            # between requests (the one that ended was the last, or the one taken from the
            # queue is; with an Upgrade request's tail still unparsed, finish_response decides)
            self._close = True
        return True

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        # after aiohttp's own finish, which parses what followed a declined Upgrade request
        # (those requests never pass data_received)
        if self._messages:
            self._newest = self._messages[-1][1]
        if self._eof:
            if not request.content.is_eof():
                self.force_close()  # its body was cut: answered, nothing more will come
            elif not self._messages:
                self._close = True  # half-closed: this was the last complete request
            elif self._newest is not None and not self._newest.is_eof():
                self._cut = self._newest  # the FIN cut a request that followed the upgrade
        return result

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # the client went away mid-request (the access line says 499): aiohttp would log
            # a traceback at ERROR and try to answer a closed connection
            log.debug("client %s went away: %s", request.remote, exc)
            raise ConnectionError("the client went away") from None
        if not isinstance(exc, HttpProcessingError) or status >= 500:
            return super().handle_error(request, status, exc, message)
        first = (exc.message or "").splitlines()[0] if (exc.message or "").strip() else ""
        log.warning(
            "malformed request from %s: %s: %s",
            request.remote,
            type(exc).__name__,
            safe_for_log(redact_text(first), 120),
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot answer the parse error")
        resp = web.Response(
            status=status, text="malformed HTTP request\n", headers={"Server": "segate"}
        )
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    """``web.Server`` building :class:`GatewayRequestHandler` connections."""

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


def install(server: web.Server) -> None:
    """Make ``server`` (``runner.server`` after ``runner.setup()``) build our handler class.

    Re-classing is used because aiohttp offers no factory argument for the handler class;
    GatewayServer adds no state, so the instance stays valid.
    """
    if type(server) is web.Server:
        server.__class__ = GatewayServer
