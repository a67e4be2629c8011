"""The address guard for third-party copies (segate/tpc/netguard.py).

Only loopback addresses appear here (127.0.0.0/8, ::1, localhost): a broken guard must never be
able to send a test's traffic off this machine."""

from __future__ import annotations

import asyncio
import ipaddress

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from segate.tpc.netguard import (
    BadScheme,
    GuardedResolver,
    NetGuard,
    RefusedRemote,
    address_class,
)

LOOPBACK = ["127.0.0.1", "127.5.5.5", "127.255.255.254", "::1", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("addr", LOOPBACK)
def test_loopback_is_refused_by_default(addr: str) -> None:
    ip = ipaddress.ip_address(addr)
    assert address_class(ip) == "loopback"
    assert NetGuard().refusal("somehost", ip) is not None


@given(st.integers(min_value=0, max_value=(1 << 24) - 1))
def test_all_of_127_8_is_refused_unless_allowed(low: int) -> None:
    ip = ipaddress.IPv4Address((127 << 24) | low)
    assert NetGuard().refusal(str(ip), ip) is not None
    assert NetGuard.from_allow(["127.0.0.0/8"]).refusal(str(ip), ip) is None
    assert (
        NetGuard.from_allow(["::ffff:127.0.0.0/104"]).refusal(
            "h", ipaddress.ip_address(f"::ffff:{ip}")
        )
        is None
    )


def test_allow_list_entries() -> None:
    one = NetGuard.from_allow(["127.0.0.1", "[::1]", "LocalHost."])
    lo = ipaddress.ip_address("127.0.0.1")
    other = ipaddress.ip_address("127.5.5.5")
    assert one.refusal("127.0.0.1", lo) is None
    assert one.refusal("x", other) is not None
    assert one.refusal("localhost", other) is None  # the name is allowed, whatever it resolves to
    assert one.refusal("localhost.", other) is None
    assert one.refusal("[::1]", ipaddress.ip_address("::1")) is None
    assert one.refusal("localhostx", other) is not None


def test_check_url() -> None:
    guard = NetGuard()
    with pytest.raises(BadScheme):
        guard.check_url(URL("ftp://127.0.0.1/x"))
    for url in ("http://127.0.0.1:1/x", "https://[::1]/x", "http://127.5.5.5/"):
        with pytest.raises(RefusedRemote, match="loopback"):
            guard.check_url(URL(url))
    assert guard.check_url(URL("https://localhost/x")) is None  # a name: judged when resolved


async def test_vet_resolves_names_and_keeps_only_allowed_addresses() -> None:
    with pytest.raises(RefusedRemote, match="loopback"):
        await NetGuard().vet(URL("http://localhost:1/x"))
    with pytest.raises(RefusedRemote):
        await NetGuard().vet(URL("http://127.1:1/x"))  # legacy numeric forms are names
    addrs = await NetGuard.from_allow(["localhost"]).vet(URL("http://localhost:1/x"))
    assert addrs and all(ipaddress.ip_address(a).is_loopback for a, p in addrs)
    v4 = await NetGuard.from_allow(["127.0.0.1"]).vet(URL("http://localhost:1/x"))
    assert v4 == [("127.0.0.1", 1)]  # ::1 dropped, 127.0.0.1 kept


async def test_client_connects_only_through_the_guard() -> None:
    """Even with no check before connecting, the resolver refuses: nothing reaches the port."""
    accepted = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(NetGuard()), use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://localhost:{port}/")
        assert accepted == 0
        allow = NetGuard.from_allow(["localhost"])
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow), use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://localhost:{port}/")  # connects, then is hung up on
        assert accepted >= 1
    finally:
        server.close()
        await server.wait_closed()
