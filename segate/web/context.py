"""Per-request context and the services a handler may use.

A fresh RequestContext is built for every request: identity and decisions are never stored on
the connection (field report B12, xrootd#1811).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from segate.auth.chain import AuthChain, Credentials
from segate.auth.principal import Op, Principal
from segate.authz.decide import Decision, Policy, decide
from segate.config import Settings
from segate.errors import Forbidden, Unauthenticated
from segate.paths import LogicalPath, RequestPath
from segate.storage.posix import PosixStorage

Handler = Callable[["RequestContext"], Awaitable[web.StreamResponse]]


@dataclass
class Services:
    settings: Settings
    storage: PosixStorage
    auth: AuthChain
    policy: Policy
    #: lower-case "host" and "host:port" strings that name this server
    local_hosts: frozenset[str]
    clock: Callable[[], float] = time.time
    #: extension handlers by key, e.g. "POST" (macaroon requests), "COPY-TPC" (third-party copy)
    extensions: dict[str, Handler] = field(default_factory=dict)
    #: async clean-ups run when the app stops (key caches, client sessions, ...)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: run at shutdown after the drain, before aiohttp cancels the requests still running (so
    #: long streams can still write their last words, e.g. a TPC ``failure:`` line)
    stoppers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: free-form slots for extensions (macaroon service, TPC engine, ...)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Access:
    """Who asks for which target, and the decisions taken: everything a verb's core needs
    apart from the HTTP exchange (shared by the aiohttp handlers and the fast lane)."""

    services: Services
    target: RequestPath
    credentials: Credentials
    principal: Principal
    reasons: list[str] = field(default_factory=list)

    @property
    def path(self) -> LogicalPath:
        return self.target.path

    @property
    def storage(self) -> PosixStorage:
        return self.services.storage

    def check(self, op: Op, path: LogicalPath) -> Decision:
        """Decide without raising (e.g. to choose between create and overwrite)."""
        return decide(self.principal, op, path, self.services.policy)

    def authorize(self, op: Op, path: LogicalPath | None = None) -> Decision:
        """Decide and raise: 401 for anonymous (a credential could help), else 403."""
        p = self.path if path is None else path
        d = self.check(op, p)
        self.reasons.append(d.reason)
        if not d.allowed:
            if self.principal.is_anonymous:
                raise Unauthenticated("authentication required", bearer_error=None)
            raise Forbidden(f"permission denied: {d.reason}")
        return d


@dataclass
class RequestContext(Access):
    """An :class:`Access` served through aiohttp: the handler also has the request."""

    request: web.Request = field(kw_only=True)
