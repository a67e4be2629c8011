"""B18 — PROPFIND XML escaping, href encoding and Depth semantics.

Right value: 207 with well-formed XML (strict parser) for names ``a&b.txt``, ``x<y>.txt``,
``sp ace.root``, ``pct%.txt``, ``ünï.txt``, ``h#sh``; every href percent-encoded and
round-trippable (GET on it returns that file); collection hrefs end in ``/``; Depth:1 on a file
→ exactly one response; ``getcontentlength`` of a 5 GiB sparse file exact; Depth:infinity → 403
``propfind-finite-depth``. Entity expansion (billion laughs, external entities) → 400; a body over
``[server] max_body_xml`` → 413.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as StdET

import defusedxml.ElementTree as ET

from tests.conftest import Gateway

D = "{DAV:}"
NAMES = ["a&b.txt", "x<y>.txt", "sp ace.root", "pct%.txt", "ünï.txt", "h#sh", "q'\"t.txt"]
ALLPROP = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


async def test_listing_round_trips(gw: Gateway) -> None:
    (gw.root / "d" / "sub").mkdir(parents=True)
    for i, n in enumerate(NAMES):
        (gw.root / "d" / n).write_bytes(f"content-{i}".encode())
    with (gw.root / "d" / "sparse").open("wb") as fh:
        fh.truncate(5 << 30)
    h = gw.bearer("storage.read:/")
    for body in (b"", ALLPROP):
        r = await gw.client.request("PROPFIND", "/d/", headers={**h, "Depth": "1"}, data=body)
        assert r.status == 207
        doc = StdET.fromstring(await r.read())  # strict parser
        resp = doc.findall(f"{D}response")
        assert len(resp) == len(NAMES) + 3
        hrefs = {x.findtext(f"{D}href") or "": x for x in resp}
        assert "/d/sub/" in hrefs and "/d/" in hrefs
        for href, x in hrefs.items():
            assert all(c not in href for c in ' #<>"') and href.isascii(), href
            if href.endswith("/"):
                continue
            size = x.findtext(f".//{D}getcontentlength")
            if href == "/d/sparse":
                assert size == str(5 << 30)
                continue
            g = await gw.client.get(href, headers=h, skip_auto_headers=())
            data = await g.read()
            assert g.status == 200 and data.startswith(b"content-"), href
            assert NAMES[int(data.split(b"-")[1])] in href or "%" in href
            assert size == str(len(data))
    r = await gw.client.request("PROPFIND", "/d/a%26b.txt", headers={**h, "Depth": "1"})
    assert r.status == 207
    assert len(ET.fromstring(await r.read()).findall(f"{D}response")) == 1
    r = await gw.client.request("PROPFIND", "/d/", headers={**h, "Depth": "infinity"})
    assert r.status == 403 and b"propfind-finite-depth" in await r.read()


async def test_hostile_bodies(gw: Gateway) -> None:
    h = {**gw.bearer("storage.read:/"), "Depth": "0"}
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<D:propfind xmlns:D="DAV:"><D:prop><D:x>&c;</D:x></D:prop></D:propfind>'
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<D:propfind xmlns:D="DAV:"><D:prop><D:x>&e;</D:x></D:prop></D:propfind>'
    )
    for body in (laughs, external, b"<" * 100, b"\xff\xfe<x/>"):
        r = await gw.client.request("PROPFIND", "/", headers=h, data=body)
        assert r.status == 400, body[:40]
        assert b"root:" not in await r.read()
    big = b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>' + b" " * (2 << 20)
    r = await gw.client.request("PROPFIND", "/", headers=h, data=io.BytesIO(big))
    assert r.status == 413
