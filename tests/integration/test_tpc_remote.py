"""Third-party copy against fake remotes on loopback: what the remote sees (B21, B26), and every
way the remote can fail (B22, B24), each ending in one ``failure:`` line and no partial file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from segate.config import settings_from_dict
from segate.devissuer import ensure_dev_issuer
from segate.devpki import ensure_dev_pki
from segate.web.app import create_app
from segate.web.tls import server_ssl_context
from tests.conftest import AUDIENCE, ISSUER, Gateway, base_config
from tests.integration.tpc_helpers import (
    RW,
    TPC,
    FakeRemote,
    adler,
    assert_clean,
    copy,
    pull_headers,
    receive_put,
    serve_bytes,
    wait_clean,
)

DATA = os.urandom(300_000)


@pytest.fixture
async def remote() -> AsyncIterator[FakeRemote]:
    r = await FakeRemote().start()
    yield r
    await r.close()


@pytest.fixture
async def gw(make_gateway: Callable[..., Any]) -> Gateway:
    g: Gateway = await make_gateway(tpc=TPC)
    return g


# -- what the remote sees --------------------------------------------------------------------
async def test_transfer_headers_are_forwarded_and_client_token_is_not(
    gw: Gateway, remote: FakeRemote
) -> None:
    remote.routes["/src"] = serve_bytes(DATA, need_auth="Bearer R")
    client = gw.bearer(RW)
    for prefix in ("TransferHeader", "transferheader", "TRANSFERHEADER"):
        remote.seen.clear()
        h = {
            **client,
            "Source": remote.url("/src"),
            f"{prefix}Authorization": "Bearer R",
            f"{prefix}ArchiveMetadata": "abc",
            "Credential": "none",
            "X-Number-Of-Streams": "1",
        }
        res = await copy(gw, "/d/dst", h)
        assert res.ok, res.text
        assert (gw.root / "d" / "dst").read_bytes() == DATA
        assert {s.method for s in remote.seen} == {"HEAD", "GET"}
        for s in remote.seen:
            names = [k for k, _ in s.headers]
            assert "Authorization" in names and "ArchiveMetadata" in names  # canonical case
            assert s.header("Authorization") == ["Bearer R"]
            assert s.header("ArchiveMetadata") == ["abc"]
            assert not [k for k in names if k.lower().startswith("transferheader")]
            assert all(client["Authorization"] not in v for _, v in s.headers)
            assert s.header("User-Agent")[0].startswith("segate-tpc/")


async def test_without_the_remote_token_the_failure_names_401(
    gw: Gateway, remote: FakeRemote
) -> None:
    remote.routes["/src"] = serve_bytes(DATA, need_auth="Bearer R")
    res = await copy(gw, "/d/dst", pull_headers(gw, remote.url("/src")))
    assert res.status == 202 and res.final.startswith("failure:") and "401" in res.final
    assert_clean(gw, "/d/dst")


async def test_push_sends_a_length_and_expect_continue(gw: Gateway, remote: FakeRemote) -> None:
    store: dict[str, bytes] = {}
    remote.routes["/up/big"] = receive_put(store)
    remote.routes["/up/small"] = receive_put(store)
    big = os.urandom(2 << 20)
    (gw.root / "big").write_bytes(big)
    (gw.root / "small").write_bytes(b"small")
    for name in ("big", "small"):
        h = {**gw.bearer(RW), "Destination": remote.url(f"/up/{name}")}
        h["TransferHeaderAuthorization"] = "Bearer R"
        assert (await copy(gw, f"/{name}", h)).ok
    assert store == {"/up/big": big, "/up/small": b"small"}
    puts = {s.raw_path: s for s in remote.seen if s.method == "PUT"}
    assert puts["/up/big"].header("Content-Length") == [str(len(big))]
    assert puts["/up/big"].header("Expect") == ["100-continue"]
    assert puts["/up/small"].header("Expect") == []
    assert all(not s.header("Transfer-Encoding") for s in puts.values())
    assert all(s.header("Authorization") == ["Bearer R"] for s in puts.values())


async def test_push_overwrite_f_checks_the_remote(gw: Gateway, remote: FakeRemote) -> None:
    store = {"/up/x": b"old"}
    remote.routes["/up/x"] = receive_put(store)
    (gw.root / "x").write_bytes(b"new")
    h = {**gw.bearer(RW), "Destination": remote.url("/up/x"), "Overwrite": "F"}
    res = await copy(gw, "/x", h)
    assert res.final.startswith("failure:") and "Overwrite" in res.final
    assert store["/up/x"] == b"old"
    h["Overwrite"] = "T"
    assert (await copy(gw, "/x", h)).ok and store["/up/x"] == b"new"


async def test_encoded_paths_and_queries_are_kept(gw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/dir/name%20with%2Bplus.root"] = serve_bytes(DATA)
    src = remote.url("/dir/name%20with%2Bplus.root?sig=a%2Fb&tok=1&copy_mode=pull")
    res = await copy(gw, "/d/out%20file", pull_headers(gw, src))
    assert res.ok, res.text
    assert (gw.root / "d" / "out file").read_bytes() == DATA
    assert {s.raw_path for s in remote.seen} == {
        "/dir/name%20with%2Bplus.root?sig=a%2Fb&tok=1&copy_mode=pull"
    }


# -- redirects (B26) --------------------------------------------------------------------------
def redirect(location: str, status: int = 307) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


async def test_relative_redirect_is_followed_with_query(gw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/a"] = redirect("/other/x?sig=a%2Fb")
    remote.routes["/other/x"] = serve_bytes(DATA, need_auth="Bearer R")
    h = pull_headers(gw, remote.url("/a"), TransferHeaderAuthorization="Bearer R")
    res = await copy(gw, "/r", h)
    assert res.ok, res.text
    assert "/other/x?sig=a%2Fb" in {s.raw_path for s in remote.seen}


async def test_redirect_to_another_host_drops_credentials(
    make_gateway: Callable[..., Any], remote: FakeRemote
) -> None:
    other = await FakeRemote().start()
    try:
        other.routes["/x"] = serve_bytes(DATA)
        remote.routes["/a"] = redirect(other.url("/x", host="localhost"), 302)
        for across, expected in ((False, []), (True, ["Bearer R"])):
            gw: Gateway = await make_gateway(
                tpc={**TPC, "forward_credentials_across_hosts": across}
            )
            other.seen.clear()
            h = pull_headers(gw, remote.url("/a"), TransferHeaderAuthorization="Bearer R")
            h["TransferHeaderArchiveMetadata"] = "m"
            assert (await copy(gw, "/r", h)).ok
            assert other.seen and all(s.header("Authorization") == expected for s in other.seen)
            assert all(s.header("ArchiveMetadata") == ["m"] for s in other.seen)
    finally:
        await other.close()


async def test_redirect_loop_ends_in_failure(gw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/a"] = redirect("/b")
    remote.routes["/b"] = redirect(remote.url("/a"), 301)
    res = await copy(gw, "/r", pull_headers(gw, remote.url("/a")))
    assert res.final.startswith("failure:") and "redirect" in res.final
    assert len(remote.seen) <= 2 * (5 + 1)
    assert_clean(gw, "/r")


async def test_redirect_with_userinfo_is_refused(gw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/a"] = redirect(remote.url("/x").replace("http://", "http://u:p@"))
    res = await copy(gw, "/r", pull_headers(gw, remote.url("/a")))
    assert res.final.startswith("failure:") and "credentials" in res.final
    assert [s.method for s in remote.seen] == ["HEAD"]  # nothing followed the redirect


async def test_redirect_to_a_refused_address(gw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/a"] = redirect("http://127.5.5.5:9/x")
    res = await copy(gw, "/r", pull_headers(gw, remote.url("/a")))
    assert res.final.startswith("failure: refused to contact http://127.5.5.5:9/x")
    assert_clean(gw, "/r")


async def test_https_to_http_downgrade_is_refused(
    make_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    pki = ensure_dev_pki(tmp_path / "pki")
    gw: Gateway = await make_gateway(tpc=TPC, server={"ca_dir": str(pki.ca_dir)})
    plain = await FakeRemote().start()
    tls = await FakeRemote().start(server_ssl_context(pki.host_cert, pki.host_key, None))
    try:
        plain.routes["/x"] = serve_bytes(DATA)
        tls.routes["/ok"] = serve_bytes(DATA)
        tls.routes["/down"] = redirect(plain.url("/x"))
        assert (await copy(gw, "/ok", pull_headers(gw, tls.url("/ok", "localhost")))).ok
        res = await copy(gw, "/r", pull_headers(gw, tls.url("/down", "localhost")))
        assert res.final.startswith("failure:") and "downgrade" in res.final
        assert not plain.seen
        assert_clean(gw, "/r")
    finally:
        await plain.close()
        await tls.close()


# -- failures (B22, B24) ----------------------------------------------------------------------
@pytest.mark.parametrize("status", [403, 404, 500])
async def test_remote_error_status(gw: Gateway, remote: FakeRemote, status: int) -> None:
    async def fail(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=f"Unable to open; code {status}")

    remote.routes["/src"] = fail
    res = await copy(gw, "/d/f", pull_headers(gw, remote.url("/src")))
    assert res.status == 202
    assert res.final.startswith(f"failure: remote side failed with status code {status}")
    assert f"code {status}" in res.final
    assert_clean(gw, "/d/f")
    (gw.root / "up").write_bytes(b"x")
    res = await copy(gw, "/up", {**gw.bearer(RW), "Destination": remote.url("/src")})
    assert res.final.startswith(f"failure: remote side failed with status code {status}")


async def test_remote_dies_mid_transfer(gw: Gateway, remote: FakeRemote) -> None:
    async def die(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await resp.prepare(request)
        if request.method == "GET":
            await resp.write(DATA[:100_000])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
        return resp

    remote.routes["/src"] = die
    res = await copy(gw, "/d/f", pull_headers(gw, remote.url("/src")))
    assert res.final.startswith("failure:"), res.text
    assert_clean(gw, "/d/f")


async def test_remote_stalls_idle_timeout(gw: Gateway, remote: FakeRemote) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await resp.prepare(request)
        if request.method == "GET":
            await resp.write(DATA[:50_000])
            await asyncio.sleep(30)
        return resp

    remote.routes["/src"] = stall
    t0 = time.monotonic()
    res = await copy(gw, "/d/f", pull_headers(gw, remote.url("/src")))
    assert time.monotonic() - t0 < 1.5 + 2.0
    assert res.final == "failure: no bytes received from the source in 1.5 seconds (pull mode)"
    assert_clean(gw, "/d/f")


async def test_push_to_a_remote_that_stops_reading(gw: Gateway, remote: FakeRemote) -> None:
    release = asyncio.Event()

    async def stop_reading(request: web.Request) -> web.StreamResponse:
        await request.content.read(1 << 20)
        with contextlib.suppress(TimeoutError):  # with reading paused it never sees our reset
            await asyncio.wait_for(release.wait(), 30)
        return web.Response(status=201)

    remote.routes["/up"] = stop_reading
    (gw.root / "big").write_bytes(os.urandom(64 << 20))
    t0 = time.monotonic()
    res = await copy(gw, "/big", {**gw.bearer(RW), "Destination": remote.url("/up")})
    release.set()
    assert time.monotonic() - t0 < 1.5 + 2.0
    assert res.final == "failure: no bytes sent to the destination in 1.5 seconds (push mode)"


async def test_tls_handshake_never_answered(make_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await make_gateway(tpc={**TPC, "connect_timeout": 0.5, "idle_timeout": 5})

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        res = await copy(gw, "/f", pull_headers(gw, f"https://127.0.0.1:{port}/x"))
        assert res.final.startswith("failure:") and "timed out" in res.final
    finally:
        server.close()
        await server.wait_closed()
    assert_clean(gw, "/f")


async def test_wrong_length(gw: Gateway, remote: FakeRemote) -> None:
    async def liar(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":  # announces more than GET will send
            return web.Response(headers={"Content-Length": str(len(DATA) + 10)})
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(DATA)
        await resp.write_eof()
        return resp

    remote.routes["/src"] = liar
    res = await copy(gw, "/d/f", pull_headers(gw, remote.url("/src")))
    assert res.final == f"failure: the source sent {len(DATA)} bytes but announced {len(DATA) + 10}"
    assert_clean(gw, "/d/f")


async def test_checksum_verification(gw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/good"] = serve_bytes(DATA, digest=adler(DATA).lstrip("0").upper())
    remote.routes["/bad"] = serve_bytes(DATA, digest="deadbeef")
    remote.routes["/none"] = serve_bytes(DATA)
    verify = {"RequireChecksumVerification": "true"}
    assert (await copy(gw, "/good", pull_headers(gw, remote.url("/good"), **verify))).ok
    heads = [s for s in remote.seen if s.method == "HEAD"]
    assert heads and heads[0].header("Want-Digest") == ["adler32"]
    res = await copy(gw, "/bad", pull_headers(gw, remote.url("/bad"), **verify))
    assert res.final.startswith("failure: checksum mismatch: source adler32 deadbeef")
    assert_clean(gw, "/bad")
    res = await copy(gw, "/none", pull_headers(gw, remote.url("/none"), **verify))
    assert res.final.startswith("failure: the source sent no adler32 checksum")
    assert_clean(gw, "/none")
    # without verification a missing or wrong digest does not matter
    assert (await copy(gw, "/bad", pull_headers(gw, remote.url("/bad")))).ok


async def test_pushed_checksum_mismatch_deletes_remote_copy(
    gw: Gateway, remote: FakeRemote
) -> None:
    store: dict[str, bytes] = {}
    put = receive_put(store)

    async def corrupting(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            store.pop(request.path, None)
            return web.Response(status=204)
        if request.method == "HEAD" and "Want-Digest" in request.headers:
            return web.Response(headers={"Digest": "adler32=00000001"})
        return await put(request)

    remote.routes["/up"] = corrupting
    (gw.root / "f").write_bytes(DATA)
    h = {**gw.bearer(RW), "Destination": remote.url("/up"), "RequireChecksumVerification": "true"}
    res = await copy(gw, "/f", h)
    assert res.final.startswith("failure: checksum mismatch") and store == {}


async def wait_for_get(remote: FakeRemote) -> None:
    for _ in range(200):
        if any(s.method == "GET" for s in remote.seen):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the transfer never started")


async def test_client_disconnect_aborts(gw: Gateway, remote: FakeRemote) -> None:
    closed = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            for off in range(0, len(DATA), 1000):
                await resp.write(DATA[off : off + 1000])
                await asyncio.sleep(0.05)
        finally:
            closed.set()
        return resp

    remote.routes["/src"] = slow
    r = await gw.client.request("COPY", "/d/f", headers=pull_headers(gw, remote.url("/src")))
    assert r.status == 202
    await r.content.readuntil(b"End\n")
    await wait_for_get(remote)
    r.close()  # the client goes away
    await asyncio.wait_for(closed.wait(), 5)
    await wait_clean(gw, "/d/f")


async def test_client_disconnect_aborts_on_a_real_server(
    tmp_path: Path, remote: FakeRemote
) -> None:
    """As ``segate serve`` runs it: aiohttp does not cancel handlers when a client goes away."""
    issuer = ensure_dev_issuer(tmp_path / "state", ISSUER)
    root = tmp_path / "served"
    root.mkdir()
    settings = settings_from_dict(base_config(root, issuer.jwks_file, tpc=TPC), tmp_path)
    runner = web.AppRunner(create_app(settings), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    closed = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        try:
            for off in range(0, len(DATA), 1000):
                await resp.write(DATA[off : off + 1000])
                await asyncio.sleep(0.05)
        finally:
            closed.set()
        return resp

    remote.routes["/src"] = slow
    token = issuer.mint(scope=RW, audience=AUDIENCE)
    try:
        async with aiohttp.ClientSession() as session:
            r = await session.request(
                "COPY",
                f"http://127.0.0.1:{port}/d/f",
                headers={"Authorization": f"Bearer {token}", "Source": remote.url("/src")},
            )
            assert r.status == 202
            await r.content.readuntil(b"End\n")
            await wait_for_get(remote)
            r.close()
        await asyncio.wait_for(closed.wait(), 5)
        for _ in range(100):
            if not list((root / ".segate" / "tmp").iterdir()):
                break
            await asyncio.sleep(0.05)
        assert not list((root / ".segate" / "tmp").iterdir())
        assert not (root / "d" / "f").exists()
    finally:
        await runner.cleanup()
