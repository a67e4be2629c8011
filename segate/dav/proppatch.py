"""PROPPATCH (RFC 4918 §9.2): set and remove dead properties of one resource.

* Authorisation: changing a resource's properties modifies it, so it needs the overwrite right
  (WLCG ``storage.modify``; a create-only token gets 403) on the resource, checked before the
  body is read. A missing resource is 404.
* Instructions run in document order and all or nothing (§9.2): if any names a protected live
  property (``xml.PROTECTED``) nothing is changed and the answer is 207 with 403
  (``cannot-modify-protected-property``) for those and 424 Failed Dependency for the rest.
  Otherwise storage applies them atomically; every property gets 200, or 507 when storage has
  no room for them (§9.2.1). Removing a property that does not exist is not an error (§14.23).
* The values are stored as the client's XML (namespaces, attributes, ``xml:lang`` kept, §4.3)
  and returned by PROPFIND; they travel with the resource on MOVE and COPY and go with DELETE
  (``storage/deadprops.py``).
"""

from __future__ import annotations

from aiohttp import web

from segate.auth.principal import Op
from segate.dav.propfind import href_of
from segate.dav.xml import PROTECTED, clark, parse_proppatch, render_proppatch
from segate.errors import NotFound
from segate.storage.base import NoSpaceError
from segate.web.body import read_limited
from segate.web.context import RequestContext


async def handle_proppatch(ctx: RequestContext) -> web.StreamResponse:
    ctx.authorize(Op.OVERWRITE)
    info = await ctx.storage.stat(ctx.path)
    if info is None:
        raise NotFound("no such file or collection")
    limit = ctx.services.settings.server.max_body_xml
    updates = parse_proppatch(await read_limited(ctx.request, limit), max_size=limit)
    if any(u.name in PROTECTED for u in updates):
        results = [(u.name, 403 if u.name in PROTECTED else 424) for u in updates]
        ctx.reasons.append("PROPPATCH of a protected property")
    else:
        status = 200
        try:
            await ctx.storage.patch_properties(ctx.path, [(clark(u.name), u.xml) for u in updates])
        except NoSpaceError:
            status = 507
            ctx.reasons.append("no room for the dead properties")
        results = [(u.name, status) for u in updates]
    body = render_proppatch(href_of(info), results)
    return web.Response(status=207, body=body, content_type="application/xml", charset="utf-8")
