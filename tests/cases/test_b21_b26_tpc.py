"""B21, B22, B24, B25, B26 — HTTP third-party copy, against a fake remote on loopback.

These cases are covered in depth by tests/integration/test_tpc.py and test_tpc_remote.py (see
the index in tests/cases/__init__.py); this module pins each case's headline right value:

* B21: the remote sees ``Authorization: Bearer R`` and ``ArchiveMetadata: abc`` (from
  ``TransferHeader*``, any case), never the client's token, no ``TransferHeader`` prefix, no
  delegation with ``Credential: none``; without the forwarded token → ``failure:`` naming 401;
  pull needs create on the local path, push needs read.
* B22: 202, chunked text, at least one ``Perf Marker`` even for 1 KiB, exactly one final line,
  last; remote 404 → ``failure:`` with the status; neither Source nor Destination → plain 400.
* B24: a remote that sends some bytes then stalls → ``failure:`` naming the no-progress timeout
  within ``[tpc] idle_timeout`` + slack, the partial destination removed.
* B25: ``Overwrite: F`` onto an existing file → 412 before any data moves; ``T``/absent replace;
  a create-only token cannot replace (403).
* B26: ``Source: REMOTE/dir/name%20with%2Bplus.root`` reaches the remote exactly once as sent,
  local ``/d/out%20file`` is the file ``out file``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Gateway
from tests.integration.tpc_helpers import (
    TPC,
    FakeRemote,
    assert_clean,
    copy,
    pull_headers,
    serve_bytes,
)

DATA = os.urandom(1 << 20)


@pytest.fixture
async def remote() -> AsyncIterator[FakeRemote]:
    r = await FakeRemote().start()
    yield r
    await r.close()


@pytest.fixture
async def tgw(make_gateway: Callable[..., Any]) -> Gateway:
    g: Gateway = await make_gateway(tpc=TPC)
    (g.root / "d").mkdir()
    return g


async def test_b21_forwarding_and_local_rights(tgw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/src"] = serve_bytes(DATA, need_auth="Bearer R")
    g = tgw.bearer("storage.create:/d")
    for prefix in ("TransferHeader", "transferheader"):
        (tgw.root / "d" / "dst").unlink(missing_ok=True)
        h = {
            **g,
            "Source": remote.url("/src"),
            f"{prefix}Authorization": "Bearer R",
            f"{prefix}ArchiveMetadata": "abc",
            "Credential": "none",
            "X-Number-Of-Streams": "1",
        }
        res = await copy(tgw, "/d/dst", h)
        assert res.ok, res.text
    assert (tgw.root / "d" / "dst").read_bytes() == DATA
    for s in remote.seen:
        assert s.header("Authorization") == ["Bearer R"] and s.header("ArchiveMetadata") == ["abc"]
        assert not any(k.lower().startswith("transferheader") for k, _ in s.headers)
        assert all(g["Authorization"].split()[1] not in v for _, v in s.headers)
    res = await copy(tgw, "/d/dst2", {**g, "Source": remote.url("/src")})
    assert res.final.startswith("failure:") and "401" in res.final
    assert_clean(tgw, "/d/dst2")
    # pull into a path the token cannot create: 403 before 202; push needs read
    assert (await copy(tgw, "/x", {**g, "Source": remote.url("/src")})).status == 403
    h = {**g, "Destination": remote.url("/up"), "TransferHeaderAuthorization": "Bearer R"}
    assert (await copy(tgw, "/d/dst", h)).status == 403


async def test_b22_stream_shape(tgw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/kib"] = serve_bytes(b"k" * 1024)
    rw = "storage.create:/d storage.read:/d"
    res = await copy(tgw, "/d/kib", pull_headers(tgw, remote.url("/kib"), rw))
    assert res.ok and len(res.markers) >= 1 and res.markers[-1][1] <= 1024
    assert res.text.endswith("success: Created\n") and res.text.count("success") == 1
    res = await copy(tgw, "/d/none", pull_headers(tgw, remote.url("/missing"), rw))
    assert res.status == 202 and res.final.startswith("failure:") and "404" in res.final
    assert_clean(tgw, "/d/none")
    r = await tgw.client.request("COPY", "/d/kib", headers=tgw.bearer(rw))
    assert r.status == 400  # neither Source nor Destination: plain 4xx, no stream


async def test_b24_remote_sends_then_stalls(tgw: Gateway, remote: FakeRemote) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(DATA) * 4)})
        await resp.prepare(request)
        if request.method == "GET":
            await resp.write(DATA)
            await asyncio.sleep(30)
        return resp

    remote.routes["/src"] = stall
    t0 = time.monotonic()
    res = await copy(tgw, "/d/f", pull_headers(tgw, remote.url("/src"), "storage.create:/d"))
    assert time.monotonic() - t0 < TPC["idle_timeout"] + 3
    assert res.final.startswith("failure:") and "no bytes received" in res.final
    assert_clean(tgw, "/d/f")


async def test_b25_overwrite(tgw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/src"] = serve_bytes(DATA)
    (tgw.root / "d" / "dst").write_bytes(b"o" * 1024)
    mod = "storage.modify:/d storage.read:/d"
    res = await copy(tgw, "/d/dst", pull_headers(tgw, remote.url("/src"), mod, Overwrite="F"))
    assert res.status == 412 and not [s for s in remote.seen if s.method == "GET"]
    assert (tgw.root / "d" / "dst").read_bytes() == b"o" * 1024
    res = await copy(tgw, "/d/dst", pull_headers(tgw, remote.url("/src"), "storage.create:/d"))
    assert res.status == 403
    for extra in ({"Overwrite": "T"}, {}):
        (tgw.root / "d" / "dst").write_bytes(b"o" * 1024)
        res = await copy(tgw, "/d/dst", pull_headers(tgw, remote.url("/src"), mod, **extra))
        assert res.ok and (tgw.root / "d" / "dst").read_bytes() == DATA


async def test_b26_encoded_source(tgw: Gateway, remote: FakeRemote) -> None:
    remote.routes["/dir/name%20with%2Bplus.root"] = serve_bytes(DATA)
    src = remote.url("/dir/name%20with%2Bplus.root")
    res = await copy(tgw, "/d/out%20file", pull_headers(tgw, src, "storage.create:/d"))
    assert res.ok, res.text
    assert (tgw.root / "d" / "out file").read_bytes() == DATA
    assert {s.raw_path for s in remote.seen} == {"/dir/name%20with%2Bplus.root"}
