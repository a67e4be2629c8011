"""PROPFIND (RFC 4918 §9.1) the way davix and gfal2 read it (PROPTOCOLS.md §6.1).

Depth 0 and 1; a missing Depth is taken as 1 (bounded) and ``infinity`` is refused with 403 and
``propfind-finite-depth``. The requested resource comes first; all found properties share one
200 propstat. Stat needs only the stat right; listing a collection needs list (read). Dead
properties (set by PROPPATCH) are read from storage only when the request may show them.

Bounded responses: a ``prop`` request names at most 256 properties (xml.py, 400), and a Depth-1
listing of a folder with more than ``[server] max_propfind_entries`` entries is refused with
507 Insufficient Storage and the ``DAV:number-of-matches-within-limits`` precondition (the code
RFC 5323 §5.2 gives for a result too large to return; RFC 4918 §11.5 507 "unable to store the
representation"), instead of building a response of unbounded size on the event loop.
"""

from __future__ import annotations

from aiohttp import web

from segate.auth.principal import Op
from segate.dav.headers import parse_depth
from segate.dav.xml import (
    dead_properties,
    error_body,
    needs_dead_properties,
    parse_propfind,
    render_multistatus,
)
from segate.errors import NotFound
from segate.storage.base import FileInfo
from segate.web.body import read_limited
from segate.web.context import Access, RequestContext


def href_of(info: FileInfo) -> str:
    return info.path.url_path(collection=info.is_dir)


async def handle_propfind(ctx: RequestContext) -> web.StreamResponse:
    depth = parse_depth(ctx.request.headers.get("Depth"), default="1")
    if depth == "infinity":
        return web.Response(
            status=403,
            body=error_body("propfind-finite-depth"),
            content_type="application/xml",
            charset="utf-8",
        )
    body = await read_limited(ctx.request, ctx.services.settings.server.max_body_xml)
    status, xml = await propfind_answer(ctx, depth, body)
    return web.Response(status=status, body=xml, content_type="application/xml", charset="utf-8")


async def propfind_answer(ctx: Access, depth: str, body: bytes) -> tuple[int, bytes]:
    """Status and XML body for a PROPFIND of Depth 0 or 1 (the aiohttp handler and the fast
    lane share it)."""
    preq = parse_propfind(body, max_size=ctx.services.settings.server.max_body_xml)
    ctx.authorize(Op.STAT)
    want_dead = needs_dead_properties(preq)
    if depth == "0" and want_dead:  # one storage call for the most frequent PROPFIND
        info, props = await ctx.storage.stat_with_properties(ctx.path)
        if info is None:
            raise NotFound("no such file or collection")
        xml = render_multistatus([info], preq, href_of=href_of, dead=[dead_properties(props)])
        return 207, xml
    info = await ctx.storage.stat(ctx.path)
    if info is None:
        raise NotFound("no such file or collection")
    entries = [info]
    if info.is_dir and depth == "1":
        ctx.authorize(Op.LIST)
        limit = ctx.services.settings.server.max_propfind_entries
        children = await ctx.storage.listdir(ctx.path, limit)
        if len(children) > limit:
            ctx.reasons.append(f"PROPFIND: {len(children)} entries, over {limit}")
            return 507, error_body("number-of-matches-within-limits")
        entries.extend(children)
    dead = None
    if want_dead:
        stored = await ctx.storage.read_properties([e.path for e in entries])
        dead = [dead_properties(s) for s in stored]
    return 207, render_multistatus(entries, preq, href_of=href_of, dead=dead)
