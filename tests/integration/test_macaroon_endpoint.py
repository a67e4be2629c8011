"""Macaroons in process: mint with POST application/macaroon-request, use them on every verb.

PROTOCOLS.md §3 (request, caveats, activities, bounding, secrets); PEERS.md "Macaroons" (what
gfal2 sends); field reports B04 (UPLOAD macaroon and ancestors), B09 (no leak), B12 (keep-alive).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

from pymacaroons import Macaroon

from segate.auth.macaroon_caveats import MintedFor
from segate.auth.macaroons import MacaroonKeyring, key_id, mint
from segate.auth.principal import Activity
from segate.paths import LogicalPath
from tests.conftest import Gateway

MR = "application/macaroon-request"
RW = "storage.read:/ storage.create:/ storage.modify:/"
GFAL_READ = b'{"caveats": ["activity:LIST,DOWNLOAD"], "validity": "PT180M"}'
GFAL_WRITE = b'{"caveats": ["activity:LIST,DOWNLOAD,MANAGE,UPLOAD,DELETE"], "validity": "PT130M"}'


def mac_cfg(secret: Path, previous: tuple[Path, ...] = ()) -> dict[str, Any]:
    return {"secret_file": str(secret), "previous_secret_files": [str(p) for p in previous]}


async def macgw(make_gateway: Any, tmp_path: Path, **overrides: Any) -> Gateway:
    overrides["macaroons"] = {**mac_cfg(tmp_path / "secret"), **overrides.get("macaroons", {})}
    gw: Gateway = await make_gateway(**overrides)
    (gw.root / "data").mkdir()
    (gw.root / "data" / "f").write_bytes(b"data-f")
    (gw.root / "other").mkdir()
    (gw.root / "other" / "g").write_bytes(b"other-g")
    return gw


async def ask(
    gw: Gateway, path: str, body: bytes | dict[str, Any] = b"", *, scope: str | None = RW, **kw: Any
) -> tuple[int, Any]:
    """POST a macaroon request with a token of ``scope`` (None: an identity token)."""
    headers = {"Content-Type": MR, **gw.bearer(scope, **kw)}
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    r = await gw.client.post(path, data=data, headers=headers)
    text = await r.text()
    return r.status, (json.loads(text) if r.status == 200 else text)


async def minted(gw: Gateway, path: str, body: bytes | dict[str, Any] = b"", **kw: Any) -> str:
    status, answer = await ask(gw, path, body, **kw)
    assert status == 200, answer
    m: str = answer["macaroon"]
    return m


def bearer(m: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {m}"}


def caveats(m: str) -> list[str]:
    return [c.caveat_id for c in Macaroon.deserialize(m).caveats]


async def status(gw: Gateway, method: str, path: str, m: str | None, **kw: Any) -> int:
    headers = {**(bearer(m) if m else {}), **kw.pop("headers", {})}
    r = await gw.client.request(method, path, headers=headers, **kw)
    await r.read()
    return r.status


# -- minting ---------------------------------------------------------------------------------
async def test_mint_answer_has_both_peers_fields(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    r = await gw.client.post(
        "/data/f",
        data=b'{"caveats": ["activity:DOWNLOAD"], "validity": "PT10M"}',
        headers={"Content-Type": "Application/Macaroon-Request; charset=utf-8", **gw.bearer(RW)},
    )
    assert r.status == 200
    assert r.content_type == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    answer = await r.json()
    m = answer["macaroon"]
    assert m.startswith("MDAx") and "=" not in m
    assert 595 <= answer["expires_in"] <= 600
    base = f"https://{gw.client.server.host}:{gw.client.server.port}"
    assert answer["uri"] == {
        "targetWithMacaroon": f"{base}/data/f?authz={m}",
        "baseWithMacaroon": f"{base}/?authz={m}",
        "target": f"{base}/data/f",
        "base": f"{base}/",
    }
    cavs = caveats(m)
    assert cavs[0].startswith("id:")
    assert cavs[1:3] == ["path:/data/f", "activity:DOWNLOAD"]
    assert re.fullmatch(r"before:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cavs[3])
    assert Macaroon.deserialize(m).identifier.startswith(key_id(gw_secret(tmp_path)) + ":")


def gw_secret(tmp_path: Path, name: str = "secret") -> bytes:
    return MacaroonKeyring.from_files(tmp_path / name).signing_key


async def test_secret_file_created_0600(make_gateway: Any, tmp_path: Path) -> None:
    await macgw(make_gateway, tmp_path)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


async def test_public_url_and_encoded_target(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path, server={"public_url": "https://se.example:8443/"})
    (gw.root / "sp ace").mkdir()
    status_, answer = await ask(gw, "/sp%20ace/", {"caveats": ["activity:LIST"]})
    assert status_ == 200
    assert answer["uri"]["target"] == "https://se.example:8443/sp%20ace/"
    assert "path:/sp%20ace" in caveats(answer["macaroon"])


async def test_read_macaroon_on_every_verb(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    m = await minted(gw, "/data", {"caveats": ["activity:DOWNLOAD,LIST"], "validity": "PT1H"})
    r = await gw.client.get("/data/f", headers=bearer(m))
    assert r.status == 200 and await r.read() == b"data-f"
    r = await gw.client.get(f"/data/f?authz={m}")
    assert r.status == 200 and await r.read() == b"data-f"
    assert await status(gw, "PROPFIND", "/data", m, headers={"Depth": "1"}) == 207
    assert await status(gw, "HEAD", "/data/f", m) == 200
    # outside its path
    assert await status(gw, "GET", "/other/g", m) == 403
    assert await status(gw, "PROPFIND", "/other", m, headers={"Depth": "0"}) == 403
    # ancestors: stat yes, listing no
    assert await status(gw, "PROPFIND", "/", m, headers={"Depth": "0"}) == 207
    assert await status(gw, "PROPFIND", "/", m, headers={"Depth": "1"}) == 403
    # outside its activities
    assert await status(gw, "PUT", "/data/new", m, data=b"x") == 403
    assert await status(gw, "DELETE", "/data/f", m) == 403
    assert await status(gw, "MKCOL", "/data/sub", m) == 403
    assert not (gw.root / "data" / "new").exists() and (gw.root / "data" / "f").exists()


async def test_write_macaroon(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    m = await minted(gw, "/data", {"caveats": ["activity:UPLOAD,DELETE"]})
    assert await status(gw, "PUT", "/data/new", m, data=b"1") == 201
    assert await status(gw, "PUT", "/data/new", m, data=b"22") == 204  # UPLOAD + DELETE
    assert (gw.root / "data" / "new").read_bytes() == b"22"
    assert await status(gw, "GET", "/data/new", m) == 403  # no DOWNLOAD
    assert await status(gw, "DELETE", "/data/new", m) == 204
    assert await status(gw, "PUT", "/other/new", m, data=b"1") == 403
    assert await status(gw, "DELETE", "/other/g", m) == 403
    up = await minted(gw, "/data", {"caveats": ["activity:UPLOAD"]})
    assert await status(gw, "PUT", "/data/u", up, data=b"1") == 201
    assert await status(gw, "PUT", "/data/u", up, data=b"2") == 403  # no overwrite
    assert await status(gw, "DELETE", "/data/u", up) == 403


async def test_bounded_by_the_requesters_rights(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    body = {"caveats": ["activity:DOWNLOAD,UPLOAD,DELETE,LIST"]}
    m = await minted(gw, "/data", body, scope="storage.read:/data")
    assert "activity:DOWNLOAD,LIST" in caveats(m)
    assert await status(gw, "GET", "/data/f", m) == 200
    assert await status(gw, "PUT", "/data/x", m, data=b"1") == 403
    # nothing left: 403
    st, text = await ask(gw, "/data", {"caveats": ["activity:UPLOAD"]}, scope="storage.read:/data")
    assert st == 403 and "none of the requested activities" in text
    assert (await ask(gw, "/other", GFAL_READ, scope="storage.read:/data"))[0] == 403
    # an ancestor only allows stat: not a useful macaroon
    assert (await ask(gw, "/", b"", scope="storage.read:/data"))[0] == 403
    assert (
        await ask(gw, "/", {"caveats": ["activity:READ_METADATA"]}, scope="storage.read:/data")
    )[0] == 200
    # empty body = everything the requester holds there
    m = await minted(gw, "/data", b"", scope="storage.create:/data")
    assert "activity:UPLOAD,MANAGE,READ_METADATA" in caveats(m)


async def test_expiry_capped_by_requester_and_max(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path, macaroons={"max_validity": 1800})
    st, answer = await ask(gw, "/data", GFAL_READ, lifetime=7200)
    assert st == 200 and 1795 <= answer["expires_in"] <= 1800  # max_validity
    st, answer = await ask(gw, "/data", GFAL_READ, lifetime=300)
    assert st == 200 and 290 <= answer["expires_in"] <= 300  # the token's own exp
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
    st, answer = await ask(gw, "/data", {"caveats": [f"before:{before}"], "validity": "PT1H"})
    assert st == 200 and 110 <= answer["expires_in"] <= 120


async def test_refusals(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    # anonymous
    r = await gw.client.post("/data/f", data=GFAL_READ, headers={"Content-Type": MR})
    assert r.status == 401 and "WWW-Authenticate" in r.headers
    # not a macaroon request: 405, and never the file
    for headers in ({}, {"Content-Type": "application/json"}, gw.bearer(RW)):
        r = await gw.client.post("/data/f", data=GFAL_READ, headers=headers)
        assert r.status == 405
        assert b"data-f" not in await r.read()
    # 400 with the reason
    bad: list[tuple[bytes, str]] = [
        (b"{not json", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b'{"caveats": "activity:LIST"}', "list of strings"),
        (b'{"caveats": ["root:/x"]}', "unsupported caveat 'root'"),
        (b'{"caveats": ["id:abc"]}', "unsupported caveat 'id'"),
        (b'{"caveats": ["activity:FLY"]}', "unknown activity 'FLY'"),
        (b'{"caveats": ["path:/other"]}', "not at or below"),
        (b'{"caveats": ["path:/data/../x"]}', "dot-segment"),
        (b'{"caveats": ["ip:300.1.1.1"]}', "not an IP address"),
        (b'{"caveats": ["before:2001-01-01T00:00:00Z"]}', "in the past"),
        (b'{"caveats": ["before:tomorrow"]}', "ISO 8601 instant"),
        (b'{"validity": "PT5X"}', "bad validity"),
        (b'{"validity": "P1Y"}', "years and months"),
        (b'{"validity": 60}', "ISO 8601 duration"),
        (b'{"validity": "PT0S"}', "positive"),
    ]
    for body, reason in bad:
        st, text = await ask(gw, "/data", body)
        assert st == 400 and reason in text, (body, text)
        assert "\n" not in text.rstrip("\n")
    st, _ = await ask(gw, "/data", b"{" + b" " * (70 * 1024) + b"}")
    assert st == 413


async def test_widening_attempts_fail(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    m = await minted(gw, "/data", {"caveats": ["activity:DOWNLOAD"]})

    def extended(*extra: str) -> str:
        mac = Macaroon.deserialize(m)
        for c in extra:
            mac.add_first_party_caveat(c)
        out: str = mac.serialize()
        return out

    # a client-side caveat can only narrow: asking for more activities grants nothing more
    more = extended("activity:DOWNLOAD,UPLOAD,DELETE")
    assert await status(gw, "GET", "/data/f", more) == 200
    assert await status(gw, "PUT", "/data/x", more, data=b"1") == 403
    assert await status(gw, "DELETE", "/data/f", more) == 403
    # a second path outside the first: nothing is covered by both
    two = extended("path:/other")
    assert await status(gw, "GET", "/data/f", two) == 403
    assert await status(gw, "GET", "/other/g", two) == 403
    # narrowing inside works
    assert await status(gw, "GET", "/data/f", extended("path:/data/f")) == 200
    assert await status(gw, "GET", "/data/f", extended("activity:LIST")) == 403
    # unknown caveat, another identity, a later expiry: 401
    admin = "id:" + MintedFor.admin().encode()
    later = "before:2099-01-01T00:00:00Z"
    for bad in (extended("max-upload:10"), extended(admin), extended(later, "root:/")):
        r = await gw.client.get("/data/f", headers=bearer(bad))
        assert r.status == 401
        assert "WWW-Authenticate" in r.headers
    # tampered signature
    mac = Macaroon.deserialize(m)
    mac.signature = "00" * 32
    assert await status(gw, "GET", "/data/f", mac.serialize()) == 401
    # garbage with the macaroon shape never falls through to JWT or anonymous
    assert await status(gw, "GET", "/data/f", m[:40]) == 401


async def test_expired_and_foreign_macaroons(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    keyring = MacaroonKeyring.from_files(tmp_path / "secret")
    args: dict[str, Any] = {
        "location": "segate",
        "minted_for": MintedFor.admin(),
        "path": LogicalPath.from_plain("/data"),
        "activities": frozenset({Activity.DOWNLOAD}),
    }
    good = mint(keyring, expires_at=time.time() + 60, **args)
    assert await status(gw, "GET", "/data/f", good) == 200
    # beyond before + leeway (60 s)
    expired = mint(keyring, expires_at=time.time() - 61, **args)
    r = await gw.client.get("/data/f", headers=bearer(expired))
    assert r.status == 401 and "expired" in await r.text()
    # within the leeway: still accepted
    assert await status(gw, "GET", "/data/f", mint(keyring, expires_at=time.time() - 5, **args))
    other = MacaroonKeyring(b"x" * 32)
    r = await gw.client.get(
        "/data/f", headers=bearer(mint(other, expires_at=time.time() + 60, **args))
    )
    assert r.status == 401 and "not minted with a secret of this server" in await r.text()


async def test_rotation_and_shared_secret(make_gateway: Any, tmp_path: Path) -> None:
    gw1 = await macgw(make_gateway, tmp_path)
    m1 = await minted(gw1, "/data", GFAL_READ)
    # another host sharing the secret file accepts it
    gw_twin = await macgw(make_gateway, tmp_path)
    assert await status(gw_twin, "GET", "/data/f", m1) == 200
    # rotate: new current secret, the old one only verifies
    cfg = mac_cfg(tmp_path / "secret2", (tmp_path / "secret",))
    gw2 = await macgw(make_gateway, tmp_path, macaroons=cfg)
    assert await status(gw2, "GET", "/data/f", m1) == 200
    m2 = await minted(gw2, "/data", GFAL_READ)
    assert Macaroon.deserialize(m2).identifier.startswith(key_id(gw_secret(tmp_path, "secret2")))
    # a host that only has the old secret does not know the new one
    assert await status(gw1, "GET", "/data/f", m2) == 401
    # after dropping the old secret, the old macaroon is dead
    gw3 = await macgw(make_gateway, tmp_path, macaroons=mac_cfg(tmp_path / "secret2"))
    assert await status(gw3, "GET", "/data/f", m1) == 401
    assert await status(gw3, "GET", "/data/f", m2) == 200


async def test_group_rule_removal_revokes(make_gateway: Any, tmp_path: Path) -> None:
    rule = [{"path": "/data", "allow": ["read", "modify"], "who": ["group:/vo"]}]
    gw = await macgw(make_gateway, tmp_path, rules=rule)
    m = await minted(gw, "/data", GFAL_WRITE, scope=None, groups=["/vo"])
    assert caveats(m)[2] == "activity:DOWNLOAD,UPLOAD,DELETE,MANAGE,LIST"
    assert await status(gw, "GET", "/data/f", m) == 200
    assert await status(gw, "PUT", "/data/up", m, data=b"1") == 201
    # token without the group: nothing to mint
    assert (await ask(gw, "/data", GFAL_READ, scope=None, groups=["/other"]))[0] == 403
    # the same secret, the rule removed: the macaroon's identity no longer has rights
    gone = await macgw(make_gateway, tmp_path)
    assert await status(gone, "GET", "/data/f", m) == 403
    assert await status(gone, "PUT", "/data/up2", m, data=b"1") == 403
    again = await macgw(make_gateway, tmp_path, rules=rule)
    assert await status(again, "GET", "/data/f", m) == 200


async def test_macaroon_mints_only_narrower(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    parent = await minted(gw, "/data", {"caveats": ["activity:DOWNLOAD,LIST"]})
    r = await gw.client.post(
        "/data/f",
        data=b'{"caveats": ["activity:DOWNLOAD,UPLOAD"]}',
        headers={"Content-Type": MR, **bearer(parent)},
    )
    assert r.status == 200
    child = (await r.json())["macaroon"]
    assert "activity:DOWNLOAD" in caveats(child) and "path:/data/f" in caveats(child)
    assert await status(gw, "GET", "/data/f", child) == 200
    assert await status(gw, "PUT", "/data/f2", child, data=b"1") == 403
    assert await status(gw, "PROPFIND", "/data", child, headers={"Depth": "1"}) == 403
    r = await gw.client.post("/other", headers={"Content-Type": MR, **bearer(parent)})
    assert r.status == 403


async def test_ip_caveat(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    ok = await minted(gw, "/data", {"caveats": ["activity:DOWNLOAD", "ip:127.0.0.0/8,::1"]})
    assert "ip:127.0.0.0/8,::1/128" in caveats(ok)
    assert await status(gw, "GET", "/data/f", ok) == 200
    elsewhere = await minted(gw, "/data", {"caveats": ["activity:DOWNLOAD", "ip:192.0.2.0/24"]})
    assert await status(gw, "GET", "/data/f", elsewhere) == 401


async def test_gfal2_requests(make_gateway: Any, tmp_path: Path) -> None:
    """The exact bodies gfal2 2.21 sends (PEERS.md), for paths that do not exist yet."""
    gw = await macgw(make_gateway, tmp_path)
    src = await minted(gw, "/data/f", GFAL_READ)
    assert await status(gw, "GET", "/data/f", src) == 200
    dst_status, dst_answer = await ask(gw, "/data/new/gfal-x509-cap.bin", GFAL_WRITE)
    assert dst_status == 200
    assert 3590 <= dst_answer["expires_in"] <= 3600  # capped by the token's one hour
    dst = dst_answer["macaroon"]
    assert await status(gw, "PUT", "/data/new/gfal-x509-cap.bin", dst, data=b"x") == 201
    mk = await minted(gw, "/data/d2/gfal2_mkdir.reserved", GFAL_WRITE)
    assert await status(gw, "MKCOL", "/data/d2", mk) == 201
    assert await status(gw, "PROPFIND", "/data/d2", mk, headers={"Depth": "0"}) == 207
    assert await status(gw, "MKCOL", "/data/d3", mk) == 403


async def test_b04_upload_macaroon_and_ancestors(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    (gw.root / "a").mkdir()
    m = await minted(gw, "/a", {"caveats": ["path:/a/m/file", "activity:UPLOAD"]})
    assert caveats(m)[1:3] == ["path:/a/m/file", "activity:UPLOAD"]
    assert await status(gw, "MKCOL", "/a/m", m) == 201
    assert await status(gw, "PUT", "/a/m/file", m, data=b"1") == 201
    assert await status(gw, "MKCOL", "/a/m/file", m) == 403
    assert await status(gw, "MKCOL", "/a/x", m) == 403
    assert await status(gw, "PUT", "/a/m/other", m, data=b"1") == 403


async def test_b12_keep_alive_each_request_its_own_macaroon(
    make_gateway: Any, tmp_path: Path, access_lines: Any
) -> None:
    gw = await macgw(make_gateway, tmp_path)
    (gw.root / "data" / "a").write_bytes(b"AAA")
    (gw.root / "data" / "b").write_bytes(b"BBB")
    ma = await minted(gw, "/data/a", {"caveats": ["activity:DOWNLOAD"]})
    mb = await minted(gw, "/data/b", {"caveats": ["activity:DOWNLOAD"]})

    def get(path: str, m: str | None, last: bool = False) -> str:
        auth = f"Authorization: Bearer {m}\r\n" if m else ""
        conn = "close" if last else "keep-alive"
        return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: {conn}\r\n\r\n"

    wire = get("/data/a", ma) + get("/data/b", mb) + get("/data/a", mb) + get("/data/a", None, True)
    out = await gw.raw(wire.encode())
    assert re.findall(rb"HTTP/1.1 (\d{3})", out) == [b"200", b"200", b"403", b"401"]
    lines = [ln for ln in access_lines() if "method=GET" in ln]
    assert [("auth=macaroon" in ln) for ln in lines[-4:]] == [True, True, True, False]
    assert all(ma not in ln and mb not in ln for ln in access_lines())


async def test_macaroon_never_logged(
    make_gateway: Any, tmp_path: Path, access_lines: Any, caplog: Any
) -> None:
    gw = await macgw(make_gateway, tmp_path)
    m = await minted(gw, "/data", GFAL_READ)
    await status(gw, "GET", f"/data/f?authz={m}", None)
    await status(gw, "GET", f"/other/g?authz={m}", None)
    await status(gw, "GET", "/data/f", m[:-4] + "AAAA")
    sig = m[-30:]
    assert access_lines() and all(sig not in rec.getMessage() for rec in caplog.records)


async def test_disabled_without_secret(gw: Gateway) -> None:
    (gw.root / "f").write_bytes(b"1")
    r = await gw.client.post("/f", data=GFAL_READ, headers={"Content-Type": MR, **gw.bearer(RW)})
    assert r.status == 405


async def test_expect_100_continue_after_authentication(make_gateway: Any, tmp_path: Path) -> None:
    gw = await macgw(make_gateway, tmp_path)
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        f"POST /data/f HTTP/1.1\r\nHost: localhost\r\nContent-Type: {MR}\r\n"
        f"Authorization: Bearer {gw.token(RW)}\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(GFAL_READ)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(GFAL_READ)
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200") and b'"macaroon"' in rest
