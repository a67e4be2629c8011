"""segate.dav.xml for PROPPATCH (RFC 4918 §9.2) and dead properties in multistatus answers."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segate.dav.xml import (
    ALLPROP,
    PROPNAME,
    PROTECTED,
    PropfindRequest,
    PropUpdate,
    clark,
    dead_properties,
    from_clark,
    needs_dead_properties,
    parse_proppatch,
    render_multistatus,
    render_proppatch,
)
from segate.errors import BadRequest, RequestTooLarge
from tests.unit.test_dav_xml import MAX, D, href_of, info, strict_parse

NS = "http://webdav.org/neon/litmus/"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def update(body: str) -> tuple[PropUpdate, ...]:
    return parse_proppatch(body.encode(), max_size=MAX)


def test_set_and_remove_in_document_order() -> None:
    ups = update(
        f'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="{NS}">'
        "<D:set><D:prop><Z:a>1</Z:a><Z:b/></D:prop></D:set>"
        "<D:remove><D:prop><Z:a/></D:prop></D:remove>"
        "<D:set><D:prop><Z:a>2</Z:a></D:prop></D:set>"
        "</D:propertyupdate>"
    )
    assert [(u.name, u.xml is None) for u in ups] == [
        ((NS, "a"), False),
        ((NS, "b"), False),
        ((NS, "a"), True),
        ((NS, "a"), False),
    ]
    last = ET.fromstring(ups[-1].xml or "")
    assert (last.tag, last.text) == (f"{{{NS}}}a", "2")


def test_value_keeps_namespaces_attributes_mixed_content_and_lang() -> None:
    (up,) = update(
        '<propertyupdate xmlns="DAV:"><set><prop xml:lang="en">'
        '<x:author xmlns:x="urn:x">Name <h:em xmlns:h="urn:h" k="v">too</h:em> long'
        '<foo xmlns="bar"/></x:author>trailing text'
        "</prop></set></propertyupdate>"
    )
    assert up.name == ("urn:x", "author")
    el = ET.fromstring(up.xml or "")
    assert el.get(XML_LANG) == "en"
    assert el.text == "Name "
    em, foo = list(el)
    assert (em.tag, em.get("k"), em.text, em.tail) == ("{urn:h}em", "v", "too", " long")
    assert foo.tag == "{bar}foo"
    assert "trailing text" not in (up.xml or "")


def test_no_namespace_and_high_unicode() -> None:
    ups = update(
        '<propertyupdate xmlns="DAV:"><set><prop>'
        '<nonamespace xmlns="">randomvalue</nonamespace>'
        f"<hi xmlns='{NS}'>&#65536;</hi>"
        "</prop></set></propertyupdate>"
    )
    assert [u.name for u in ups] == [("", "nonamespace"), (NS, "hi")]
    assert ET.fromstring(ups[1].xml or "").text == "\U00010000"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"<foo>",
        b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
        b'<D:propertyupdate xmlns:D="DAV:"/>',
        b'<D:propertyupdate xmlns:D="DAV:"><D:set/></D:propertyupdate>',
        b'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop/><D:prop/></D:set></D:propertyupdate>',
        b'<!DOCTYPE x [<!ENTITY e "x">]><D:propertyupdate xmlns:D="DAV:"/>',
        b'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><bar:foo xmlns:bar=""/>'
        b"</D:prop></D:set></D:propertyupdate>",
    ],
)
def test_bad_bodies_are_400(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_proppatch(body, max_size=MAX)


def test_too_large_is_413() -> None:
    body = b'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop/></D:set></D:propertyupdate>'
    with pytest.raises(RequestTooLarge):
        parse_proppatch(body + b" " * 10, max_size=len(body))


def test_unknown_elements_are_ignored() -> None:
    ups = update(
        '<D:propertyupdate xmlns:D="DAV:" xmlns:o="urn:o"><o:extra/>'
        "<D:remove><D:prop><o:p/></D:prop></D:remove></D:propertyupdate>"
    )
    assert ups == (PropUpdate(("urn:o", "p"), None),)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(body: bytes) -> None:
    with contextlib.suppress(BadRequest, RequestTooLarge):
        parse_proppatch(body, max_size=150)


def test_clark_round_trip() -> None:
    for name in [("DAV:", "x"), ("", "y"), ("urn:{odd}", "z")]:
        assert from_clark(clark(name)) == name
    assert from_clark("nobrace") is None
    assert from_clark("{ns}bad name") is None


def test_render_proppatch_groups_by_status_with_condition() -> None:
    body = render_proppatch(
        "/f%20g",
        [((NS, "a"), 424), (("DAV:", "getetag"), 403), (("", "b"), 424), ((NS, "a"), 424)],
    )
    root = strict_parse(body)
    (resp,) = root.findall(f"{D}response")
    assert resp.findtext(f"{D}href") == "/f%20g"
    stats = resp.findall(f"{D}propstat")
    assert [s.findtext(f"{D}status") for s in stats] == [
        "HTTP/1.1 424 Failed Dependency",
        "HTTP/1.1 403 Forbidden",
    ]
    first = stats[0].find(f"{D}prop")
    assert first is not None
    assert [c.tag for c in first] == [f"{{{NS}}}a", "b"]
    assert stats[1].find(f"{D}error/{D}cannot-modify-protected-property") is not None


def _dead() -> dict[tuple[str, str], str]:
    stored = {
        clark((NS, "a")): f'<ns0:a xmlns:ns0="{NS}">va</ns0:a>',
        clark(("", "n")): "<n>vn</n>",
        clark((NS, "broken")): "<not-closed>",
        clark((NS, "mismatch")): "<other>x</other>",
        "garbage": "<x/>",
    }
    return dead_properties(stored)


def test_dead_properties_keep_only_well_formed_matching_entries() -> None:
    assert set(_dead()) == {(NS, "a"), ("", "n")}


@pytest.mark.parametrize("request_", [ALLPROP, PROPNAME])
def test_allprop_and_propname_list_dead_properties(request_: PropfindRequest) -> None:
    body = render_multistatus([info("/f", size=1)], request_, href_of=href_of, dead=[_dead()])
    prop = strict_parse(body).find(f"{D}response/{D}propstat/{D}prop")
    assert prop is not None
    a, n = prop.find(f"{{{NS}}}a"), prop.find("n")
    assert a is not None and n is not None
    assert prop.find(f"{D}getcontentlength") is not None
    if request_ is ALLPROP:
        assert (a.text, n.text) == ("va", "vn")
    else:
        assert (a.text, n.text) == (None, None)


def test_prop_request_finds_dead_and_reports_the_rest_404() -> None:
    req = PropfindRequest("prop", ((NS, "a"), (NS, "missing"), ("DAV:", "displayname")))
    body = render_multistatus([info("/f", size=1)], req, href_of=href_of, dead=[_dead()])
    ok, missing = strict_parse(body).findall(f"{D}response/{D}propstat")
    assert ok.findtext(f"{D}prop/{{{NS}}}a") == "va"
    assert ok.findtext(f"{D}prop/{D}displayname") == "f"
    assert missing.findtext(f"{D}status") == "HTTP/1.1 404 Not Found"
    assert missing.find(f"{D}prop/{{{NS}}}missing") is not None


def test_needs_dead_properties_only_for_non_live_names() -> None:
    assert needs_dead_properties(ALLPROP) and needs_dead_properties(PROPNAME)
    live = PropfindRequest("prop", (("DAV:", "getcontentlength"), ("DAV:", "resourcetype")))
    assert not needs_dead_properties(live)
    assert needs_dead_properties(PropfindRequest("prop", (("LCGDM:", "mode"),)))
    assert ("DAV:", "getetag") in PROTECTED
