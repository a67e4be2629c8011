"""Helpers for third-party-copy tests: fake remotes on loopback, COPY calls, marker parsing."""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Gateway

RW = "storage.read:/ storage.create:/ storage.modify:/"
MARKER = re.compile(
    r"Perf Marker\n"
    r"Timestamp: (\d+)\n"
    r"Stripe Index: 0\n"
    r"Stripe Bytes Transferred: (\d+)\n"
    r"Total Stripe Count: 1\n"
    r"(?:RemoteConnections: (tcp:[^\n]+)\n)?"
    r"End\n"
)
FINAL = re.compile(r"(success: Created|failure: [^\n]+)\n")
TPC: dict[str, Any] = {
    "allow_hosts": ["127.0.0.1", "localhost"],
    "marker_interval": 0.2,
    "idle_timeout": 1.5,
    "connect_timeout": 2,
}


@dataclass
class CopyResult:
    status: int
    text: str
    headers: dict[str, str]
    markers: list[tuple[int, int, str | None]] = field(default_factory=list)
    final: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 202 and self.final == "success: Created"


def parse_stream(text: str) -> tuple[list[tuple[int, int, str | None]], str]:
    """Markers and the final line; asserts the body is exactly markers + one final line."""
    markers: list[tuple[int, int, str | None]] = []
    pos = 0
    while (m := MARKER.match(text, pos)) is not None:
        markers.append((int(m.group(1)), int(m.group(2)), m.group(3)))
        pos = m.end()
    final = FINAL.fullmatch(text, pos)
    assert final is not None, f"unexpected stream tail: {text[pos:]!r}"
    return markers, final.group(1)


async def copy(gw: Gateway, path: str, headers: dict[str, str]) -> CopyResult:
    r = await gw.client.request("COPY", path, headers=headers)
    text = await r.text()
    res = CopyResult(r.status, text, dict(r.headers))
    if r.status == 202:
        assert r.headers["Content-Type"].startswith("text/plain")
        res.markers, res.final = parse_stream(text)
        assert res.markers, "at least one perf marker"
        counts = [b for _, b, _ in res.markers]
        assert counts == sorted(counts), "byte counts never decrease"
    return res


def pull_headers(gw: Gateway, source: str, scope: str = RW, **extra: str) -> dict[str, str]:
    return {**gw.bearer(scope), "Source": source, **extra}


def staging(gw: Gateway) -> list[Path]:
    tmp = gw.root / ".segate" / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def assert_clean(gw: Gateway, rel: str) -> None:
    assert not (gw.root / rel.lstrip("/")).exists(), f"{rel} left behind"
    assert staging(gw) == [], "staging file left behind"


async def wait_clean(gw: Gateway, rel: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while staging(gw) and loop.time() < end:
        await asyncio.sleep(0.05)
    assert_clean(gw, rel)


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


RemoteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeRemote:
    """A tiny HTTP(S) peer on loopback whose routes a test writes; records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, RemoteHandler] = {}
        self.seen: list[Seen] = []
        self.server: TestServer | None = None
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.app = app

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> FakeRemote:
        self.server = TestServer(self.app)
        await self.server.start_server(ssl=ssl_context)
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        assert self.server is not None
        return f"{self.server.scheme}://{host}:{self.port}{path}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.seen.append(Seen(request.method, request.raw_path, headers))
        handler = self.routes.get(request.raw_path.partition("?")[0])
        if handler is None:
            return web.Response(status=404, text="no such file")
        return await handler(request)


def serve_bytes(
    data: bytes,
    *,
    digest: str | None = None,
    ranges: bool = True,
    need_auth: str | None = None,
    piece: int = 1 << 16,
    delay: float = 0.0,
) -> RemoteHandler:
    """HEAD/GET of ``data`` (single ranges when ``ranges``), optionally slow or token-checked."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if need_auth is not None and request.headers.get("Authorization") != need_auth:
            return web.Response(status=401, text="token required")
        headers = {"Content-Type": "application/octet-stream"}
        if ranges:
            headers["Accept-Ranges"] = "bytes"
        if digest is not None and "Want-Digest" in request.headers:
            headers["Digest"] = f"adler32={digest}"
        start, end, status = 0, len(data) - 1, 200
        rng = request.headers.get("Range")
        if ranges and rng and request.method == "GET":
            a, _, b = rng.removeprefix("bytes=").partition("-")
            start, end, status = int(a), min(int(b), len(data) - 1), 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start + 1
        await resp.prepare(request)
        if request.method == "GET":
            for off in range(start, end + 1, piece):
                await resp.write(data[off : min(off + piece, end + 1)])
                if delay:
                    await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    return handler


def receive_put(store: dict[str, bytes], status: int = 201) -> RemoteHandler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            if request.path in store:
                return web.Response(status=200, headers={"Content-Length": "0"})
            return web.Response(status=404)
        if request.method != "PUT":
            return web.Response(status=405)
        store[request.path] = await request.read()
        return web.Response(status=status)

    return handler
