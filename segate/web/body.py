"""Small request bodies (PROPFIND XML, macaroon-request JSON) read with a hard limit."""

from __future__ import annotations

from aiohttp import web

from segate.errors import RequestTooLarge


async def read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"request body over {limit} bytes")
    out = bytearray()
    while True:
        data = await request.content.read(65536)
        if not data:
            break
        out += data
        if len(out) > limit:
            raise RequestTooLarge(f"request body over {limit} bytes")
    return bytes(out)
