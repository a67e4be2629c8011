"""PROPPATCH and dead properties, recursive DELETE, and other litmus-driven fixes, in process.

RFC 4918 §9.2 (PROPPATCH, all or nothing), §9.6.1 (DELETE of a collection), §9.8/§9.9 (dead
properties copied by COPY, moved by MOVE), §9.9.3 (MOVE a collection over a non-collection).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

import defusedxml.ElementTree as ET
import pytest

from segate.storage import deadprops
from segate.storage.deadprops import XATTR_NAME
from tests.conftest import Gateway

RW = "storage.read:/ storage.create:/ storage.modify:/"
D = "{DAV:}"
Z = "urn:segate:test"


def set_body(*props: str) -> str:
    inner = "".join(props)
    return (
        f'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="{Z}">'
        f"<D:set><D:prop>{inner}</D:prop></D:set></D:propertyupdate>"
    )


async def proppatch(gw: Gateway, path: str, body: str, scope: str = RW) -> tuple[int, Any]:
    r = await gw.client.request("PROPPATCH", path, data=body, headers=gw.bearer(scope))
    raw = await r.read()
    return r.status, (ET.fromstring(raw) if r.status == 207 else raw)


async def prop_value(gw: Gateway, path: str, local: str) -> str | None:
    body = f'<D:propfind xmlns:D="DAV:"><D:prop><Z:{local} xmlns:Z="{Z}"/></D:prop></D:propfind>'
    r = await gw.client.request(
        "PROPFIND", path, data=body, headers={**gw.bearer(RW), "Depth": "0"}
    )
    assert r.status == 207
    tree = ET.fromstring(await r.read())
    for stat in tree.iter(f"{D}propstat"):
        if stat.findtext(f"{D}status") == "HTTP/1.1 200 OK":
            el = stat.find(f"{D}prop/{{{Z}}}{local}")
            if el is not None:
                return str(el.text or "")
    return None


async def test_proppatch_set_get_remove(gw: Gateway) -> None:
    (gw.root / "f").write_bytes(b"1")
    status, tree = await proppatch(gw, "/f", set_body("<Z:a>one</Z:a>", "<Z:b>two</Z:b>"))
    assert status == 207
    assert [s.text for s in tree.iter(f"{D}status")] == ["HTTP/1.1 200 OK"]
    assert await prop_value(gw, "/f", "a") == "one"
    remove = (
        f'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="{Z}"><D:remove><D:prop><Z:a/><Z:nope/>'
        "</D:prop></D:remove></D:propertyupdate>"
    )
    status, _ = await proppatch(gw, "/f", remove)
    assert status == 207
    assert await prop_value(gw, "/f", "a") is None
    assert await prop_value(gw, "/f", "b") == "two"
    r = await gw.client.request("PROPFIND", "/f", headers={**gw.bearer(RW), "Depth": "0"})
    allprop = ET.fromstring(await r.read())
    assert allprop.findtext(f".//{{{Z}}}b") == "two"


async def test_protected_property_fails_everything(gw: Gateway) -> None:
    (gw.root / "f").write_bytes(b"1")
    status, tree = await proppatch(
        gw, "/f", set_body("<Z:a>x</Z:a>", "<D:getetag>forged</D:getetag>")
    )
    assert status == 207
    codes = {
        s.findtext(f"{D}status"): [c.tag for c in s.findall(f"{D}prop/*")]
        for s in tree.iter(f"{D}propstat")
    }
    assert codes == {
        "HTTP/1.1 424 Failed Dependency": [f"{{{Z}}}a"],
        "HTTP/1.1 403 Forbidden": [f"{D}getetag"],
    }
    assert await prop_value(gw, "/f", "a") is None


async def test_proppatch_authorisation_and_errors(gw: Gateway) -> None:
    (gw.root / "f").write_bytes(b"1")
    status, _ = await proppatch(gw, "/f", set_body("<Z:a>x</Z:a>"), "storage.create:/")
    assert status == 403
    status, _ = await proppatch(gw, "/f", set_body("<Z:a>x</Z:a>"), "storage.read:/")
    assert status == 403
    status, _ = await proppatch(gw, "/missing", set_body("<Z:a>x</Z:a>"))
    assert status == 404
    status, _ = await proppatch(gw, "/f", "<not-xml")
    assert status == 400
    status, tree = await proppatch(gw, "/f", set_body(f"<Z:big>{'x' * 70000}</Z:big>"))
    assert status == 207  # RFC 4918 §9.2.1: no room to record it
    assert [s.text for s in tree.iter(f"{D}status")] == ["HTTP/1.1 507 Insufficient Storage"]
    assert await prop_value(gw, "/f", "big") is None
    r = await gw.client.options("/", headers=gw.bearer(RW))
    assert "PROPPATCH" in r.headers["Allow"]


async def test_dead_properties_follow_copy_move_delete(gw: Gateway) -> None:
    h = gw.bearer(RW)
    (gw.root / "d").mkdir()
    (gw.root / "d" / "f").write_bytes(b"1")
    assert (await proppatch(gw, "/d/f", set_body("<Z:a>file</Z:a>")))[0] == 207
    assert (await proppatch(gw, "/d", set_body("<Z:a>dir</Z:a>")))[0] == 207
    r = await gw.client.request("COPY", "/d/f", headers={**h, "Destination": "/g"})
    assert r.status == 201 and await prop_value(gw, "/g", "a") == "file"
    r = await gw.client.request("COPY", "/d/", headers={**h, "Destination": "/e/"})
    assert r.status == 201
    assert await prop_value(gw, "/e/", "a") == "dir"
    assert await prop_value(gw, "/e/f", "a") == "file"
    r = await gw.client.request("MOVE", "/g", headers={**h, "Destination": "/moved"})
    assert r.status == 201 and await prop_value(gw, "/moved", "a") == "file"
    assert (await gw.client.delete("/moved", headers=h)).status == 204
    (gw.root / "moved").write_bytes(b"new")
    assert await prop_value(gw, "/moved", "a") is None
    # a PUT replaces the resource: no dead properties carried over
    assert (await gw.client.put("/d/f", data=b"2", headers=h)).status == 204
    assert await prop_value(gw, "/d/f", "a") is None


async def test_foreign_attribute_content_is_ignored(gw: Gateway) -> None:
    (gw.root / "f").write_bytes(b"1")
    os.setxattr(gw.root / "f", XATTR_NAME, b"\xff not json")
    assert await prop_value(gw, "/f", "a") is None
    os.setxattr(gw.root / "f", XATTR_NAME, b'{"{urn:segate:test}a": "<broken"}')
    assert await prop_value(gw, "/f", "a") is None
    assert (await proppatch(gw, "/f", set_body("<Z:a>ok</Z:a>")))[0] == 207
    assert await prop_value(gw, "/f", "a") == "ok"


async def test_recursive_delete_setting(make_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await make_gateway(
        storage={"recursive_delete": True},
        rules=[{"path": "/keep", "allow": ["read"], "who": ["any-token"]}],
    )
    h = gw.bearer(RW)
    (gw.root / "t" / "sub").mkdir(parents=True)
    (gw.root / "t" / "sub" / "f").write_bytes(b"1")
    assert (await gw.client.delete("/t/", headers=h)).status == 204
    assert not (gw.root / "t").exists()
    # a site rule below the collection is honoured: anonymous may not delete it
    anon: Gateway = await make_gateway(
        storage={"recursive_delete": True},
        rules=[
            {"path": "/pub/keep", "allow": ["read"], "who": ["anonymous"]},
            {"path": "/pub", "allow": ["read", "create", "modify"], "who": ["anonymous"]},
        ],
    )
    (anon.root / "pub" / "keep").mkdir(parents=True)
    (anon.root / "pub" / "keep" / "f").write_bytes(b"1")
    assert (await anon.client.delete("/pub/")).status == 401
    assert (anon.root / "pub" / "keep" / "f").exists()


async def test_move_collection_over_file_and_fragment(gw: Gateway) -> None:
    h = gw.bearer(RW)
    (gw.root / "c").mkdir()
    (gw.root / "c" / "x").write_bytes(b"1")
    (gw.root / "plain").write_bytes(b"2")
    r = await gw.client.request("MOVE", "/c/", headers={**h, "Destination": "/plain"})
    assert r.status == 204 and (gw.root / "plain" / "x").read_bytes() == b"1"
    (gw.root / "frag").mkdir()
    tok = gw.token(RW)
    out = await gw.raw(
        f"DELETE /frag/#x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {tok}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
        read_timeout=2.0,
    )
    assert out.startswith(b"HTTP/1.1 400") and (gw.root / "frag").is_dir()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The listings deadprops.read really made (not taken from memory), from a clean memory."""
    monkeypatch.setattr(deadprops, "_settled", {})
    made: list[str] = []
    real_read = deadprops.read

    def counting(real: str) -> dict[str, str]:
        made.append(real)
        return real_read(real)

    monkeypatch.setattr(deadprops, "read", counting)
    return made


async def test_settled_listing_is_remembered_until_the_inode_changes(
    gw: Gateway, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every ctime counted as settled, a second PROPFIND Depth 0 makes no listing; a change
    made behind the gateway's back (another process's setxattr) sets a new ctime and is seen."""
    monkeypatch.setattr(deadprops, "SETTLED_NS", -(10**18))
    (gw.root / "f").write_bytes(b"1")
    await asyncio.sleep(0.05)  # a later clock tick than the file's creation
    status, _ = await proppatch(gw, "/f", set_body("<Z:a>one</Z:a>"))
    assert status == 207
    assert await prop_value(gw, "/f", "a") == "one"
    made = len(reads)
    assert await prop_value(gw, "/f", "a") == "one"
    assert len(reads) == made  # from memory
    await asyncio.sleep(0.05)
    value = json.dumps({f"{{{Z}}}a": f'<Z:a xmlns:Z="{Z}">two</Z:a>'}).encode()
    os.setxattr(gw.root / "f", XATTR_NAME, value)
    assert await prop_value(gw, "/f", "a") == "two"
    assert len(reads) == made + 1


async def test_a_fresh_listing_is_not_remembered(gw: Gateway, reads: list[str]) -> None:
    """An inode changed less than SETTLED_NS ago is listed at every PROPFIND: a second change
    within the same clock tick would not change its ctime."""
    (gw.root / "f").write_bytes(b"1")
    status, _ = await proppatch(gw, "/f", set_body("<Z:a>one</Z:a>"))
    assert status == 207
    for _ in range(3):
        assert await prop_value(gw, "/f", "a") == "one"
    assert len(reads) >= 3
    assert deadprops._settled == {}
