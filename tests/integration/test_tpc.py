"""Third-party copy between two in-process gateways (loopback): pull, push, markers, local
authorisation and the errors answered before 202 (PROTOCOLS.md §4; B21, B22, B25)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from segate.web.app import SERVICES
from tests.conftest import Gateway
from tests.integration.tpc_helpers import (
    RW,
    TPC,
    FakeRemote,
    adler,
    assert_clean,
    copy,
    pull_headers,
    serve_bytes,
)


@pytest.fixture
async def pair(make_gateway: Callable[..., Any]) -> tuple[Gateway, Gateway]:
    """(passive, active): the first serves or receives the data, the second runs the copy."""
    return await make_gateway(tpc=TPC), await make_gateway(tpc=TPC)


def url(gw: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gw.client.server.port}{path}"


def remote_token(gw: Gateway, scope: str = "storage.read:/") -> str:
    return f"Bearer {gw.token(scope)}"


async def digest_of(gw: Gateway, path: str) -> str:
    r = await gw.client.head(path, headers={**gw.bearer(RW), "Want-Digest": "adler32"})
    assert r.status == 200
    return r.headers["Digest"].removeprefix("adler32=")


async def test_pull_between_gateways(pair: tuple[Gateway, Gateway]) -> None:
    src, dst = pair
    data = os.urandom(5_000_000)
    (src.root / "data").mkdir()
    (src.root / "data" / "f.bin").write_bytes(data)
    h = pull_headers(
        dst,
        url(src, "/data/f.bin"),
        "storage.create:/in",
        TransferHeaderAuthorization=remote_token(src),
        Credential="none",
    )
    h["X-Number-Of-Streams"] = "1"
    h["RequireChecksumVerification"] = "true"
    res = await copy(dst, "/in/deep/f.bin", h)
    assert res.ok, res.text
    assert (dst.root / "in" / "deep" / "f.bin").read_bytes() == data
    assert await digest_of(dst, "/in/deep/f.bin") == adler(data)
    ts, count, conns = res.markers[-1]
    assert count == len(data) and abs(ts - time.time()) < 60
    assert conns == f"tcp:127.0.0.1:{src.client.server.port}"


async def test_push_between_gateways(pair: tuple[Gateway, Gateway]) -> None:
    passive, active = pair
    data = os.urandom(3 << 20)  # above the Expect: 100-continue threshold
    (active.root / "out.bin").write_bytes(data)
    h = {
        **active.bearer("storage.read:/"),
        "Destination": url(passive, "/recv/out.bin"),
        "TransferHeaderAuthorization": remote_token(passive, "storage.create:/recv"),
        "RequireChecksumVerification": "true",
    }
    res = await copy(active, "/out.bin", h)
    assert res.ok, res.text
    assert (passive.root / "recv" / "out.bin").read_bytes() == data
    assert res.markers[-1][1] == len(data)


async def test_push_of_empty_file(pair: tuple[Gateway, Gateway]) -> None:
    passive, active = pair
    (active.root / "empty").write_bytes(b"")
    h = {
        **active.bearer("storage.read:/"),
        "Destination": url(passive, "/empty"),
        "TransferHeaderAuthorization": remote_token(passive, RW),
    }
    assert (await copy(active, "/empty", h)).ok
    assert (passive.root / "empty").read_bytes() == b""


async def test_pull_of_empty_file(pair: tuple[Gateway, Gateway]) -> None:
    src, dst = pair
    (src.root / "empty").write_bytes(b"")
    h = pull_headers(dst, url(src, "/empty"), TransferHeaderAuthorization=remote_token(src))
    assert (await copy(dst, "/empty", h)).ok
    assert (dst.root / "empty").read_bytes() == b""


async def test_dav_schemes_map_to_http(pair: tuple[Gateway, Gateway]) -> None:
    src, dst = pair
    (src.root / "x").write_bytes(b"x" * 100)
    source = url(src, "/x").replace("http://", "dav://")
    h = pull_headers(dst, source, TransferHeaderAuthorization=remote_token(src))
    assert (await copy(dst, "/x", h)).ok


async def test_multistream_pull_uses_parallel_ranges(make_gateway: Callable[..., Any]) -> None:
    dst: Gateway = await make_gateway(tpc=TPC)
    app = dst.client.app
    assert app is not None
    app[SERVICES].extras["tpc"].engine.block = 1 << 20
    data = os.urandom((5 << 20) + 12345)
    remote = await FakeRemote().start()
    try:
        remote.routes["/big"] = serve_bytes(data, piece=1 << 18, delay=0.001)
        h = pull_headers(dst, remote.url("/big"), **{"X-Number-Of-Streams": "4"})
        res = await copy(dst, "/big", h)
        assert res.ok, res.text
        assert (dst.root / "big").read_bytes() == data
        assert await digest_of(dst, "/big") == adler(data)
        ranges = sorted(r for s in remote.seen if s.method == "GET" for r in s.header("Range"))
        assert len(ranges) == 6 and ranges[0] == "bytes=0-1048575"
    finally:
        await remote.close()


async def test_multistream_pull_from_a_source_that_ignores_ranges(
    make_gateway: Callable[..., Any],
) -> None:
    dst: Gateway = await make_gateway(tpc=TPC)
    app = dst.client.app
    assert app is not None
    app[SERVICES].extras["tpc"].engine.block = 1 << 20
    data = os.urandom(3 << 20)
    remote = await FakeRemote().start()
    try:
        remote.routes["/big"] = serve_bytes(data, ranges=False)  # no Accept-Ranges, always 200
        h = pull_headers(dst, remote.url("/big"), **{"X-Number-Of-Streams": "4"})
        res = await copy(dst, "/big", h)
        assert res.ok, res.text
        assert (dst.root / "big").read_bytes() == data
        gets = [s for s in remote.seen if s.method == "GET"]
        assert len(gets) == 1  # the probe's 200 answer was the whole file
    finally:
        await remote.close()


async def test_streams_are_clamped_and_zero_means_one(pair: tuple[Gateway, Gateway]) -> None:
    src, dst = pair
    (src.root / "s").write_bytes(b"s" * 1000)
    for n in ("0", "100000"):
        h = pull_headers(dst, url(src, "/s"), TransferHeaderAuthorization=remote_token(src))
        h["X-Number-Of-Streams"] = n
        assert (await copy(dst, f"/s{n}", h)).ok


async def test_markers_cadence_and_format(make_gateway: Callable[..., Any]) -> None:
    dst: Gateway = await make_gateway(tpc=TPC)
    data = os.urandom(400_000)
    remote = await FakeRemote().start()
    try:
        remote.routes["/slow"] = serve_bytes(data, piece=20_000, delay=0.06)  # ~1.2 s
        res = await copy(dst, "/slow", pull_headers(dst, remote.url("/slow")))
        assert res.ok, res.text
        # first marker at once with 0 bytes, one every 0.2 s, a last one with the total
        assert res.markers[0][1] == 0
        assert len(res.markers) >= 5
        assert res.markers[-1][1] == len(data)
        assert all(c == f"tcp:127.0.0.1:{remote.port}" for _, _, c in res.markers[1:])
        assert res.text.endswith("success: Created\n")
    finally:
        await remote.close()


async def test_tiny_file_still_gets_a_marker(pair: tuple[Gateway, Gateway]) -> None:
    src, dst = pair
    (src.root / "tiny").write_bytes(b"1")
    h = pull_headers(dst, url(src, "/tiny"), TransferHeaderAuthorization=remote_token(src))
    res = await copy(dst, "/tiny", h)
    assert res.ok and len(res.markers) >= 1


# -- local authorisation and Overwrite (B25) -----------------------------------------------------
async def test_overwrite_rules(pair: tuple[Gateway, Gateway]) -> None:
    src, dst = pair
    (src.root / "new").write_bytes(b"new content")
    (dst.root / "d").mkdir()
    (dst.root / "d" / "dst").write_bytes(b"old")
    tok = remote_token(src)
    source = url(src, "/new")
    modify = "storage.read:/d storage.modify:/d"
    # Overwrite: F onto an existing file: 412 before any byte moves, file unchanged
    h = pull_headers(dst, source, modify, TransferHeaderAuthorization=tok, Overwrite="F")
    res = await copy(dst, "/d/dst", h)
    assert res.status == 412
    assert (dst.root / "d" / "dst").read_bytes() == b"old"
    assert not [s for s in os.listdir(dst.root / ".segate" / "tmp")]
    # a create-only token cannot replace it: 403
    create = "storage.create:/d"
    res = await copy(
        dst, "/d/dst", pull_headers(dst, source, create, TransferHeaderAuthorization=tok)
    )
    assert res.status == 403
    assert (dst.root / "d" / "dst").read_bytes() == b"old"
    # but it may create a new file
    res = await copy(
        dst, "/d/other", pull_headers(dst, source, create, TransferHeaderAuthorization=tok)
    )
    assert res.ok
    # Overwrite T and absent with modify: replaced
    for ow in ("T", None):
        (dst.root / "d" / "dst").write_bytes(b"old")
        h = pull_headers(dst, source, modify, TransferHeaderAuthorization=tok)
        if ow:
            h["Overwrite"] = ow
        assert (await copy(dst, "/d/dst", h)).ok
        assert (dst.root / "d" / "dst").read_bytes() == b"new content"


async def test_local_rights_are_judged_before_202(pair: tuple[Gateway, Gateway]) -> None:
    src, dst = pair
    (src.root / "f").write_bytes(b"f")
    (dst.root / "mine").write_bytes(b"m")
    source = url(src, "/f")
    # pull needs a write right on the destination path
    h = pull_headers(dst, source, "storage.read:/ storage.create:/elsewhere")
    assert (await copy(dst, "/f", h)).status == 403
    # anonymous: 401
    assert (await copy(dst, "/f", {"Source": source})).status == 401
    # push needs read on the local file, which must exist and be a file
    push = {"Destination": url(src, "/p")}
    assert (await copy(dst, "/mine", {**dst.bearer("storage.create:/"), **push})).status == 403
    assert (await copy(dst, "/absent", {**dst.bearer(RW), **push})).status == 404
    (dst.root / "dir").mkdir()
    assert (await copy(dst, "/dir", {**dst.bearer(RW), **push})).status == 405
    assert not (src.root / "p").exists()


@pytest.mark.parametrize(
    "headers",
    [
        {"Credential": "gridsite"},
        {"Credential": "oidc"},
        {"Overwrite": "yes"},
        {"RequireChecksumVerification": "maybe"},
        {"X-Number-Of-Streams": "-1"},
        {"X-Number-Of-Streams": "four"},
        {"Destination": "http://127.0.0.1:9/x"},
    ],
)
async def test_bad_headers_are_400(pair: tuple[Gateway, Gateway], headers: dict[str, str]) -> None:
    src, dst = pair
    h = pull_headers(dst, url(src, "/f"), **headers)
    assert (await copy(dst, "/f", h)).status == 400


async def test_refused_scheme_is_400(pair: tuple[Gateway, Gateway]) -> None:
    _, dst = pair
    for source in ("ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://localhost/"):
        assert (await copy(dst, "/f", pull_headers(dst, source))).status == 400
    assert_clean(dst, "/f")


async def test_refused_addresses_are_403(make_gateway: Callable[..., Any]) -> None:
    # loopback only: a broken guard must never send traffic off this machine
    guarded: Gateway = await make_gateway(tpc={"marker_interval": 0.2})
    for source in (
        "http://127.0.0.1:9/x",
        "http://127.5.5.5:9/x",
        "https://[::1]:9/x",
        "http://localhost:9/x",
        "http://[::ffff:127.0.0.1]:9/x",
    ):
        res = await copy(guarded, "/f", pull_headers(guarded, source))
        assert res.status == 403, source
    (guarded.root / "f").write_bytes(b"f")
    push = {**guarded.bearer(RW), "Destination": "http://localhost:9/f"}
    assert (await copy(guarded, "/f", push)).status == 403
    # allow_hosts lets a named host through, and nothing else
    partial: Gateway = await make_gateway(tpc={"allow_hosts": ["127.0.0.1"]})
    assert (await copy(partial, "/g", pull_headers(partial, "http://127.5.5.5:9/x"))).status == 403


async def test_max_active_gives_503(make_gateway: Callable[..., Any]) -> None:
    dst: Gateway = await make_gateway(tpc={**TPC, "max_active": 1})
    remote = await FakeRemote().start()
    try:
        remote.routes["/slow"] = serve_bytes(b"z" * 100_000, piece=10_000, delay=0.1)
        first = asyncio.ensure_future(copy(dst, "/a", pull_headers(dst, remote.url("/slow"))))
        for _ in range(100):
            if remote.seen:
                break
            await asyncio.sleep(0.02)
        res = await copy(dst, "/b", pull_headers(dst, remote.url("/slow")))
        assert res.status == 503 and res.headers.get("Retry-After")
        assert (await first).ok
        assert (await copy(dst, "/c", pull_headers(dst, remote.url("/slow")))).ok
    finally:
        await remote.close()


async def test_local_destination_is_still_a_local_copy(pair: tuple[Gateway, Gateway]) -> None:
    _, gw = pair
    (gw.root / "a").write_bytes(b"a")
    r = await gw.client.request(
        "COPY", "/a", headers={**gw.bearer(RW), "Destination": url(gw, "/b")}
    )
    assert r.status == 201 and (gw.root / "b").read_bytes() == b"a"
