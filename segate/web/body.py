"""Small request bodies (PROPFIND XML, macaroon-request JSON) read with a hard limit, and the
``100 Continue`` interim answer, which segate sends itself (aiohttp's automatic one is off:
a refused client should not be invited to send its body)."""

from __future__ import annotations

from aiohttp import web

from segate.errors import RequestTooLarge


async def send_continue(request: web.Request) -> None:
    """Answer ``Expect: 100-continue`` (HTTP/1.1 and later only)."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def read_limited(request: web.Request, limit: int, *, invite: bool = True) -> bytes:
    """The body, at most ``limit`` bytes (else 413); ``invite``: answer ``Expect`` first
    (False when the caller already did)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(f"request body over {limit} bytes")
    if invite:
        await send_continue(request)  # the client may be waiting before it sends the body
    out = bytearray()
    while True:
        data = await request.content.read(65536)
        if not data:
            break
        out += data
        if len(out) > limit:
            raise RequestTooLarge(f"request body over {limit} bytes")
    return bytes(out)
