"""B15 — uploads staged through a path the token does not cover.

Right value (token ``storage.modify:/d``): PUT ``/d/f`` 4 MiB → 201 (authorised against ``/d/f``,
never the staging path under ``<root>/.segate/tmp``); an aborted PUT leaves nothing; ``PROPFIND
Depth:1 /d`` lists only ``f`` before and after the failure; the staging area is unreachable
(``/.segate/...`` → 404 for every verb, with any token, also percent-encoded) and never listed.
"""

from __future__ import annotations

import asyncio
import io

import defusedxml.ElementTree as ET

from tests.cases.conftest import status
from tests.conftest import Gateway
from tests.integration.tpc_helpers import staging

D = "{DAV:}"


async def names(gw: Gateway, path: str, scope: str) -> list[str]:
    r = await gw.client.request("PROPFIND", path, headers={**gw.bearer(scope), "Depth": "1"})
    assert r.status == 207
    doc = ET.fromstring(await r.read())
    return sorted(h.text or "" for h in doc.iter(f"{D}href"))


async def test_staging_is_invisible(gw: Gateway) -> None:
    (gw.root / "d").mkdir()
    h = gw.bearer("storage.modify:/d")
    assert await status(gw, "PUT", "/d/f", h, data=io.BytesIO(b"f" * (4 << 20))) == 201
    # an aborted upload in flight: the listing never shows its staging file
    server = gw.client.server
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"PUT /d/g HTTP/1.1\r\nHost: x\r\nAuthorization: {h['Authorization']}\r\n"
        f"Content-Length: {8 << 20}\r\n\r\n".encode()
        + b"g" * (2 << 20)
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    assert await names(gw, "/d/", "storage.read:/") == ["/d/", "/d/f"]
    assert await names(gw, "/", "storage.read:/") == ["/", "/d/"]
    tmp = staging(gw)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    assert await names(gw, "/d/", "storage.read:/") == ["/d/", "/d/f"]
    assert staging(gw) == []
    god = gw.bearer("storage.read:/ storage.modify:/ storage.create:/")
    targets = ["/.segate", "/.segate/", "/.segate/tmp/", "/%2esegate/tmp"]
    targets += [f"/.segate/tmp/{p.name}" for p in tmp]
    for t in targets:
        for method in ("GET", "PROPFIND", "PUT", "DELETE", "MKCOL"):
            assert await status(gw, method, t, god, data=b"") == 404, (method, t)
    for raw in ("//.segate/tmp/", "/x/../.segate/tmp/", "/%2Esegate/tmp/"):
        out = await gw.raw(
            f"GET {raw} HTTP/1.1\r\nHost: x\r\nAuthorization: {god['Authorization']}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        assert out.startswith(b"HTTP/1.1 404"), (raw, out[:80])
    assert (gw.root / ".segate" / "tmp").is_dir()
