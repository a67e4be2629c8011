"""B14 — PUT edge cases: empty body, missing framing, onto a directory, bad parent, abort.

Right value (token ``storage.modify:/d``): ``Content-Length: 0`` → 201, size 0; no framing at
all → 411 (or 400 when the body bytes are parsed as the next request) and no file; chunked 3 MiB
→ 201 and 3 MiB; onto ``/d/dir`` → 405, directory untouched; ``/d/file/child`` → 409;
``/d/missing/child`` → 201 because segate's default ``[storage] create_parents = true`` creates
each ancestor, each authorised as a mkdir (README; ``false`` → 409); 10 MiB declared, 5 MiB
sent, connection dropped → no file and no staging file. Never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.cases.conftest import status, statuses
from tests.conftest import Gateway
from tests.integration.tpc_helpers import staging

TOKEN = "storage.modify:/d"


async def setup(gw: Gateway) -> dict[str, str]:
    (gw.root / "d" / "dir").mkdir(parents=True)
    (gw.root / "d" / "dir" / "keep").write_bytes(b"K")
    (gw.root / "d" / "file").write_bytes(b"F")
    return gw.bearer(TOKEN)


async def test_put_edges(gw: Gateway) -> None:
    h = await setup(gw)
    assert await status(gw, "PUT", "/d/empty", h, data=b"") == 201
    assert (gw.root / "d" / "empty").stat().st_size == 0

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"c" * (1 << 20)

    assert await status(gw, "PUT", "/d/chunked", h, data=gen()) == 201
    assert (gw.root / "d" / "chunked").stat().st_size == 3 << 20
    assert await status(gw, "PUT", "/d/dir", h, data=b"x" * 1024) == 405
    assert (gw.root / "d" / "dir" / "keep").read_bytes() == b"K"
    assert await status(gw, "PUT", "/d/file/child", h, data=b"x") == 409
    assert await status(gw, "PUT", "/d/missing/child", h, data=b"x") == 201
    assert (gw.root / "d" / "missing").is_dir()


async def test_missing_parent_is_409_when_create_parents_off(make_gateway: Any) -> None:
    gw: Gateway = await make_gateway(storage={"create_parents": False})
    h = await setup(gw)
    assert await status(gw, "PUT", "/d/missing/child", h, data=b"x") == 409
    assert not (gw.root / "d" / "missing").exists()


async def test_no_framing_is_411_and_no_file(gw: Gateway) -> None:
    h = await setup(gw)
    head = f"PUT /d/nolen HTTP/1.1\r\nHost: x\r\nAuthorization: {h['Authorization']}\r\n\r\n"
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head.encode())
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"y" * (1 << 20))
    writer.write_eof()  # half-close
    out = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert statuses(out)[:1] in ([411], [400]), out[:100]
    assert not (gw.root / "d" / "nolen").exists()


async def test_aborted_upload_leaves_nothing(gw: Gateway) -> None:
    h = await setup(gw)
    head = (
        f"PUT /d/aborted HTTP/1.1\r\nHost: x\r\nAuthorization: {h['Authorization']}\r\n"
        f"Content-Length: {10 << 20}\r\n\r\n"
    )
    server = gw.client.server
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head.encode())
    for _ in range(5):
        writer.write(b"z" * (1 << 20))
        await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while staging(gw) and loop.time() < end:
        await asyncio.sleep(0.05)
    assert not (gw.root / "d" / "aborted").exists()
    assert staging(gw) == []
