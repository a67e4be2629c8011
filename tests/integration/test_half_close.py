"""A plain-HTTP client that half-closes (sends its requests, then FIN) gets its answers.

aiohttp's connection handler closes at the client's FIN, so a GET or PUT sent in full just
before it got no answer at all (a tester's finding: ``printf 'GET ...' | nc -N`` and scripts
ending with ``shutdown(SHUT_WR)`` do this). segate.web.protocol keeps the write side open
while complete requests run or wait, then closes; a request whose body never arrived in full
is not answered and leaves nothing behind. The fast lane's own half-close handling is tested
in test_fast_lane.py; here the lane hands over to aiohttp after the FIN as well.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.conftest import Gateway

SCOPE = "storage.read:/ storage.create:/ storage.modify:/"


def statuses(out: bytes) -> list[bytes]:
    """Status lines (a body before one does not end in CRLF, so search, do not split)."""
    return re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+(?=\r\n)", out)


async def send_then_fin(g: Gateway, data: bytes) -> bytes:
    """Write ``data``, half-close, and read until the server closes."""
    server = g.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 5)  # returns once the server closed
    finally:
        writer.close()


@pytest.fixture
async def g(make_gateway: Any) -> Gateway:
    gw: Gateway = await make_gateway()
    (gw.root / "f").write_bytes(b"f" * 100_000)
    (gw.root / "s").write_bytes(b"small\n")
    return gw


def head(g: Gateway, line: str, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {g.token(SCOPE)}\r\n"
    return f"{line} HTTP/1.1\r\nHost: x\r\n{auth}{extra}\r\n".encode()


async def test_a_get_then_fin_is_answered_in_full(g: Gateway) -> None:
    for _ in range(5):
        out = await send_then_fin(g, head(g, "GET /f"))
        assert statuses(out) == [b"HTTP/1.1 200 OK"]
        assert out.endswith(b"\r\n\r\n" + b"f" * 100_000)


async def test_pipelined_gets_then_fin_are_all_answered_in_order(g: Gateway) -> None:
    out = await send_then_fin(g, head(g, "GET /s") + head(g, "GET /f") + head(g, "GET /s"))
    assert statuses(out) == [b"HTTP/1.1 200 OK"] * 3
    assert out.endswith(b"\r\n\r\nsmall\n")
    assert out.count(b"f" * 100_000) == 1


async def test_a_head_then_a_get_then_fin(g: Gateway) -> None:
    """The lane answers the HEAD and hands the GET to aiohttp after the FIN arrived."""
    out = await send_then_fin(g, head(g, "HEAD /s") + head(g, "GET /s"))
    assert statuses(out) == [b"HTTP/1.1 200 OK"] * 2
    assert out.endswith(b"\r\n\r\nsmall\n")


async def test_a_put_with_its_whole_body_then_fin_is_stored(g: Gateway) -> None:
    body = b"p" * 70_000
    out = await send_then_fin(g, head(g, "PUT /new", f"Content-Length: {len(body)}\r\n") + body)
    assert statuses(out) == [b"HTTP/1.1 201 Created"]
    assert (g.root / "new").read_bytes() == body


async def test_a_put_whose_body_is_cut_by_the_fin_leaves_nothing(g: Gateway) -> None:
    out = await send_then_fin(g, head(g, "PUT /cut", "Content-Length: 1000\r\n") + b"x" * 10)
    assert out == b""  # cannot be answered: closed
    leftovers: list[Any] = []
    for _ in range(50):  # the handler sees the connection lost and removes its staging file
        await asyncio.sleep(0.02)
        leftovers = [p for p in (g.root / ".segate").rglob("*") if p.is_file()]
        if not leftovers:
            break
    assert leftovers == []
    assert not (g.root / "cut").exists()
