"""Concurrent connections per client address (``[server] max_connections_per_client``).

Connections are counted by transport: the fast lane (segate.web.lane) counts every connection it
accepts, and ``install`` wraps the ``connection_made``/``connection_lost`` hooks of the aiohttp
low-level server (``runner.server``, public API) for connections aiohttp serves from the start
(the in-process test server) or that the lane hands over (counted once: ``opened`` ignores a
transport it already knows). A connection over the limit is not counted; its first request is
answered ``429 Too Many Requests`` with ``Retry-After`` (a real HTTP answer the client can
read, not a reset), and the connection is closed. ``limit = 0`` turns the limit off.
``active`` counts the requests being served; the SIGTERM drain waits for it to reach zero
(segate.web.server.drain).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from segate.web.credentials import peer_ip


class ConnectionLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0  # requests being served right now
        self.counts: dict[str, int] = {}
        self._counted: dict[Any, str] = {}  # transport -> address
        self._refused: set[Any] = set()  # transports over the limit
        self._transports: dict[Any, Any] = {}  # aiohttp handler -> transport

    def refused(self, transport: Any) -> bool:
        """True if this connection arrived over its address's limit."""
        return transport is not None and transport in self._refused

    def opened(self, transport: asyncio.BaseTransport) -> None:
        if self.limit <= 0 or transport in self._counted or transport in self._refused:
            return
        ip = peer_ip(transport)
        if not ip:
            return
        n = self.counts.get(ip, 0)
        if n >= self.limit:
            self._refused.add(transport)
            return
        self.counts[ip] = n + 1
        self._counted[transport] = ip

    def closed(self, transport: Any) -> None:
        self._refused.discard(transport)
        ip = self._counted.pop(transport, None)
        if ip is not None:
            n = self.counts.get(ip, 1) - 1
            if n > 0:
                self.counts[ip] = n
            else:
                self.counts.pop(ip, None)

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._transports[handler] = transport
            self.opened(transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            transport = self._transports.pop(handler, None)
            if transport is not None:
                self.closed(transport)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
