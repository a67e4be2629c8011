"""Shared fixtures: an in-process gateway over a temporary storage root, with a dev issuer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from segate.config import Settings, settings_from_dict
from segate.devissuer import DevIssuer, ensure_dev_issuer
from segate.web.app import create_app
from testbed.pki import TestPKI, build_test_pki

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
    issuer = ensure_dev_issuer(tmp_path / "state", ISSUER)

    async def factory(**overrides: Any) -> Gateway:
        root = tmp_path / f"root{len(clients)}"
        root.mkdir()
        settings = settings_from_dict(base_config(root, issuer.jwks_file, **overrides), tmp_path)
        app = create_app(settings)
        client = TestClient(TestServer(app))
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
def grid_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """The X509/VOMS test PKI (testbed/pki.py: CA dir, user/VOMS certs, proxies), made once."""
    return build_test_pki(tmp_path_factory.mktemp("grid-pki"))
