"""segate.dav.xml: PROPFIND parsing (hostile bodies, litmus) and multistatus rendering (B18)."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from xml.dom import minidom
from xml.parsers import expat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segate.dav.xml import (
    ALLPROP,
    PropfindRequest,
    error_body,
    http_date,
    parse_propfind,
    render_multistatus,
    render_propname,
)
from segate.errors import BadRequest, RequestTooLarge
from segate.paths import LogicalPath, parse_url_path
from segate.storage.base import FileInfo

D = "{DAV:}"
MAX = 64 * 1024
GIB = 1024**3


def info(path: str, *, is_dir: bool = False, size: int = 0) -> FileInfo:
    return FileInfo(
        path=LogicalPath.from_plain(path),
        is_dir=is_dir,
        size=size,
        mtime=784111777.0,  # Sun, 06 Nov 1994 08:49:37 GMT
        ctime=784111777.0,
        etag='"1-2-3"',
    )


def href_of(i: FileInfo) -> str:
    return i.path.url_path(collection=i.is_dir)


def strict_parse(body: bytes) -> ET.Element:
    """A validating-free but strict XML 1.0 + namespaces parse (expat, no recovery)."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.Parse(body, True)  # raises ExpatError on any well-formedness error
    minidom.parseString(body)  # a second, independent parse
    return ET.fromstring(body)


# -- parse_propfind ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"  \r\n\t "])
def test_empty_body_is_allprop(body: bytes) -> None:
    assert parse_propfind(body, max_size=MAX) == ALLPROP


def test_allprop_propname_prop() -> None:
    assert parse_propfind(b'<propfind xmlns="DAV:"><allprop/></propfind>', max_size=MAX) == ALLPROP
    allprop_include = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/>'
        b"<D:include><D:supported-live-property-set/></D:include></D:propfind>"
    )
    assert parse_propfind(allprop_include, max_size=MAX) == ALLPROP
    propname = parse_propfind(
        b'<a:propfind xmlns:a="DAV:"><a:propname/></a:propfind>', max_size=MAX
    )
    assert propname.kind == "propname"


def test_davix_stat_body() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8" ?>\n'
        b'<D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:"><D:prop>'
        b"<D:displayname/><D:getlastmodified/><D:creationdate/><D:getcontentlength/>"
        b"<D:quota-used-bytes/><D:resourcetype><D:collection/></D:resourcetype><L:mode/>"
        b"<D:owner/><D:group/><D:displayname/>"
        b'<x:foo xmlns:x="urn:a:b"/><bare xmlns=""/>'
        b"</D:prop></D:propfind>"
    )
    req = parse_propfind(body, max_size=MAX)
    assert req == PropfindRequest(
        "prop",
        (
            ("DAV:", "displayname"),
            ("DAV:", "getlastmodified"),
            ("DAV:", "creationdate"),
            ("DAV:", "getcontentlength"),
            ("DAV:", "quota-used-bytes"),
            ("DAV:", "resourcetype"),
            ("LCGDM:", "mode"),
            ("DAV:", "owner"),
            ("DAV:", "group"),
            ("urn:a:b", "foo"),
            ("", "bare"),
        ),
    )


def test_brace_in_namespace_uri() -> None:
    # expat >= 2.4.5 refuses a namespace URI holding ElementTree's separator "}"; older ones
    # pass it through and the property must keep its full namespace
    body = b'<D:propfind xmlns:D="DAV:"><D:prop><x:foo xmlns:x="urn:a}b"/></D:prop></D:propfind>'
    try:
        req = parse_propfind(body, max_size=MAX)
    except BadRequest:
        return
    assert req.props == (("urn:a}b", "foo"),)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol4;</D:displayname></D:prop></D:propfind>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE propfind [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&xxe;</D:displayname></D:prop></D:propfind>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE propfind SYSTEM "http://evil.test/x.dtd">
<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY % p SYSTEM "http://evil.test/p.dtd"> %p;]>
<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        XXE,
        EXTERNAL_DTD,
        PARAMETER_ENTITY,
        b'<!DOCTYPE x><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
        b"<foo>",  # litmus propfind_invalid
        # litmus propfind_invalid2: an empty namespace prefix declaration
        b'<D:propfind xmlns:D="DAV:"><D:prop><bar:foo xmlns:bar=""/></D:prop></D:propfind>',
        b"<propfind><allprop/></propfind>",  # not in DAV:
        b'<D:prop xmlns:D="DAV:"/>',
        b'<D:propfind xmlns:D="DAV:"/>',
        b'<D:propfind xmlns:D="DAV:"><D:allprop/><D:propname/></D:propfind>',
        b'<D:propfind xmlns:D="DAV:"><D:prop/><D:prop/></D:propfind>',
        b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind><x/>',
        b'<?xml version="1.0" encoding="no-such"?><propfind xmlns="DAV:"><allprop/></propfind>',
        b'<?xml version="1.0" encoding="utf-7"?><propfind xmlns="DAV:"><allprop/></propfind>',
        b'<propfind xmlns="DAV:"><allprop/></propfind \xff>',
        b"\xff\xfe\xfd",
        b'<x:propfind xmlns:x="DAV:"><x:allprop/></y:propfind>',
    ],
)
def test_bad_bodies_are_400(body: bytes) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_propfind(body, max_size=MAX)
    assert exc.value.status == 400


def test_body_over_limit_is_413() -> None:
    body = b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    with pytest.raises(RequestTooLarge) as exc:
        parse_propfind(body + b" " * 100, max_size=len(body))
    assert exc.value.status == 413
    assert parse_propfind(body, max_size=len(body)) == ALLPROP


@given(st.binary(max_size=300))
def test_parse_propfind_arbitrary_bytes(body: bytes) -> None:
    with contextlib.suppress(BadRequest, RequestTooLarge):
        parse_propfind(body, max_size=200)


_xmlish = st.lists(
    st.sampled_from(
        [
            "<",
            ">",
            "/",
            "D:",
            "propfind",
            "prop",
            "allprop",
            "propname",
            ' xmlns:D="DAV:"',
            ' xmlns="DAV:"',
            "<!DOCTYPE x>",
            "&amp;",
            "&x;",
            "<?xml version='1.0'?>",
            "x",
            " ",
            '"',
            "=",
            "\u00fc",
        ]
    ),
    max_size=30,
).map(lambda parts: "".join(parts).encode("utf-8"))


@given(_xmlish)
def test_parse_propfind_xml_like_bytes(body: bytes) -> None:
    try:
        req = parse_propfind(body, max_size=MAX)
    except (BadRequest, RequestTooLarge):
        return
    assert req.kind in ("allprop", "propname", "prop")


# -- render_multistatus ------------------------------------------------------------------------

B18_NAMES = ["a&b.txt", "x<y>.txt", "sp ace.root", "pct%.txt", "ünï.txt", "h#sh", "q\"u'o.txt"]


def _listing() -> list[FileInfo]:
    return [
        info("/d", is_dir=True),
        *(info(f"/d/{n}", size=3) for n in B18_NAMES),
        info("/d/sub", is_dir=True),
        info("/d/big", size=5 * GIB),
    ]


def _responses(body: bytes) -> list[ET.Element]:
    root = strict_parse(body)
    assert root.tag == f"{D}multistatus"
    return root.findall(f"{D}response")


@pytest.mark.parametrize(
    "request_",
    [
        ALLPROP,
        PropfindRequest("prop", (("DAV:", "displayname"), ("DAV:", "resourcetype"))),
        PropfindRequest("propname"),
    ],
)
def test_b18_names_round_trip(request_: PropfindRequest) -> None:
    entries = _listing()
    body = render_multistatus(entries, request_, href_of=href_of)
    responses = _responses(body)
    assert len(responses) == len(entries)
    for entry, resp in zip(entries, responses, strict=True):
        href = resp.findtext(f"{D}href")
        assert href is not None
        assert href.isascii() and " " not in href and "#" not in href
        parsed = parse_url_path(href)
        assert parsed.path == entry.path
        assert href.endswith("/") == entry.is_dir
        assert parsed.trailing_slash == entry.is_dir
        if request_.kind != "propname":
            assert resp.findtext(f"{D}propstat/{D}prop/{D}displayname") == entry.path.name
    # the requested collection comes first, exactly as passed
    assert responses[0].findtext(f"{D}href") == "/d/"


def test_allprop_values() -> None:
    entries = _listing()
    responses = _responses(render_multistatus(entries, ALLPROP, href_of=href_of))
    by_href = {r.findtext(f"{D}href"): r for r in responses}
    for resp in responses:
        propstats = resp.findall(f"{D}propstat")
        assert len(propstats) == 1
        assert propstats[0].findtext(f"{D}status") == "HTTP/1.1 200 OK"
    big = by_href["/d/big"].find(f"{D}propstat/{D}prop")
    assert big is not None
    assert big.findtext(f"{D}getcontentlength") == str(5 * GIB) == "5368709120"
    assert big.findtext(f"{D}getlastmodified") == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert big.findtext(f"{D}creationdate") == "1994-11-06T08:49:37Z"
    assert big.findtext(f"{D}getetag") == '"1-2-3"'
    assert big.findtext(f"{D}getcontenttype") == "application/octet-stream"
    assert big.find(f"{D}resourcetype/{D}collection") is None
    assert big.find(f"{D}resourcetype") is not None
    sub = by_href["/d/sub/"].find(f"{D}propstat/{D}prop")
    assert sub is not None
    assert sub.find(f"{D}resourcetype/{D}collection") is not None
    assert sub.find(f"{D}getcontentlength") is None
    assert sub.find(f"{D}iscollection") is None  # only when asked for


def test_prop_request_found_first_then_404() -> None:
    req = PropfindRequest(
        "prop",
        (
            ("DAV:", "getcontentlength"),
            ("DAV:", "quota-used-bytes"),
            ("LCGDM:", "mode"),
            ("DAV:", "resourcetype"),
            ("", "bare"),
            ('urn:a&"b<c>', "odd"),
            ("http://www.w3.org/XML/1998/namespace", "lang"),
            ("DAV:", "iscollection"),
        ),
    )
    entries = [info("/d", is_dir=True), info("/d/f", size=7)]
    body = render_multistatus(entries, req, href_of=href_of)
    d_resp, f_resp = _responses(body)
    for resp, found, missing in [
        (
            d_resp,
            {f"{D}resourcetype", f"{D}iscollection"},
            {f"{D}getcontentlength", f"{D}quota-used-bytes", "{LCGDM:}mode", "bare",
             '{urn:a&"b<c>}odd', "{http://www.w3.org/XML/1998/namespace}lang"},
        ),
        (
            f_resp,
            {f"{D}getcontentlength", f"{D}resourcetype", f"{D}iscollection"},
            {f"{D}quota-used-bytes", "{LCGDM:}mode", "bare", '{urn:a&"b<c>}odd',
             "{http://www.w3.org/XML/1998/namespace}lang"},
        ),
    ]:  # fmt: skip
        ok, nf = resp.findall(f"{D}propstat")
        assert ok.findtext(f"{D}status") == "HTTP/1.1 200 OK"
        assert nf.findtext(f"{D}status") == "HTTP/1.1 404 Not Found"
        assert {p.tag for p in ok.find(f"{D}prop") or []} == found
        assert {p.tag for p in nf.find(f"{D}prop") or []} == missing
    assert d_resp.findtext(f"{D}propstat/{D}prop/{D}iscollection") == "1"
    assert f_resp.findtext(f"{D}propstat/{D}prop/{D}iscollection") == "0"
    assert f_resp.findtext(f"{D}propstat/{D}prop/{D}getcontentlength") == "7"


def test_prop_request_nothing_found_still_has_200_first() -> None:
    req = PropfindRequest("prop", (("DAV:", "quota-available-bytes"),))
    (resp,) = _responses(render_multistatus([info("/f")], req, href_of=href_of))
    ok, nf = resp.findall(f"{D}propstat")
    assert ok.findtext(f"{D}status") == "HTTP/1.1 200 OK"
    assert ok.find(f"{D}prop") is not None and len(ok.find(f"{D}prop") or []) == 0
    assert nf.findtext(f"{D}status") == "HTTP/1.1 404 Not Found"


def test_propname_lists_names_without_values() -> None:
    body = render_propname([info("/d", is_dir=True), info("/d/f", size=1)], href_of=href_of)
    d_resp, f_resp = _responses(body)
    d_names = {p.tag for p in d_resp.find(f"{D}propstat/{D}prop") or []}
    f_names = {p.tag for p in f_resp.find(f"{D}propstat/{D}prop") or []}
    assert f"{D}getcontentlength" in f_names and f"{D}getcontentlength" not in d_names
    assert f"{D}resourcetype" in d_names
    for resp in (d_resp, f_resp):
        for p in resp.find(f"{D}propstat/{D}prop") or []:
            assert len(p) == 0 and not (p.text or "").strip()


def test_unrepresentable_names_still_well_formed() -> None:
    # file names from disk may hold characters XML 1.0 cannot carry
    odd = FileInfo(LogicalPath(("d", "bell\x07\udcff\ufffe")), False, 1, 0.0, 0.0, "")
    body = render_multistatus([odd], ALLPROP, href_of=lambda _: "/d/bell%07%FF")
    (resp,) = _responses(body)
    assert resp.findtext(f"{D}propstat/{D}prop/{D}displayname") == "bell\ufffd\ufffd\ufffd"
    assert resp.find(f"{D}propstat/{D}prop/{D}getetag") is None


def test_root_and_absurd_timestamps() -> None:
    root = FileInfo(LogicalPath(), True, 0, float("nan"), 1e300, "abc")
    (resp,) = _responses(render_multistatus([root], ALLPROP, href_of=href_of))
    assert resp.findtext(f"{D}href") == "/"
    prop = resp.find(f"{D}propstat/{D}prop")
    assert prop is not None
    assert prop.findtext(f"{D}getlastmodified") == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert prop.findtext(f"{D}creationdate") == "9999-12-31T23:59:59Z"
    assert prop.findtext(f"{D}getetag") == '"abc"'
    assert http_date(-5.0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@given(
    st.lists(
        st.text(min_size=1, max_size=12).filter(
            lambda s: "/" not in s and "\\" not in s and s not in (".", "..")
            and not any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in s)
        ),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    st.sampled_from([ALLPROP, PropfindRequest("propname"),
                     PropfindRequest("prop", (("DAV:", "displayname"), ("x:", "y")))]),
)  # fmt: skip
def test_render_any_name_round_trips(names: list[str], request_: PropfindRequest) -> None:
    entries = [info("/d", is_dir=True), *(FileInfo(LogicalPath(("d", n)), False, 1, 0, 0, "e")
                                          for n in names)]  # fmt: skip
    responses = _responses(render_multistatus(entries, request_, href_of=href_of))
    hrefs = [r.findtext(f"{D}href") or "" for r in responses]
    assert [parse_url_path(h).path for h in hrefs] == [e.path for e in entries]


def test_bad_propfind_request_values() -> None:
    with pytest.raises(ValueError):
        PropfindRequest("everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PropfindRequest("prop", (("DAV:", "a b"),))


# -- error_body --------------------------------------------------------------------------------


def test_error_body() -> None:
    root = strict_parse(error_body("propfind-finite-depth"))
    assert root.tag == f"{D}error"
    assert [c.tag for c in root] == [f"{D}propfind-finite-depth"]
    with pytest.raises(ValueError):
        error_body("x><y")
