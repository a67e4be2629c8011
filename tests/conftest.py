"""Shared fixtures: an in-process gateway over a temporary storage root, with a dev issuer."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from segate.config import Settings, settings_from_dict
from segate.devissuer import DevIssuer, ensure_dev_issuer
from segate.web.app import create_app, install_connection_limit
from segate.web.lane import FastLane
from segate.web.redact import install_log_filter
from testbed.pki import TestPKI
from tests.grid_pki import shared_grid_pki
from tests.secrets import SecretWatch, watch_app

ISSUER = "https://issuer.test.invalid/"
AUDIENCE = "https://localhost:8443"


@dataclass
class Gateway:
    client: TestClient[web.Request, web.Application]
    root: Path
    issuer: DevIssuer
    settings: Settings

    def token(self, scope: str | None = None, **kw: Any) -> str:
        kw.setdefault("audience", AUDIENCE)
        return self.issuer.mint(scope=scope, **kw)

    def bearer(self, scope: str | None = None, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, **kw)}"}

    async def raw(self, data: bytes, *, read_timeout: float = 5.0) -> bytes:
        """Send raw bytes on a fresh connection (paths and framing clients would normalise)."""
        server = self.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(data)
        await writer.drain()
        out = bytearray()
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        writer.close()
        return bytes(out)


class LaneTestServer(TestServer):
    """aiohttp's TestServer with connections accepted as ``segate serve`` accepts them: by the
    fast lane (segate.web.lane), which hands what it does not serve itself to aiohttp. So the
    in-process tests exercise both paths, as real clients do. Handlers are cancelled when
    their connection goes (``segate serve`` leaves aiohttp's default, not cancelling them;
    ``make_gateway(handler_cancellation=False)`` runs as it does)."""

    handler_cancellation = True

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kw: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=self.handler_cancellation, **kw)
        await self.runner.setup()
        assert self.runner.server is not None
        install_connection_limit(self.app, self.runner.server)
        self.lane = FastLane(self.app, self.runner.server)
        sock = self.socket_factory(self.host, 0, socket.AF_INET)
        self._listener = await asyncio.get_running_loop().create_server(self.lane, sock=sock)
        self.host, self.port = sock.getsockname()[:2]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self.runner is not None and not self._closed:
            self._listener.close()
            await self.lane.shutdown(0.5)
        await super().close()


def base_config(root: Path, jwks: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:8443"},
        "storage": {"root": str(root)},
        "tokens": {
            "audiences": [AUDIENCE],
            "issuers": [{"issuer": ISSUER, "base_path": "/", "jwks_file": str(jwks)}],
        },
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


GatewayFactory = Callable[..., "asyncio.Future[Gateway]"]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[web.Request, web.Application]] = []
    install_log_filter()  # as `segate serve` sets up logging
    issuer = ensure_dev_issuer(tmp_path / "state", ISSUER)

    async def factory(**overrides: Any) -> Gateway:
        root = tmp_path / f"root{len(clients)}"
        root.mkdir()
        cancel = overrides.pop("handler_cancellation", True)
        settings = settings_from_dict(base_config(root, issuer.jwks_file, **overrides), tmp_path)
        app = create_app(settings)
        watch_app(app)
        limit = settings.server.max_header_size  # as segate.web.server configures the runner
        server = LaneTestServer(app)
        server.handler_cancellation = cancel
        await server.start_server(max_field_size=limit, max_line_size=limit)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Gateway(client, root, issuer, settings)

    yield factory
    for c in clients:
        await c.close()


@pytest.fixture
async def gw(make_gateway: Callable[..., Any]) -> Gateway:
    g: Gateway = await make_gateway()
    return g


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.INFO, logger="segate.access")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "segate.access"]

    return lines


@pytest.fixture(scope="session")
def grid_pki() -> TestPKI:
    """The X509/VOMS test PKI (testbed/pki.py: CA dir, user/VOMS certs, proxies), made once."""
    return shared_grid_pki()


@pytest.fixture(autouse=True)
def secret_watch() -> Iterator[SecretWatch]:
    """Issue #8: every token and macaroon a test mints must never reach a log line, an error
    body or a ``Location`` header (B09). Checked after every test."""
    with SecretWatch() as watch:
        yield watch
    watch.assert_clean()
