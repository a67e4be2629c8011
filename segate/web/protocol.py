"""aiohttp's connection handler with segate's answer to requests its HTTP parser rejects.

aiohttp answers a request it cannot parse (bare-LF line endings, a header line over
``max_header_size``, bad framing) with a 400 whose body is the parser's message, which quotes
the raw request bytes, ``Authorization: Bearer ...`` included (field report B09). Its handler
class has no hook for this, and ``web.Server`` builds ``RequestHandler`` directly, so
:func:`install` re-classes the low-level server (``runner.server``, public) to build
:class:`GatewayRequestHandler`, whose ``handle_error`` answers such requests with a generic
one-line 400. Everything else is aiohttp's own behaviour. Works the same for the real server
and the in-process test server, which both call it after ``runner.setup()``.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from segate.web.redact import redact_text, safe_for_log

log = logging.getLogger("segate.http")


class GatewayRequestHandler(RequestHandler):
    """A RequestHandler whose parse-error answer never echoes the request."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
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
