"""PUT, MKCOL and DELETE.

PUT (RFC 9110 §9.3.4, RFC 4918 §9.7): streamed into a staging file and renamed into place, so
a reader never sees a partial file and a failed or aborted upload leaves nothing (B14, B15).
201 for a new file, 204 for a replaced one, 405 onto a collection, 411 without any body framing
(B14: never report a framing-less PUT as a 0-byte success). Missing parents are created when
``[storage] create_parents`` (as grid clients expect) and each one is authorised as a mkdir;
otherwise 409 as RFC 4918 says. A credential that may create but not modify (WLCG
``storage.create``) gets 403 on an existing file, enforced atomically at commit.
``Expect: 100-continue`` is answered only after authorisation, so a refused client never sends
its body.

MKCOL: 201; 405 if anything exists there (davix maps it to EEXIST, B16); 409 without parent;
415 with a body (RFC 4918 §9.3). DELETE: 204; a non-empty collection only with ``Depth:
infinity`` (else 409, POSIX rmdir as gfal2 and XRootD expect, PROTOCOLS.md §6.3), unless
``[storage] recursive_delete`` makes every collection DELETE recursive as RFC 4918 §9.6.1 says
(neon/litmus send no Depth header). A recursive delete is authorised at the collection and at
every site-rule path below it, so a deeper rule that forbids deleting still holds.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from segate.auth.principal import Op
from segate.dav.headers import parse_content_length
from segate.dav.namespace import authorize_subtree
from segate.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    LengthRequired,
    MethodNotAllowed,
    NotFound,
    UnsupportedMediaType,
)
from segate.storage.base import ExistsError, NotEmptyError
from segate.web.body import send_continue
from segate.web.context import RequestContext


def _has_body(request: web.Request) -> bool:
    te = request.headers.get("Transfer-Encoding", "").lower()
    cl = request.headers.get("Content-Length")
    return "chunked" in te or (cl is not None and cl.strip() not in ("", "0"))


async def handle_put(ctx: RequestContext) -> web.StreamResponse:
    request = ctx.request
    path = ctx.path
    if path.is_root or ctx.target.trailing_slash:
        raise MethodNotAllowed("cannot PUT onto a collection")
    te = request.headers.get("Transfer-Encoding", "").lower()
    length_hdr = request.headers.get("Content-Length")
    if length_hdr is None and "chunked" not in te:
        raise LengthRequired("PUT needs Content-Length or chunked transfer encoding")
    expected = parse_content_length(request.headers.getall("Content-Length", []))

    may_create = ctx.check(Op.CREATE, path).allowed
    may_overwrite = ctx.check(Op.OVERWRITE, path).allowed
    if not (may_create or may_overwrite):
        ctx.authorize(Op.CREATE)  # raises with the reason
    info = await ctx.storage.stat(path)
    if info is not None and info.is_dir:
        raise MethodNotAllowed("target is a collection")
    ctx.authorize(Op.OVERWRITE if info is not None else Op.CREATE)

    missing = await ctx.storage.missing_ancestors(path)
    if missing:
        if not ctx.services.settings.storage.create_parents:
            raise Conflict("parent collection does not exist")
        for p in missing:
            ctx.authorize(Op.MKDIR, p)

    await send_continue(request)  # only now, after authorisation

    chunk_size = ctx.services.settings.storage.io_chunk
    upload = await ctx.storage.new_upload(path)
    try:
        # Received pieces are written together with one writev. One write is in flight while
        # the next chunk is received and decrypted, so disk and TLS work overlap on two cores;
        # writes stay strictly in order (each waits for the previous one).
        parts: list[bytes] = []
        pending = 0
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                data = await request.content.readany()
                if not data:
                    break
                parts.append(data)
                pending += len(data)
                if pending >= chunk_size:
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(upload.write_parts(parts))
                    parts, pending = [], 0
            if writing is not None:
                await writing
            writing = None
        finally:
            if writing is not None:
                if writing.done():
                    if not writing.cancelled():
                        writing.exception()  # retrieved: the error that matters is raised
                else:
                    writing.cancel()  # abort() below still waits for the executor thread
        if parts:
            await upload.write_parts(parts)
        if expected is not None and upload.bytes_written != expected:
            raise BadRequest(
                f"body ended after {upload.bytes_written} of {expected} bytes; nothing stored"
            )
        try:
            created = await upload.commit(overwrite=may_overwrite, make_parents=bool(missing))
        except ExistsError as exc:
            raise Forbidden("file exists and the credential may not overwrite it") from exc
    except BaseException:
        await upload.abort()
        raise
    return web.Response(status=201 if created else 204)


async def handle_mkcol(ctx: RequestContext) -> web.StreamResponse:
    if _has_body(ctx.request):
        raise UnsupportedMediaType("MKCOL with a request body is not supported")
    ctx.authorize(Op.MKDIR)
    if ctx.path.is_root or await ctx.storage.stat(ctx.path) is not None:
        raise MethodNotAllowed("already exists")
    try:
        await ctx.storage.mkdir(ctx.path)
    except ExistsError as exc:
        raise MethodNotAllowed("already exists") from exc
    return web.Response(status=201)


async def handle_delete(ctx: RequestContext) -> web.StreamResponse:
    ctx.authorize(Op.DELETE)
    if ctx.path.is_root:
        raise Forbidden("cannot delete the storage root")
    if await ctx.storage.delete_link(ctx.path):
        # the link's own entry went, whatever it leads to (inside, outside, nowhere)
        return web.Response(status=204)
    info = await ctx.storage.stat(ctx.path)
    if info is None:
        raise NotFound("no such file or collection")
    depth_inf = ctx.request.headers.get("Depth", "").lower() == "infinity"
    recursive = info.is_dir and (depth_inf or ctx.services.settings.storage.recursive_delete)
    if recursive:
        authorize_subtree(ctx, Op.DELETE, ctx.path)
    try:
        await ctx.storage.delete(ctx.path, recursive=recursive)
    except NotEmptyError as exc:
        raise Conflict("collection is not empty (send Depth: infinity to delete it)") from exc
    return web.Response(status=204)
