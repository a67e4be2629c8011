"""Concurrent connections per client address (``[server] max_connections_per_client``).

``install`` wraps the ``connection_made``/``connection_lost`` hooks of the aiohttp low-level
server (``runner.server``, public API). A connection over the limit is not counted; its first
request is answered ``429 Too Many Requests`` with ``Retry-After`` by ``dispatch`` (a real HTTP
answer the client can read, not a reset), and the connection is closed. ``limit = 0`` turns the
limit off. ``active`` counts the requests being served; the SIGTERM drain waits for it to reach
zero (segate.web.server.drain).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web


def _peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class ConnectionLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0  # requests in dispatch right now
        self.counts: dict[str, int] = {}
        self._counted: dict[Any, str] = {}
        self._refused: set[Any] = set()  # RequestHandler has __slots__: no weak references

    def refused(self, protocol: Any) -> bool:
        """True if this connection arrived over its address's limit."""
        return protocol is not None and protocol in self._refused

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            ip = _peer_ip(transport)
            if self.limit <= 0 or not ip:
                return
            n = self.counts.get(ip, 0)
            if n >= self.limit:
                self._refused.add(handler)
                return
            self.counts[ip] = n + 1
            self._counted[handler] = ip

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self._refused.discard(handler)
            ip = self._counted.pop(handler, None)
            if ip is not None:
                n = self.counts.get(ip, 1) - 1
                if n > 0:
                    self.counts[ip] = n
                else:
                    self.counts.pop(ip, None)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
