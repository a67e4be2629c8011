"""Findings of a newcomer's test pass: query-token spellings in the access log, aiohttp parser
errors (log flooding, echoed bytes), PROPFIND amplification, anonymous third-party copy and a
transfer cut by shutdown (field reports B09, B22)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from segate.dav.xml import MAX_PROPFIND_PROPS, parse_propfind
from segate.errors import BadRequest
from segate.web.redact import redact_text
from tests.conftest import Gateway
from tests.integration.tpc_helpers import TPC, FakeRemote, parse_stream, pull_headers, serve_bytes


def _fragments(token: str, size: int = 20) -> list[str]:
    """Every ``size``-character window of ``token`` (no part of it may be logged)."""
    return [token[i : i + size] for i in range(0, len(token) - size + 1)]


@pytest.mark.parametrize("name", ["access%5Ftoken", "%61uthz", "ACCESS_TOKEN"])
async def test_query_token_is_redacted_by_decoded_name(
    make_gateway: Callable[..., Any], access_lines: Callable[[], list[str]], name: str
) -> None:
    gw: Gateway = await make_gateway()
    (gw.root / "f").write_bytes(b"data")
    token = gw.token("storage.read:/")
    url = gw.client.make_url("/").with_path("/f", encoded=True)
    url = URL(f"{url}?{name}={token}&x=1", encoded=True)
    r = await gw.client.session.get(url)
    if name == "ACCESS_TOKEN":  # not a spelling credentials accept, but redacted all the same
        assert r.status in (200, 401, 403)
    else:
        assert r.status == 200, await r.text()
    signature = token.rsplit(".", 1)[1]
    lines = access_lines()
    assert lines and any("REDACTED" in line for line in lines)
    assert not any(signature in line for line in lines)


async def test_own_reasons_are_logged_readably_and_secrets_are_not(
    gw: Gateway, access_lines: Callable[[], list[str]]
) -> None:
    """segate's own 401 reasons ("empty bearer credential") reach the log as written; a real
    credential after the word "Bearer" in free text is still scrubbed."""
    (gw.root / "f").write_bytes(b"data")
    r = await gw.client.get("/f", headers={"Authorization": "Bearer "})
    assert r.status == 401
    r = await gw.client.get("/f", headers={"Authorization": "Bearer not-a-credential-we-know"})
    assert r.status == 401
    lines = access_lines()
    assert any("empty bearer credential" in line for line in lines), lines
    assert any("bearer credential is neither" in line for line in lines), lines
    assert not any("bearer REDACTED" in line for line in lines), lines
    assert not any("not-a-credential-we-know" in line for line in lines), lines
    assert redact_text("Authorization: Bearer tokenABC") == "Authorization: Bearer REDACTED"
    assert redact_text("Bearer credentialXYZ") == "Bearer REDACTED"


async def test_parser_errors_log_one_line_and_echo_nothing(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.DEBUG, logger="segate")
    token = gw.token("storage.read:/")
    bare_lf = f"GET /x HTTP/1.1\nHost: localhost\nAuthorization: Bearer {token}\n\n".encode()
    long_line = (
        "GET /x HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"X-Long: {token}{'a' * (gw.settings.server.max_header_size + 100)}\r\n\r\n"
    ).encode()
    for raw in (bare_lf, long_line):
        answer = await gw.raw(raw)
        status = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        assert status is not None, answer[:200]
        assert 400 <= int(status.group(1)) < 500
        assert not any(f.encode() in answer for f in _fragments(token))
    assert caplog.records
    for rec in caplog.records:
        text = rec.getMessage() + (rec.exc_text or "")
        assert rec.exc_info is None, rec.getMessage()
        assert "Traceback" not in text
        assert not any(f in text for f in _fragments(token)), text


def test_propfind_prop_count_is_bounded() -> None:
    def body(n: int) -> bytes:
        props = "".join(f"<x:p{i}/>" for i in range(n))
        return (
            f'<D:propfind xmlns:D="DAV:" xmlns:x="urn:x"><D:prop>{props}</D:prop></D:propfind>'
        ).encode()

    assert len(parse_propfind(body(MAX_PROPFIND_PROPS), max_size=1 << 20).props) == 256
    with pytest.raises(BadRequest, match="more than 256"):
        parse_propfind(body(30_000), max_size=1 << 20)


async def test_propfind_depth1_of_a_large_folder_is_507(make_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await make_gateway(server={"max_propfind_entries": 3})
    (gw.root / "big").mkdir()
    (gw.root / "small").mkdir()
    for i in range(4):
        (gw.root / "big" / f"f{i}").write_bytes(b"")
    for i in range(3):
        (gw.root / "small" / f"f{i}").write_bytes(b"")
    h = {**gw.bearer("storage.read:/"), "Depth": "1"}
    r = await gw.client.request("PROPFIND", "/big/", headers=h)
    assert r.status == 507
    assert "number-of-matches-within-limits" in await r.text()
    r = await gw.client.request("PROPFIND", "/small/", headers=h)
    assert r.status == 207
    r = await gw.client.request("PROPFIND", "/big/", headers={**h, "Depth": "0"})
    assert r.status == 207


async def test_listing_stops_reading_past_the_limit(tmp_path: Path) -> None:
    """The 507 above is decided without reading (and stat-ing) the whole folder."""
    from segate.paths import LogicalPath
    from segate.storage.posix import PosixStorage

    (tmp_path / "big").mkdir()
    for i in range(200):
        (tmp_path / "big" / f"f{i:03d}").write_bytes(b"")
    storage = PosixStorage(tmp_path)
    storage.prepare()
    big = LogicalPath(("big",))
    assert len(await storage.listdir(big, 10)) == 11
    assert len(await storage.listdir(big, 200)) == 200
    assert len(await storage.listdir(big)) == 200


async def test_anonymous_third_party_copy_is_401(make_gateway: Callable[..., Any]) -> None:
    rules = [{"path": "/", "allow": ["read"], "who": ["anonymous"]}]
    gw: Gateway = await make_gateway(tpc=TPC, rules=rules)
    (gw.root / "f").write_bytes(b"data")
    assert (await gw.client.get("/f")).status == 200  # the anonymous read rule works
    remote = await FakeRemote().start()
    try:
        h = {"Destination": remote.url("/dst"), "TransferHeaderAuthorization": "Bearer chosen"}
        r = await gw.client.request("COPY", "/f", headers=h)
        assert r.status == 401
        r = await gw.client.request("COPY", "/g", headers={"Source": remote.url("/src")})
        assert r.status == 401
        assert remote.seen == []  # nothing was contacted
    finally:
        await remote.close()


async def test_transfer_cut_by_shutdown_ends_with_failure_line(
    make_gateway: Callable[..., Any],
) -> None:
    gw: Gateway = await make_gateway(tpc=TPC)
    remote = await FakeRemote().start()
    try:
        remote.routes["/slow"] = serve_bytes(os.urandom(400_000), piece=10_000, delay=0.1)
        r = await gw.client.request("COPY", "/dst", headers=pull_headers(gw, remote.url("/slow")))
        assert r.status == 202
        await r.content.readuntil(b"End\n")  # the first perf marker: the transfer runs
        runner = gw.client.server.runner
        assert runner is not None
        # what serve_forever does after its drain deadline (segate.web.server)
        cleanup = asyncio.ensure_future(runner.cleanup())
        text = (await asyncio.wait_for(r.content.read(), 10)).decode()
        await cleanup
        _markers, final = parse_stream(
            "Perf Marker\nTimestamp: 0\nStripe Index: 0\n"
            "Stripe Bytes Transferred: 0\nTotal Stripe Count: 1\n"
            "End\n" + text
        )
        assert final == "failure: server shutting down"
    finally:
        await remote.close()


@pytest.mark.parametrize("fast_lane", [True, False])
async def test_a_fifo_is_refused_not_opened(
    make_gateway: Callable[..., Any], fast_lane: bool
) -> None:
    """GET, or HEAD with Want-Digest, of a FIFO in the storage root used to open it for
    reading, which blocks until a writer appears: the worker's event loop stood still."""
    gw: Gateway = await make_gateway(server={"fast_lane": fast_lane})
    os.mkfifo(gw.root / "pipe")
    h = gw.bearer("storage.read:/")
    for method, extra in (("GET", {}), ("HEAD", {"Want-Digest": "adler32"})):
        r = await asyncio.wait_for(gw.client.request(method, "/pipe", headers={**h, **extra}), 10)
        assert r.status == 403, (method, r.status)
    r = await gw.client.request("HEAD", "/pipe", headers=h)  # a stat alone is fine
    assert r.status == 200


async def test_a_forwarded_credential_echoed_by_the_remote_is_not_repeated(
    make_gateway: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A remote that echoes the Authorization it got in its error body: a Basic credential
    (user:password, no pattern a scrubber knows) reached the failure line and the log."""
    caplog.set_level(logging.INFO, logger="segate")
    gw: Gateway = await make_gateway(tpc=TPC)
    remote = await FakeRemote().start()
    basic = "Basic dXNlcjpwYXNzd29yZA=="  # user:password

    async def echo(request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text=f"denied for {request.headers.get('Authorization')}")

    try:
        remote.routes["/echo"] = echo
        for sent in (basic, "dXNlcjpwYXNzd29yZA=="):
            h = pull_headers(gw, remote.url("/echo"), TransferHeaderAuthorization=sent)
            r = await gw.client.request("COPY", "/dst", headers=h)
            assert r.status == 202
            _markers, final = parse_stream(await r.text())
            assert final.startswith("failure: ") and "403" in final, final
            assert "denied for" in final and "REDACTED" in final, final
            assert "dXNlcjpwYXNzd29yZA" not in final
        logged = "\n".join(rec.getMessage() for rec in caplog.records)
        assert "denied for" in logged
        assert "dXNlcjpwYXNzd29yZA" not in logged
    finally:
        await remote.close()


async def test_copy_without_source_or_destination_says_what_is_missing(gw: Gateway) -> None:
    r = await gw.client.request("COPY", "/f", headers=gw.bearer("storage.read:/"))
    assert r.status == 400
    assert "Destination header (or Source" in await r.text()


@pytest.mark.parametrize("method", ["MOVE", "COPY"])
async def test_create_only_move_or_copy_never_replaces_a_new_destination(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """storage.create never overwrites: a destination another client creates between the
    authorisation (it did not exist: a creation) and the rename is kept, and the answer is
    412. The handler used to pass the Overwrite header (default T) through to storage."""
    from segate.storage.posix import PosixStorage

    (gw.root / "src").write_bytes(b"mine")
    original = PosixStorage._parent_fd

    def parent_then_create(self: PosixStorage, path: Any) -> tuple[int, str]:
        got = original(self, path)
        if path.name == "dst" and not (gw.root / "dst").exists():
            (gw.root / "dst").write_bytes(b"someone else's")
        return got

    monkeypatch.setattr(PosixStorage, "_parent_fd", parent_then_create)
    h = {**gw.bearer("storage.read:/ storage.create:/"), "Destination": "/dst"}
    if method == "MOVE":
        h = {**gw.bearer("storage.modify:/src storage.create:/dst"), "Destination": "/dst"}
    r = await gw.client.request(method, "/src", headers=h)
    assert r.status == 412, (r.status, await r.text())
    assert (gw.root / "dst").read_bytes() == b"someone else's"


async def test_delete_of_a_link_removes_the_link_whatever_it_leads_to(
    gw: Gateway, tmp_path: Path
) -> None:
    """A link into the reserved area used to be refused (403: its target was judged), a
    dangling one was 404, and Depth: infinity on a link to a folder was judged against the
    folder's tree. DELETE removes the link's own entry; no target is touched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    (gw.root / "d").mkdir()
    (gw.root / "d" / "keep").write_bytes(b"k")
    links = {"to-staging": ".segate/tmp", "to-outside": str(outside), "dangling": "nowhere",
             "to-folder": "d"}  # fmt: skip
    for name, target in links.items():
        os.symlink(target, gw.root / name)
    h = {**gw.bearer("storage.read:/ storage.create:/ storage.modify:/"), "Depth": "infinity"}
    for name in links:
        r = await gw.client.request("DELETE", f"/{name}", headers=h)
        assert r.status == 204, (name, r.status, await r.text())
        assert not os.path.lexists(gw.root / name)
    assert (gw.root / ".segate" / "tmp").is_dir()
    assert (outside / "keep").read_bytes() == b"k"
    assert (gw.root / "d" / "keep").read_bytes() == b"k"
