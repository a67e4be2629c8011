"""The COPY-TPC extension: a third-party COPY with segate as the active party.

Order of work (PROTOCOLS.md §4.1-4.4, field reports B21, B22, B25):

0. An anonymous client -> 401 before anything else: a copy makes this server contact another
   one with headers the caller chose (``TransferHeader*``), never for an unidentified caller.
1. Parse the headers (parse.py): malformed -> 400.
2. Authorise locally, before any byte moves. Pull: some write right on the path at all (else
   401/403), then ``Overwrite: F`` onto an existing file -> 412 (StoRM; XRootD also 412),
   existing file -> overwrite right (a create-only token gets 403, B25), absent -> create right;
   missing parents are authorised as mkdir and created at commit when ``[storage]
   create_parents`` (XRootD's mkpath), else 409. A collection at the path -> 405. Push: read
   right, the file must exist (404) and be a file (405).
3. Guard the remote (netguard.py): a scheme other than http(s) -> 400 (as XRootD/StoRM); an
   address the policy refuses -> 403 (a permanent, deliberate refusal; the client must not
   retry the same copy). A name that does not resolve is reported in the ``failure:`` line,
   as peers do ("Couldn't resolve host").
4. ``[tpc] max_active`` transfers at once; one more -> 503 with ``Retry-After`` (davix and gfal2
   treat it as "not allowed" and may fall back to another mode).
5. 202, ``Content-Type: text/plain``, chunked; a perf marker at once (so even a tiny copy has
   one, dCache#7441), then every ``[tpc] marker_interval`` seconds, a last marker with the final
   count, then exactly one line ``success: Created`` or ``failure: <reason>`` (markers.py).
6. A client that goes away (checked several times a second) cancels the transfer; the engine
   removes the staging file (dCache checks the socket after each marker; §4.3).
7. Server shutdown (after the SIGTERM drain deadline, ``TpcService.stop``): a running transfer is
   cancelled and its stream ends with ``failure: server shutting down`` (B22).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiohttp import web
from yarl import URL

from segate.auth.principal import Op
from segate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
    Unauthenticated,
)
from segate.tpc.client import RemoteClient, TransferFailed, strip_query
from segate.tpc.engine import Engine, PullTarget
from segate.tpc.markers import failure_line, format_endpoint, perf_marker, success_line
from segate.tpc.netguard import BadScheme, NetGuard, RefusedRemote, Unresolvable
from segate.tpc.parse import Mode, TransferRequest, forwarded_secrets, parse_transfer
from segate.tpc.slots import TransferSlots
from segate.tpc.streams import Progress
from segate.web.context import Handler, RequestContext, Services
from segate.web.tls import client_ssl_context

log = logging.getLogger("segate.tpc")
#: how often a running transfer checks whether its client is still connected (seconds)
DISCONNECT_POLL = 0.25
RETRY_AFTER = "10"
#: seconds shutdown waits for running transfers to write their ``failure:`` line and end
SHUTDOWN_GRACE = 2.0


class TpcService:
    """What every third-party COPY of one gateway shares: guard, HTTP client, engine, slots."""

    def __init__(self, services: Services) -> None:
        self.settings = services.settings
        self.cfg = services.settings.tpc
        self.guard = NetGuard.from_allow(self.cfg.allow_hosts)
        self.client = RemoteClient(
            self.cfg, self.guard, client_ssl_context(services.settings.server.ca_dir)
        )
        self.engine = Engine(services.storage, self.client, self.cfg)
        self.active = 0  # transfers of this worker (what its shutdown waits for)
        self.slots = TransferSlots()  # ... and of the whole server, for [tpc] max_active
        self.stopping = False

    async def stop(self) -> None:
        """Server shutdown (after the drain deadline): end every running transfer with
        ``failure: server shutting down`` (B22: a stream without a final line is an unknown
        outcome). aiohttp closes the connection in the same step as it cancels a handler, so
        the line must be written before that, here, not in the handler's cancellation path."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while self.active and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.client.close()


def tpc_extension(services: Services) -> Handler:
    """Build the COPY-TPC handler for ``services`` (registers its clean-up)."""
    svc = TpcService(services)
    services.extras["tpc"] = svc
    services.closers.append(svc.close)
    services.stoppers.append(svc.stop)

    async def handle(ctx: RequestContext) -> web.StreamResponse:
        return await handle_tpc_copy(ctx, svc)

    return handle


def _is_local(ctx: RequestContext) -> Callable[[str], bool]:
    local = set(ctx.services.local_hosts) | {ctx.request.host.lower()}

    def check(url: str) -> bool:
        if url.startswith("/") and not url.startswith("//"):
            return True
        try:
            u = URL(url, encoded=True)
        except ValueError:
            return False
        host = (u.raw_host or "").lower().rstrip(".")
        scheme = u.scheme.lower()
        default = 443 if scheme in ("https", "davs") else 80
        port = u.explicit_port
        names = {host, f"[{host}]"} if ":" in host else {host}
        if port in (None, default):
            cands = names | {f"{n}:{default}" for n in names}
        else:
            cands = {f"{n}:{port}" for n in names}
        return not cands.isdisjoint(local)

    return check


async def _authorize(ctx: RequestContext, req: TransferRequest) -> PullTarget | None:
    path = ctx.path
    if path.is_root or ctx.target.trailing_slash:
        raise MethodNotAllowed("third-party copy needs a file path, not a collection")
    storage = ctx.storage
    if req.mode is Mode.PUSH:
        ctx.authorize(Op.READ)
        info = await storage.stat(path)
        if info is None:
            raise NotFound("no such file")
        if info.is_dir:
            raise MethodNotAllowed("cannot push a collection")
        return None
    may_create = ctx.check(Op.CREATE, path).allowed
    may_overwrite = ctx.check(Op.OVERWRITE, path).allowed
    if not (may_create or may_overwrite):
        ctx.authorize(Op.CREATE)  # raises 401/403 with the reason
    info = await storage.stat(path)
    if info is not None:
        if info.is_dir:
            raise MethodNotAllowed("the destination is a collection")
        if not req.overwrite:
            raise PreconditionFailed("the destination exists and Overwrite is F")
        ctx.authorize(Op.OVERWRITE)
    else:
        ctx.authorize(Op.CREATE)
    missing = await storage.missing_ancestors(path)
    if missing:
        if not ctx.services.settings.storage.create_parents:
            raise Conflict("the parent collection does not exist")
        for p in missing:
            ctx.authorize(Op.MKDIR, p)
    return PullTarget(path, overwrite=req.overwrite and may_overwrite, make_parents=bool(missing))


async def _vet_remote(svc: TpcService, req: TransferRequest) -> list[str]:
    try:
        url = URL(req.remote, encoded=True)
        addrs = await svc.guard.vet(url)
    except BadScheme as exc:
        raise BadRequest(str(exc)) from exc
    except RefusedRemote as exc:
        raise Forbidden(f"refused to contact {strip_query(req.remote)}: {exc}") from exc
    except Unresolvable:
        return []
    except ValueError as exc:
        raise BadRequest("the remote URL cannot be parsed") from exc
    return [format_endpoint(ip, port) for ip, port in addrs[:1]]


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def handle_tpc_copy(ctx: RequestContext, svc: TpcService) -> web.StreamResponse:
    request = ctx.request
    if ctx.principal.is_anonymous:
        # a third-party copy makes this server contact another one on the caller's behalf,
        # with headers the caller chose: never for an unidentified caller, whatever the rules
        raise Unauthenticated(
            "third-party copy needs an authenticated client", bearer_error="invalid_request"
        )
    req = parse_transfer(
        request.headers.items(), is_local=_is_local(ctx), max_streams=svc.cfg.max_streams
    )
    target = await _authorize(ctx, req)
    planned = await _vet_remote(svc, req)
    if not svc.slots.try_take(svc.cfg.max_active):
        raise ServiceUnavailable(
            f"too many transfers in progress ({svc.cfg.max_active}); try again later",
            headers={"Retry-After": RETRY_AFTER},
        )
    svc.active += 1
    try:
        return await _stream(ctx, svc, req, target, planned)
    finally:
        svc.active -= 1
        svc.slots.give_back()


async def _stream(
    ctx: RequestContext,
    svc: TpcService,
    req: TransferRequest,
    target: PullTarget | None,
    planned: list[str],
) -> web.StreamResponse:
    request = ctx.request
    progress = Progress()
    started = time.monotonic()

    def marker() -> bytes:
        remotes = progress.remotes or planned
        return perf_marker(time.time(), progress.bytes_done, remotes).encode()

    resp = web.StreamResponse(status=202, headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    task = asyncio.ensure_future(svc.engine.run(req, ctx.path, progress, target))
    loop = asyncio.get_running_loop()
    interval = svc.cfg.marker_interval
    try:
        next_marker = loop.time()
        while True:
            if loop.time() >= next_marker:
                await resp.write(marker())
                next_marker = loop.time() + interval
            if _client_gone(request):
                raise ConnectionResetError("client went away")
            if svc.stopping:
                break
            wait = max(0.0, min(DISCONNECT_POLL, next_marker - loop.time()))
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                break
    except (ConnectionError, asyncio.CancelledError) as exc:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        ctx.reasons.append(f"tpc {req.mode}: client went away, transfer aborted")
        log.info("tpc %s %s aborted: client went away", req.mode, strip_query(req.remote))
        if isinstance(exc, asyncio.CancelledError):
            raise
        return resp  # aiohttp finishes a response whose client is gone quietly
    shutting_down = not task.done()  # the loop left early: TpcService.stop
    if shutting_down:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    try:
        if shutting_down:
            raise TransferFailed("server shutting down")
        task.result()
        final = success_line()
        ctx.reasons.append(f"tpc {req.mode}: success")
    except TransferFailed as exc:
        final = failure_line(str(exc), forwarded_secrets(req.headers))
        ctx.reasons.append(f"tpc {req.mode}: {final.strip()}")
    except Exception:
        log.exception("tpc %s: unexpected error", req.mode)
        final = failure_line("internal error in the transfer")
        ctx.reasons.append(f"tpc {req.mode}: internal error")
    elapsed = time.monotonic() - started
    log.info(
        "tpc %s %s %s: %d bytes in %.2f s (%.1f MB/s, %d stream(s))",
        req.mode,
        strip_query(req.remote),
        final.strip()[:200],
        progress.bytes_done,
        elapsed,
        progress.bytes_done / max(elapsed, 1e-6) / 1e6,
        progress.streams,
    )
    with contextlib.suppress(ConnectionError):  # the outcome is decided; the client may be gone
        await resp.write(marker() + final.encode())
        await resp.write_eof()
    return resp
