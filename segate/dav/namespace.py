"""MOVE and local COPY (RFC 4918 §9.8, §9.9).

Both ends are authorised before anything changes (gfal2 DMC-1297, field report B17): MOVE needs
the right to move the source away and to create (or overwrite) the destination; COPY needs read
on the source. ``Overwrite: F`` onto an existing destination is 412; a missing destination
parent is 409; moving a collection into itself is 409 with the tree intact; source = destination
is 403. Operations on a whole collection are authorised at every site-rule path inside it too
(``authorize_subtree``). Dead properties travel with the resource (storage keeps them on the
inode). A ``Destination`` on another server is third-party copy (COPY) or 502 (MOVE).
"""

from __future__ import annotations

from aiohttp import web

from segate.auth.principal import Op
from segate.dav.headers import Destination, parse_depth, parse_destination, parse_overwrite
from segate.errors import BadGateway, BadRequest, Forbidden, NotFound, PreconditionFailed
from segate.paths import LogicalPath
from segate.storage.base import ExistsError
from segate.web.context import RequestContext


def authorize_subtree(ctx: RequestContext, op: Op, path: LogicalPath) -> None:
    """Authorise ``op`` on a whole tree: at ``path`` and at every site-rule path below it.

    Grants and macaroon paths cover whole subtrees, so only a deeper ``[[rules]]`` entry can
    decide differently inside the tree (a recursive DELETE must not remove what that rule
    protects).
    """
    ctx.authorize(op, path)
    for rule in ctx.services.policy.rules:
        if rule.path.is_within(path) and rule.path != path:
            ctx.authorize(op, rule.path)


def destination_of(ctx: RequestContext) -> Destination:
    raw = ctx.request.headers.get("Destination")
    if not raw:
        raise BadRequest("Destination header is required")
    # the authority the client used to reach us is local too (proxies, aliases, test ports)
    local = set(ctx.services.local_hosts) | {ctx.request.host.lower()}
    return parse_destination(raw, local_hosts=local)


def _local_target(dest: Destination) -> LogicalPath:
    if not dest.is_local or dest.path is None:
        raise BadGateway("Destination is on another server")
    return dest.path.path


async def _authorize_destination(
    ctx: RequestContext, dst: LogicalPath, *, src_is_dir: bool, overwrite: bool
) -> bool:
    """Authorise writing ``dst``; returns whether it exists. Raises 412 per Overwrite."""
    info = await ctx.storage.stat(dst)
    if info is not None:
        if not overwrite:
            raise PreconditionFailed("destination exists and Overwrite is F")
        ctx.authorize(Op.OVERWRITE, dst)
        if info.is_dir:
            authorize_subtree(ctx, Op.DELETE, dst)
    else:
        ctx.authorize(Op.MKDIR if src_is_dir else Op.CREATE, dst)
    return info is not None


async def handle_move(ctx: RequestContext) -> web.StreamResponse:
    dst = _local_target(destination_of(ctx))
    overwrite = parse_overwrite(ctx.request.headers.get("Overwrite"))
    src = ctx.path
    ctx.authorize(Op.MOVE_OUT, src)
    if src == dst:
        raise Forbidden("source and destination are the same")
    if src.is_root:
        raise Forbidden("cannot move the storage root")
    info = await ctx.storage.stat(src)
    if info is None:
        raise NotFound("source does not exist")
    if info.is_dir:
        authorize_subtree(ctx, Op.MOVE_OUT, src)
    existed = await _authorize_destination(ctx, dst, src_is_dir=info.is_dir, overwrite=overwrite)
    try:
        # a destination that did not exist was authorised as a creation (storage.create may
        # be all the requester has): one that appears meanwhile is not replaced (412)
        created = await ctx.storage.move(src, dst, overwrite=overwrite and existed)
    except ExistsError as exc:
        raise PreconditionFailed("destination exists and Overwrite is F") from exc
    return web.Response(status=201 if created else 204)


async def handle_local_copy(ctx: RequestContext, dest: Destination) -> web.StreamResponse:
    dst = _local_target(dest)
    overwrite = parse_overwrite(ctx.request.headers.get("Overwrite"))
    depth = parse_depth(ctx.request.headers.get("Depth"), default="infinity")
    src = ctx.path
    ctx.authorize(Op.READ, src)
    if src == dst:
        raise Forbidden("source and destination are the same")
    info = await ctx.storage.stat(src)
    if info is None:
        raise NotFound("source does not exist")
    if info.is_dir:
        authorize_subtree(ctx, Op.LIST, src)
        if depth != "0":
            authorize_subtree(ctx, Op.READ, src)
    existed = await _authorize_destination(ctx, dst, src_is_dir=info.is_dir, overwrite=overwrite)
    try:
        if info.is_dir and depth == "0":
            if existed:
                await ctx.storage.delete(dst, recursive=True)
            await ctx.storage.mkdir(dst)
            created = not existed
        else:
            created = await ctx.storage.copy(src, dst, overwrite=overwrite and existed)
    except ExistsError as exc:
        raise PreconditionFailed("destination exists and Overwrite is F") from exc
    return web.Response(status=201 if created else 204)
