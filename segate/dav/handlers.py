"""The method table: which handler serves which WebDAV verb, and OPTIONS.

COPY is local (Destination on this server) unless it carries ``Source:`` or a remote
``Destination:``, which makes it third-party copy, handled by the ``COPY-TPC`` extension.
POST is a macaroon request when the ``POST`` extension is installed.
"""

from __future__ import annotations

from aiohttp import web

from segate.dav.namespace import destination_of, handle_local_copy, handle_move
from segate.dav.propfind import handle_propfind
from segate.dav.proppatch import handle_proppatch
from segate.dav.read import handle_get, handle_head
from segate.dav.write import handle_delete, handle_mkcol, handle_put
from segate.errors import BadRequest, MethodNotAllowed, NotImplementedByServer
from segate.web.context import Handler, RequestContext

ALLOW = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, MOVE, COPY, PROPFIND, PROPPATCH, POST"


async def handle_options(ctx: RequestContext) -> web.StreamResponse:
    return web.Response(
        status=200,
        headers={
            "DAV": "1",
            "Allow": ALLOW,
            "Accept-Ranges": "bytes",
            "MS-Author-Via": "DAV",
        },
    )


async def handle_copy(ctx: RequestContext) -> web.StreamResponse:
    headers = ctx.request.headers
    if "Source" not in headers and "Destination" not in headers:
        raise BadRequest("COPY needs a Destination header (or Source, for a third-party pull)")
    if "Source" in headers or not _destination_is_local(ctx):
        tpc = ctx.services.extensions.get("COPY-TPC")
        if tpc is None:
            raise NotImplementedByServer("third-party copy is not enabled on this server")
        return await tpc(ctx)
    return await handle_local_copy(ctx, destination_of(ctx))


def _destination_is_local(ctx: RequestContext) -> bool:
    if "Destination" not in ctx.request.headers:
        return True  # let the local handler answer 400
    return destination_of(ctx).is_local


async def handle_post(ctx: RequestContext) -> web.StreamResponse:
    ext = ctx.services.extensions.get("POST")
    if ext is None:
        raise MethodNotAllowed("POST is not supported here", headers={"Allow": ALLOW})
    return await ext(ctx)


METHODS: dict[str, Handler] = {
    "OPTIONS": handle_options,
    "GET": handle_get,
    "HEAD": handle_head,
    "PUT": handle_put,
    "DELETE": handle_delete,
    "MKCOL": handle_mkcol,
    "MOVE": handle_move,
    "COPY": handle_copy,
    "PROPFIND": handle_propfind,
    "PROPPATCH": handle_proppatch,
    "POST": handle_post,
}
