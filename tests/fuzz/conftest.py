"""A live in-process gateway on a background event loop, driven by blocking raw-socket requests,
so hypothesis (synchronous ``@given``) can send thousands of arbitrary requests cheaply.

The storage root holds a small tree; ``OUTSIDE`` is a sentinel file next to (not inside) the root:
no request may ever return its content.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from segate.config import settings_from_dict
from segate.devissuer import DevIssuer, ensure_dev_issuer
from segate.web.app import create_app, install_connection_limit
from tests.conftest import AUDIENCE, ISSUER, base_config

SENTINEL = b"SENTINEL-OUTSIDE-THE-ROOT-7f3a"
TREE = {
    "a/b/c/file": b"abc-file",
    "a/x": b"a-x",
    "ab/y": b"ab-y",
    "d/f": b"d-f",
    "safe/file.txt": b"safe-file",
    "secret/x": b"secret-x",
    "sp ace/p%ct": b"odd-names",
}


@dataclass
class Reply:
    status: int
    head: bytes
    body: bytes


class LiveGateway:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.root.mkdir()
        (base / "outside").mkdir()
        (base / "outside" / "SENTINEL").write_bytes(SENTINEL)
        (base / "SENTINEL").write_bytes(SENTINEL)
        for rel, data in TREE.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_bytes(data)
        (self.root / "up").mkdir()
        self.issuer: DevIssuer = ensure_dev_issuer(base / "state", ISSUER)
        cfg = base_config(
            self.root,
            self.issuer.jwks_file,
            macaroons={"secret_file": str(base / "mac-secret")},
            tpc={"connect_timeout": 0.5, "idle_timeout": 0.5},
        )
        self.settings = settings_from_dict(cfg, base)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        app = create_app(self.settings)
        runner = web.AppRunner(app, access_log=None, max_field_size=16384, max_line_size=16384)
        await runner.setup()
        assert runner.server is not None
        install_connection_limit(app, runner.server)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> LiveGateway:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def token(self, scope: str | None, **kw: Any) -> str:
        kw.setdefault("audience", AUDIENCE)
        return self.issuer.mint(scope=scope, **kw)

    def send(self, wire: bytes, timeout: float = 5.0) -> Reply:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(wire)
            buf = bytearray()
            while True:
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                buf += chunk
        head, _, body = bytes(buf).partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            status = 0  # no answer at all
        return Reply(status, head, body)

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
        hs = dict(headers or {})
        if body or method in ("PUT", "POST", "PROPPATCH"):
            hs.setdefault("Content-Length", str(len(body)))
        lines += [f"{k}: {v}" for k, v in hs.items()]
        wire = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
        return self.send(wire)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    g = LiveGateway(tmp_path_factory.mktemp("fuzz")).start()
    yield g
    g.stop()
    assert (g.base / "outside" / "SENTINEL").read_bytes() == SENTINEL  # never written either
