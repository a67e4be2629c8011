"""Issue #8 limits: each has a clear 4xx (and a config key where it makes sense).

| limit | key | answer |
| --- | --- | --- |
| header line / field size | ``[server] max_header_size`` (16 KiB) | 400 (aiohttp parser) |
| URL length | ``MAX_PATH_BYTES`` (4096) | 414 |
| number of ranges | ``MAX_RANGES`` (200) | 400 |
| PROPFIND/PROPPATCH/JSON body | ``[server] max_body_xml`` (1 MiB) | 413 |
| JWT size | ``MAX_TOKEN_BYTES`` | 401 |
| macaroon size | ``MAX_MACAROON_BYTES`` | 401 |
| connections per client address | ``[server] max_connections_per_client`` (256) | 429 |
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from segate.auth.jwt import MAX_TOKEN_BYTES
from tests.cases.conftest import statuses
from tests.conftest import Gateway


async def test_header_too_large_is_400(make_gateway: Any) -> None:
    gw: Gateway = await make_gateway(server={"max_header_size": 2048})
    out = await gw.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
    assert statuses(out) in ([400], [431])
    out = await gw.raw(b"GET /" + b"a" * 4096 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(out) in ([400], [414], [431])
    out = await gw.raw(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: " + b"a" * 1000 + b"\r\n\r\n"
    )
    assert statuses(out) == [401]  # under the limit: a normal (anonymous) answer


async def test_url_too_long_is_414(gw: Gateway) -> None:
    h = gw.bearer("storage.read:/")
    r = await gw.client.get("/" + "a" * 5000, headers=h)
    assert r.status == 414
    r = await gw.client.get("/" + "/".join(["abcdefgh"] * 600), headers=h)
    assert r.status in (400, 414)


async def test_too_many_ranges_is_400(gw: Gateway) -> None:
    (gw.root / "f").write_bytes(b"x" * 100)
    rng = "bytes=" + ",".join(["0-0"] * 201)
    r = await gw.client.get("/f", headers={**gw.bearer("storage.read:/"), "Range": rng})
    assert r.status == 400


async def test_xml_and_json_bodies_over_the_limit_are_413(make_gateway: Any, tmp_path: Any) -> None:
    from tests.integration.test_macaroon_endpoint import macgw

    gw = await macgw(make_gateway, tmp_path, server={"max_body_xml": 4096})
    h = {**gw.bearer("storage.read:/ storage.modify:/"), "Depth": "0"}
    big = b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>' + b" " * 8192
    assert (await gw.client.request("PROPFIND", "/", headers=h, data=big)).status == 413
    patch = b'<D:propertyupdate xmlns:D="DAV:">' + b" " * 8192 + b"</D:propertyupdate>"
    assert (await gw.client.request("PROPPATCH", "/data/f", headers=h, data=patch)).status == 413
    body = json.dumps({"caveats": ["activity:DOWNLOAD"] * 1000}).encode()
    hj = {**gw.bearer("storage.read:/"), "Content-Type": "application/macaroon-request"}
    assert (await gw.client.post("/data", headers=hj, data=body)).status == 413

    async def chunks() -> Any:  # without Content-Length: counted while reading
        for _ in range(10):
            yield b" " * 1024

    assert (await gw.client.request("PROPFIND", "/", headers=h, data=chunks())).status == 413
    assert (await gw.client.post("/data", headers=hj, data=chunks())).status == 413


async def test_token_too_large_is_401(make_gateway: Any, tmp_path: Any) -> None:
    from tests.integration.test_macaroon_endpoint import macgw

    # with the default header limit (16 KiB) an oversized token is already a 400 from the parser
    gw = await macgw(make_gateway, tmp_path)
    r = await gw.client.get("/data/f", headers={"Authorization": "Bearer " + "e" * 20000})
    assert r.status == 400
    gw = await macgw(make_gateway, tmp_path, server={"max_header_size": 1 << 17})
    for tok in (
        "eyJ" + "A" * (MAX_TOKEN_BYTES + 1),  # JWT-shaped
        "MDAx" + "x" * (MAX_TOKEN_BYTES + 1),  # macaroon-shaped
        "e30." + "A" * (MAX_TOKEN_BYTES + 1) + ".sig",
    ):
        r = await gw.client.get("/data/f", headers={"Authorization": f"Bearer {tok}"})
        assert r.status == 401, tok[:10]
        assert "WWW-Authenticate" in r.headers


async def test_connections_per_client(make_gateway: Any) -> None:
    gw: Gateway = await make_gateway(server={"max_connections_per_client": 4})
    (gw.root / "f").write_bytes(b"F")
    tok = gw.token("storage.read:/")
    server = gw.client.server
    held = [await asyncio.open_connection(server.host, server.port) for _ in range(4)]
    await asyncio.sleep(0.05)
    req = f"GET /f HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n".encode()
    out = await gw.raw(req)
    assert out.startswith(b"HTTP/1.1 429"), out[:100]
    assert b"Retry-After: 1" in out
    # the held connections work
    reader, writer = held[0]
    writer.write(req)
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    out = await gw.raw(req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert out.startswith(b"HTTP/1.1 200")


async def test_default_connection_limit_is_generous(gw: Gateway) -> None:
    assert gw.settings.server.max_connections_per_client == 256
    (gw.root / "f").write_bytes(b"F")
    h = gw.bearer("storage.read:/")
    conns = [
        await asyncio.open_connection(gw.client.server.host, gw.client.server.port)
        for _ in range(100)
    ]
    r = await gw.client.get("/f", headers=h)
    assert r.status == 200
    for _, w in conns:
        w.close()


def test_limit_keys_are_documented() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for key in ("max_connections_per_client", "max_header_size", "max_body_xml"):
        assert f"`[server] {key}`" in readme, key
    _ = io
