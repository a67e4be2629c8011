"""Third-party copy with a plain WebDAV server as the passive party: wsgidav (cheroot) on
loopback behind a bearer-token check, pulled from and pushed to by an in-process gateway."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.integration.tpc_helpers import RW, TPC, adler, assert_clean, copy, pull_headers

cheroot_wsgi = pytest.importorskip("cheroot.wsgi")
wsgidav_app = pytest.importorskip("wsgidav.wsgidav_app")

TOKEN = "wsgidav-test-token"
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def bearer_gate(app: WsgiApp, token: str) -> WsgiApp:
    """Only requests with ``Authorization: Bearer <token>`` reach the WebDAV app."""

    def gated(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") != f"Bearer {token}":
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [] if environ["REQUEST_METHOD"] == "HEAD" else [b"bearer token required\n"]
        return app(environ, start_response)

    return gated


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "webdav"
    root.mkdir()
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "provider_mapping": {"/": str(root)},
        "simple_dc": {"user_mapping": {"*": True}},  # anonymous inside the bearer gate
        "verbose": 0,
        "logging": {"enable": False},
    }
    app = bearer_gate(wsgidav_app.WsgiDAVApp(config), TOKEN)
    server = cheroot_wsgi.Server(("127.0.0.1", 0), app)
    server.prepare()
    port = server.bind_addr[1]
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", root
    finally:
        server.stop()
        thread.join(5)


@pytest.fixture
async def gw(make_gateway: Callable[..., Any]) -> Gateway:
    g: Gateway = await make_gateway(tpc=TPC)
    return g


async def test_pull_from_wsgidav_with_a_bearer_token(gw: Gateway, webdav: tuple[str, Path]) -> None:
    base, root = webdav
    data = os.urandom(2_500_000)
    (root / "dir").mkdir()
    (root / "dir" / "file name.bin").write_bytes(data)
    h = pull_headers(
        gw,
        f"{base}/dir/file%20name.bin".replace("http://", "dav://"),
        TransferHeaderAuthorization=f"Bearer {TOKEN}",
        Credential="none",
    )
    res = await copy(gw, "/from-wsgidav.bin", h)
    assert res.ok, res.text
    assert (gw.root / "from-wsgidav.bin").read_bytes() == data
    r = await gw.client.head(
        "/from-wsgidav.bin", headers={**gw.bearer(RW), "Want-Digest": "adler32"}
    )
    assert r.headers["Digest"] == f"adler32={adler(data)}"


async def test_pull_from_wsgidav_without_the_token_fails(
    gw: Gateway, webdav: tuple[str, Path]
) -> None:
    base, root = webdav
    (root / "f").write_bytes(b"f")
    res = await copy(gw, "/f", pull_headers(gw, f"{base}/f"))
    assert res.final.startswith("failure: remote side failed with status code 401")
    assert_clean(gw, "/f")


async def test_push_to_wsgidav(gw: Gateway, webdav: tuple[str, Path]) -> None:
    base, root = webdav
    data = os.urandom(1_500_000)
    (gw.root / "up.bin").write_bytes(data)
    h = {
        **gw.bearer("storage.read:/"),
        "Destination": f"{base}/pushed.bin",
        "TransferHeaderAuthorization": f"Bearer {TOKEN}",
    }
    res = await copy(gw, "/up.bin", h)
    assert res.ok, res.text
    assert (root / "pushed.bin").read_bytes() == data
