"""create_app(settings): the composition root. The only place that builds concrete objects.

Every request goes through ``dispatch``: parse the target once (paths.py), authenticate
(auth chain: bearer, else certificate, else anonymous), call the verb's handler, map errors,
write one access-log line. Nothing is kept between requests on a connection (B12).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import time
from collections.abc import Callable

from aiohttp import web

from segate.auth.chain import AuthChain
from segate.auth.jwks import KeyStore
from segate.auth.jwt import JwtAuthenticator, default_audiences
from segate.auth.macaroons import MacaroonAuthenticator, MacaroonKeyring
from segate.auth.x509 import X509Authenticator
from segate.authz.decide import Policy
from segate.config import Settings
from segate.dav.handlers import METHODS
from segate.errors import (
    BadRequest,
    NotFound,
    NotImplementedByServer,
    SegateError,
    TooManyConnections,
    UriTooLong,
)
from segate.paths import MAX_PATH_BYTES, RequestPath, parse_url_path
from segate.storage.base import StorageError
from segate.storage.posix import PosixStorage
from segate.tpc.handler import tpc_extension
from segate.web.connlimit import ConnectionLimit
from segate.web.context import RequestContext, Services
from segate.web.credentials import credentials_from_request
from segate.web.macaroon_endpoint import MacaroonEndpoint
from segate.web.middleware import AccessLog, error_response
from segate.web.protocol import install as install_protocol
from segate.web.tls import client_ssl_context

log = logging.getLogger("segate")
SERVICES = web.AppKey("segate_services", Services)
ACCESS = web.AppKey("segate_access_log", AccessLog)
CONN_LIMIT = web.AppKey("segate_connection_limit", ConnectionLimit)
#: access-log request ids: a counter from a random start per app (per worker process), which is
#: unique enough to correlate lines and costs no random bytes per request (uuid4 did)
REQUEST_IDS: web.AppKey[itertools.count[int]] = web.AppKey("segate_request_ids")


def local_hosts(settings: Settings) -> frozenset[str]:
    port = settings.server.port
    names = {settings.server.host, "localhost", "127.0.0.1", "::1", "[::1]"}
    names.update(settings.server.aliases)
    out: set[str] = set()
    for n in names:
        n = n.lower()
        if ":" in n and not n.startswith("[") and n.count(":") == 1:
            out.add(n)  # already host:port
            continue
        out.add(n)
        out.add(f"{n}:{port}")
        if ":" in n and not n.startswith("["):
            out.add(f"[{n}]:{port}")
    return frozenset(out)


def _public_host(settings: Settings) -> str:
    """The name clients use for this server (token audiences): public_url, else listen host."""
    if settings.server.public_url:
        from urllib.parse import urlsplit

        return urlsplit(settings.server.public_url).hostname or "localhost"
    host = settings.server.host
    return "localhost" if host in ("127.0.0.1", "::1", "0.0.0.0", "::") else host


def storage_for(settings: Settings) -> PosixStorage:
    return PosixStorage(
        settings.storage.root,
        chunk=settings.storage.io_chunk,
        metadata_in_loop=settings.storage.metadata_in_loop,
    )


class StorageSetupError(Exception):
    """The storage root or its staging folder cannot be made ready (``segate serve`` prints
    this one line and exits with status 2, no traceback)."""


def _prepare(storage: PosixStorage, *, clean: bool) -> int:
    try:
        return storage.prepare(clean=clean)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            reason = "a path component is not a folder"
        else:
            reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
        msg = f"cannot prepare the storage root {storage.root}: {reason}"
        raise StorageSetupError(msg) from None


def clean_staging(storage: PosixStorage, when: str = "") -> None:
    """Remove what an earlier run left in the staging folder (once per start)."""
    removed = _prepare(storage, clean=True)
    if removed:
        log.info("removed %d stale staging files from an earlier run%s", removed, when)


def build_services(
    settings: Settings, *, clock: Callable[[], float] = time.time, clean: bool = True
) -> Services:
    """The services of one serving process. ``clean=False`` (the workers of a multi-process
    server): the staging folder is made if missing but not emptied; the parent did that once
    before forking (segate.web.server.run)."""
    storage = storage_for(settings)
    if clean:
        clean_staging(storage)
    else:
        _prepare(storage, clean=False)
    tokens = settings.tokens
    keys = KeyStore(
        tokens.issuers,
        ssl_context=client_ssl_context(settings.server.ca_dir),
        refresh=tokens.jwks_refresh,
        min_refetch=tokens.jwks_min_refetch,
        timeout=tokens.jwks_timeout,
    )
    hostname = _public_host(settings)
    jwt_auth = JwtAuthenticator(
        tokens,
        keys,
        server_audiences=default_audiences(hostname, settings.server.port, settings.server.aliases),
        clock=clock,
    )
    services = Services(
        settings=settings,
        storage=storage,
        auth=AuthChain([jwt_auth]),
        policy=Policy(rules=settings.rules, stage_implies_read=tokens.stage_implies_read),
        local_hosts=local_hosts(settings),
        clock=clock,
    )
    services.closers.append(keys.close)
    services.auth.cert = X509Authenticator(  # client certificates, proxies, VOMS (issue #4)
        settings.x509,
        ca_dir=settings.server.ca_dir,
        local_hosts=services.local_hosts,
        clock=clock,
    )
    services.extensions["COPY-TPC"] = tpc_extension(services)  # third-party copy (segate/tpc)
    mac = settings.macaroons
    if mac.secret_file is not None:
        keyring = MacaroonKeyring.from_files(mac.secret_file, mac.previous_secret_files)
        mac_auth = MacaroonAuthenticator(keyring, leeway=float(tokens.leeway), clock=clock)
        services.auth.add_bearer(mac_auth, first=True)  # macaroon shape is tested before JWT
        services.extensions["POST"] = MacaroonEndpoint(keyring, settings, clock).handle
    return services


def resolve_target(raw: str) -> RequestPath:
    """The storage path a raw request target names, or the 4xx for a bad one."""
    if len(raw) > MAX_PATH_BYTES + 4096:
        raise UriTooLong("request target too long")
    path_part = raw.split("?", 1)[0]
    # clients never send a fragment; an unencoded '#' in a name would target the parent
    if "#" in path_part:
        raise BadRequest("request target contains a fragment ('#' must be %23)")
    target = parse_url_path(path_part)
    if target.path.is_reserved:
        raise NotFound("no such file or collection")
    return target


async def _no_expect(request: web.Request) -> None:
    """Handlers answer ``Expect: 100-continue`` themselves, after authorisation."""
    return None


async def dispatch(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    started = time.perf_counter()
    ctx: RequestContext | None = None
    resp: web.StreamResponse | None = None
    reason = ""
    raw = request.raw_path
    conns = request.app[CONN_LIMIT]
    conns.active += 1  # the SIGTERM drain waits for this to reach 0 (segate.web.server)
    try:
        if conns.refused(request.transport):
            raise TooManyConnections(
                "too many connections from your address", headers={"Retry-After": "1"}
            )
        target = resolve_target(raw)
        creds = credentials_from_request(
            request, allow_query=services.settings.tokens.allow_query_token
        )
        principal = await services.auth.authenticate(creds)
        ctx = RequestContext(services, target, creds, principal, request=request)
        handler = METHODS.get(request.method)
        if handler is None:
            raise NotImplementedByServer(f"method {request.method[:20]} is not implemented")
        resp = await handler(ctx)
        return resp
    except (SegateError, StorageError) as exc:
        if resp is not None and resp.prepared:
            raise
        resp, reason = error_response(exc)
        return resp
    except (asyncio.CancelledError, ConnectionError):
        reason = "client went away"
        raise
    except Exception as exc:
        log.exception("unexpected error serving %s", request.method)
        if resp is not None and resp.prepared:
            raise
        resp, reason = error_response(exc)
        return resp
    finally:
        conns.active -= 1
        ids = request.app[REQUEST_IDS]
        request.app[ACCESS].request(
            ids,
            client=request.remote or "-",
            method=request.method,
            target=raw,
            status=resp.status if resp is not None else 499,
            nbytes=(resp.content_length or 0) if resp is not None else 0,
            started=started,
            principal=ctx.principal if ctx else None,
            reason=reason,
            decisions=ctx.reasons if ctx else (),
        )


#: the ``Server`` header of every answer, from the fast lane and from aiohttp alike (no
#: Python or aiohttp version on the wire)
SERVER_NAME = "segate"


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def create_app(
    settings: Settings, *, services: Services | None = None, clean: bool = True
) -> web.Application:
    services = services or build_services(settings, clean=clean)
    app = web.Application(client_max_size=settings.server.max_body_xml)
    app[SERVICES] = services
    app[ACCESS] = AccessLog(settings.server.log_format)
    app[CONN_LIMIT] = ConnectionLimit(settings.server.max_connections_per_client)
    app[REQUEST_IDS] = itertools.count(int.from_bytes(os.urandom(4), "big"))
    # every target reaches dispatch, also one whose decoded path holds a newline (B28: a 400 and
    # an access-log line, not the router's silent 404); ".*" stops at a newline, [\s\S]* does not
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch, expect_handler=_no_expect)

    async def close(_app: web.Application) -> None:
        for closer in services.closers:
            await closer()

    async def stop(_app: web.Application) -> None:
        await asyncio.gather(*(stopper() for stopper in services.stoppers))

    app.on_response_prepare.append(_server_header)
    app.on_shutdown.append(stop)  # runner.cleanup(): after the drain, before handlers are cut
    app.on_cleanup.append(close)
    return app


def install_connection_limit(app: web.Application, server: web.Server) -> None:
    """Count connections per client address on ``runner.server`` (after ``runner.setup()``),
    and answer requests aiohttp's parser rejects without echoing them (segate.web.protocol)."""
    install_protocol(server)
    app[CONN_LIMIT].install(server)
