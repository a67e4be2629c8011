"""Issue #8: SIGTERM during transfers on a real ``segate serve`` process (loopback).

With ``[server] drain_timeout = 3``: a PUT that completes within the drain gets its 201 and the
whole file; a PUT and a pull-TPC still running at the deadline are aborted, leave no file and no
staging file; the process exits on its own within the drain plus a small slack; a restart finds
no stale staging entry.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from pathlib import Path

import pytest
from aiohttp import web

from segate.devissuer import ensure_dev_issuer
from segate.devpki import DevPKI, ensure_dev_pki
from testbed.segate_proc import RunningSegate, SegateStartError, start_segate_in, stop_pid
from tests.conftest import AUDIENCE, ISSUER
from tests.integration.tpc_helpers import FakeRemote

DRAIN = 3.0
MIB = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


def start(tmp_path: Path, pki: DevPKI, name: str = "se", root: Path | None = None) -> RunningSegate:
    dev = ensure_dev_issuer(tmp_path / "state", ISSUER)
    cfg = {
        "server": {"drain_timeout": DRAIN},
        "tokens": {
            "audiences": [AUDIENCE],
            "issuers": [{"issuer": ISSUER, "jwks_file": str(dev.jwks_file)}],
        },
        "tpc": {"allow_hosts": ["127.0.0.1"], "marker_interval": 0.5, "idle_timeout": 30},
    }
    if root is not None:
        cfg["storage"] = {"root": str(root)}
    try:
        return start_segate_in(tmp_path / "work", pki, cfg, name=name)
    except SegateStartError as exc:
        pytest.fail(str(exc))


async def open_put(
    se: RunningSegate, ctx: ssl.SSLContext, path: str, tok: str, size: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", se.port, ssl=ctx, server_hostname="localhost"
    )
    writer.write(
        f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {tok}\r\n"
        f"Content-Length: {size}\r\n\r\n".encode()
    )
    writer.write(b"a" * MIB)
    await writer.drain()
    return reader, writer


def staging(root: Path) -> list[str]:
    tmp = root / ".segate" / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


async def test_sigterm_drains_then_aborts(tmp_path: Path, pki: DevPKI) -> None:
    se = start(tmp_path, pki)
    remote = await FakeRemote().start()
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        dev = ensure_dev_issuer(tmp_path / "state", ISSUER)
        tok = dev.mint(scope="storage.read:/ storage.create:/ storage.modify:/", audience=AUDIENCE)

        async def slow_source(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Length": str(100 * MIB)})
            await resp.prepare(request)
            if request.method == "GET":
                for _ in range(100):
                    await resp.write(b"r" * 65536)
                    await asyncio.sleep(0.2)
            return resp

        remote.routes["/slow"] = slow_source
        done_r, done_w = await open_put(se, ctx, "/done", tok, 3 * MIB)
        _, stuck_w = await open_put(se, ctx, "/stuck", tok, 10 * MIB)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", se.port, ssl=ctx, server_hostname="localhost"
        )
        writer.write(
            f"COPY /tpc HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {tok}\r\n"
            f"Source: {remote.url('/slow')}\r\nCredential: none\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 202")
        await asyncio.sleep(0.5)
        assert len(staging(se.root)) >= 2  # uploads in flight are staged, never visible
        assert not (se.root / "stuck").exists() and not (se.root / "tpc").exists()

        t0 = time.monotonic()
        os.kill(se.pid, signal.SIGTERM)
        await asyncio.sleep(0.3)
        done_w.write(b"b" * (2 * MIB))  # finishes within the drain
        await done_w.drain()
        status = await asyncio.wait_for(done_r.readuntil(b"\r\n"), DRAIN)
        assert status.startswith(b"HTTP/1.1 201"), status
        # the process ends by itself: drain deadline plus slack
        while se.proc.poll() is None and time.monotonic() - t0 < DRAIN + 5:
            await asyncio.sleep(0.1)
        assert se.proc.poll() is not None, "still running after the drain deadline"
        assert time.monotonic() - t0 < DRAIN + 5
        tail = await asyncio.wait_for(reader.read(), 5)
        assert b"success: Created" not in tail
        for w in (stuck_w, done_w, writer):
            w.close()
        assert (se.root / "done").stat().st_size == 3 * MIB
        assert not (se.root / "stuck").exists() and not (se.root / "tpc").exists()
        assert staging(se.root) == [], "temporary files left after SIGTERM"
        # new connections are refused after exit; a restart starts clean
        se2 = start(tmp_path, pki, name="se2", root=se.root)
        try:
            assert staging(se.root) == []
        finally:
            stop_pid(se2.proc)
    finally:
        stop_pid(se.proc)
        await remote.close()


async def test_restart_after_kill_removes_stale_staging(tmp_path: Path, pki: DevPKI) -> None:
    se = start(tmp_path, pki)
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        dev = ensure_dev_issuer(tmp_path / "state", ISSUER)
        tok = dev.mint(scope="storage.create:/", audience=AUDIENCE)
        _, w = await open_put(se, ctx, "/half", tok, 10 * MIB)
        await asyncio.sleep(0.3)
        assert staging(se.root)
        os.kill(se.pid, signal.SIGKILL)  # a crash: nothing cleaned
        se.proc.wait(5)
        w.close()
        assert staging(se.root)
    finally:
        stop_pid(se.proc)
    se2 = start(tmp_path, pki, name="se2", root=se.root)
    try:
        assert staging(se.root) == [] and not (se.root / "half").exists()
    finally:
        stop_pid(se2.proc)
