"""GET and HEAD: whole files, single and multiple ranges, Want-Digest.

* RFC 9110 §14: a satisfiable Range is always answered 206 (``Content-Range``); several ranges
  as ``multipart/byteranges`` (§14.6); none satisfiable 416 with ``Content-Range: bytes */size``.
  Offsets beyond 4 GiB are plain Python ints all the way to ``pread``.
* RFC 3230 ``Want-Digest`` -> one ``Digest`` value for the whole file, also on range requests
  (field report B20); adler32 comes from the value stored at upload time (no re-read).
* HEAD needs only the right to stat (every WLCG storage scope gives it); GET needs read.
* Data is streamed in pieces of at most 1 MiB (``send_range``): memory does not grow with file
  size, and page-cached data is read without an executor hop.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from segate.auth.principal import Op
from segate.dav.headers import format_digest, negotiate_digest, parse_range
from segate.dav.xml import http_date
from segate.errors import MethodNotAllowed, NotFound
from segate.storage.base import FileInfo
from segate.web.context import Access, RequestContext


def file_headers(info: FileInfo) -> dict[str, str]:
    return {
        "Last-Modified": http_date(info.mtime),
        "ETag": info.etag,
        "Accept-Ranges": "bytes",
    }


async def digest_headers(ctx: Access, info: FileInfo, want: str | None) -> dict[str, str]:
    """``Digest`` for a ``Want-Digest`` header value (nothing for a collection)."""
    if not want or info.is_dir:
        return {}
    for algo in negotiate_digest(want):
        value = await ctx.storage.checksum(info.path, algo)
        return {"Digest": format_digest(algo, value)}
    return {}


async def head_answer(ctx: Access, want_digest: str | None) -> tuple[dict[str, str], int]:
    """HEAD's headers and Content-Length (the aiohttp handler and the fast lane share it)."""
    ctx.authorize(Op.STAT)
    info = await ctx.storage.stat(ctx.path)
    if info is None:
        raise NotFound("no such file or collection")
    headers = file_headers(info)
    if want_digest:
        headers.update(await digest_headers(ctx, info, want_digest))
    headers["Content-Type"] = "httpd/unix-directory" if info.is_dir else "application/octet-stream"
    return headers, info.size


async def handle_head(ctx: RequestContext) -> web.StreamResponse:
    headers, size = await head_answer(ctx, ctx.request.headers.get("Want-Digest"))
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_length = size
    await resp.prepare(ctx.request)
    await resp.write_eof()
    return resp


async def handle_get(ctx: RequestContext) -> web.StreamResponse:
    ctx.authorize(Op.READ)
    info = await ctx.storage.stat(ctx.path)
    if info is None:
        raise NotFound("no such file or collection")
    if info.is_dir:
        raise MethodNotAllowed(
            "is a collection: list it with PROPFIND", headers={"Allow": "PROPFIND, OPTIONS, HEAD"}
        )
    handle = await ctx.storage.open_read(ctx.path)
    try:
        info = handle.info  # the opened file's own size is what we send
        ranges = parse_range(ctx.request.headers.get("Range"), info.size)
        if ranges and sum(e - s + 1 for s, e in ranges) > info.size:
            ranges = None  # overlapping ranges larger than the file: send it once (RFC 9110 §14.2)
        headers = file_headers(info)
        headers.update(await digest_headers(ctx, info, ctx.request.headers.get("Want-Digest")))
        if ranges is None:
            resp = web.StreamResponse(status=200, headers=headers)
            resp.content_type = "application/octet-stream"
            resp.content_length = info.size
            await resp.prepare(ctx.request)
            await handle.send_range(0, info.size, resp.write)
        elif len(ranges) == 1:
            start, end = ranges[0]
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
            resp = web.StreamResponse(status=206, headers=headers)
            resp.content_type = "application/octet-stream"
            resp.content_length = end - start + 1
            await resp.prepare(ctx.request)
            await handle.send_range(start, end - start + 1, resp.write)
        else:
            boundary = secrets.token_hex(12)
            parts = [
                (
                    (
                        f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Range: bytes {s}-{e}/{info.size}\r\n\r\n"
                    ).encode("ascii"),
                    s,
                    e,
                )
                for s, e in ranges
            ]
            closing = f"\r\n--{boundary}--\r\n".encode("ascii")
            total = sum(len(h) + e - s + 1 for h, s, e in parts) + len(closing)
            resp = web.StreamResponse(status=206, headers=headers)
            resp.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
            resp.content_length = total
            await resp.prepare(ctx.request)
            for head, s, e in parts:
                await resp.write(head)
                await handle.send_range(s, e - s + 1, resp.write)
            await resp.write(closing)
        await resp.write_eof()
        return resp
    finally:
        await handle.close()
