"""segate.dav.headers: Range (B19), Depth/Overwrite/Destination, Want-Digest and digests (B20),
Content-Length (B28)."""

from __future__ import annotations

import hashlib
import zlib

import google_crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segate.dav.headers import (
    MAX_RANGES,
    Destination,
    adler32_hex,
    crc32c_hex,
    format_digest,
    md5_b64,
    negotiate_digest,
    parse_content_length,
    parse_depth,
    parse_destination,
    parse_overwrite,
    parse_range,
)
from segate.errors import BadRequest, RangeNotSatisfiable, SegateError
from segate.paths import LogicalPath

GIB = 1024**3

# -- Range -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, [(0, 99)]),
        ("bytes=5368709120-5368709129", 6 * GIB, [(5368709120, 5368709129)]),
        ("bytes=-10", 6 * GIB, [(6 * GIB - 10, 6 * GIB - 1)]),
        ("bytes=-10", 1000, [(990, 999)]),
        ("bytes=-5000", 1000, [(0, 999)]),
        ("bytes=0-9,20-29", 1000, [(0, 9), (20, 29)]),
        ("bytes=990-", 1000, [(990, 999)]),
        ("bytes=0-", 1000, [(0, 999)]),
        ("bytes=900-99999999999999999999", 1000, [(900, 999)]),
        ("bytes=0-0,-1", 1000, [(0, 0), (999, 999)]),
        ("BYTES = 1-2", 1000, [(1, 2)]),
        ("bytes=1-2, ,3-4,", 1000, [(1, 2), (3, 4)]),
        ("bytes=0-9,5-14", 1000, [(0, 9), (5, 14)]),  # overlaps kept as sent
        ("bytes=2000-3000,0-1", 1000, [(0, 1)]),  # unsatisfiable members dropped
        ("bytes=0005-0009", 1000, [(5, 9)]),
        ("bytes=-1", 0, None),  # zero-length: satisfiable suffix that selects nothing
    ],
)
def test_parse_range(header: str, size: int, expected: list[tuple[int, int]] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "items=0-9",  # unknown unit
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes=a-b",
        "bytes=5-1",  # last < first: invalid, ignored
        "bytes=0-9,5-1",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=0x10-20",
        "bytes=--5",
        "bytes=-",
        "bytes=\u0661-\u0662",  # non-ASCII digits that int() would accept
        "bytes=1_0-20",
        "bytes=" + "9" * 31 + "-",
    ],
)
def test_parse_range_ignored(header: str | None) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-2000", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-0", 0),
        ("bytes=0-", 0),
        ("bytes=7000000000-,8000000000-9000000000", 6 * GIB),
    ],
)
def test_parse_range_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as exc:
        parse_range(header, size)
    assert exc.value.status == 416
    assert exc.value.headers == {"Content-Range": f"bytes */{size}"}


def test_parse_range_too_many() -> None:
    many = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(2000))
    with pytest.raises(BadRequest) as exc:
        parse_range(many, 6 * GIB)
    assert exc.value.status == 400
    at_limit = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES))
    assert len(parse_range(at_limit, 6 * GIB) or []) == MAX_RANGES


def test_parse_range_rejects_negative_size() -> None:
    with pytest.raises(ValueError):
        parse_range("bytes=0-1", -1)


_range_chars = st.text(alphabet="bytes=0123456789-, \t;x", max_size=60)
_range_like = st.builds(
    lambda specs: "bytes=" + ",".join(specs),
    st.lists(
        st.one_of(
            st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 10**13), st.integers(0, 10**13)),
            st.builds(lambda a: f"{a}-", st.integers(0, 10**13)),
            st.builds(lambda n: f"-{n}", st.integers(0, 10**13)),
        ),
        max_size=5,
    ),
)


@given(
    header=st.one_of(_range_chars, _range_like, st.text(max_size=40)), size=st.integers(0, 8 * GIB)
)
def test_parse_range_properties(header: str, size: int) -> None:
    try:
        ranges = parse_range(header, size)
    except SegateError as exc:
        assert isinstance(exc, (BadRequest, RangeNotSatisfiable))
        return
    if ranges is None:
        return
    assert ranges
    for first, last in ranges:
        assert 0 <= first <= last < size


# -- Depth, Overwrite --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "1"), ("0", "0"), ("1", "1"), ("infinity", "infinity"), ("Infinity", "infinity"),
     (" 0 ", "0")],
)  # fmt: skip
def test_parse_depth(value: str | None, expected: str) -> None:
    assert parse_depth(value, default="1") == expected


@pytest.mark.parametrize("value", ["", "2", "-1", "inf", "0,1", "00", "1.0"])
def test_parse_depth_invalid(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_depth(value, default="infinity")


def test_parse_depth_bad_default_is_a_bug() -> None:
    with pytest.raises(ValueError):
        parse_depth(None, default="2")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), ("T", True), ("t", True), ("F", False), (" f ", False)]
)
def test_parse_overwrite(value: str | None, expected: bool) -> None:
    assert parse_overwrite(value) is expected


@pytest.mark.parametrize("value", ["", "true", "false", "Y", "TF", "0"])
def test_parse_overwrite_invalid(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_overwrite(value)


# -- Destination -------------------------------------------------------------------------------

LOCAL = {"gw.test:8443", "gw.test", "gw.test:443", "[::1]:8443", "10.0.0.1:8443"}


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("https://gw.test:8443/d/new", "/d/new"),
        ("HTTPS://GW.Test:8443/d/new", "/d/new"),
        ("davs://gw.test:8443/d/new?x=1", "/d/new"),
        ("https://gw.test/d/a%26b.txt", "/d/a&b.txt"),
        ("https://gw.test:443/d/sp%20ace", "/d/sp ace"),
        ("https://gw.test./d/x", "/d/x"),
        ("https://user@gw.test:8443/d/x", "/d/x"),
        ("https://[::1]:8443/d/x", "/d/x"),
        ("https://10.0.0.1:8443/d/x", "/d/x"),
        ("https://gw.test:8443", "/"),
        ("https://gw.test:8443?q", "/"),
        ("/d/%C3%BCn%C3%AF.txt", "/d/ünï.txt"),
        ("/d/x?copy_mode=push", "/d/x"),
    ],
)
def test_parse_destination_local(value: str, path: str) -> None:
    dest = parse_destination(value, local_hosts=LOCAL)
    assert dest.is_local
    assert dest.url == value
    assert dest.path is not None
    assert dest.path.path == LogicalPath.from_plain(path)


def test_parse_destination_trailing_slash() -> None:
    dest = parse_destination("https://gw.test:8443/d/sub/", local_hosts=LOCAL)
    assert dest.path is not None and dest.path.trailing_slash


@pytest.mark.parametrize(
    "value",
    [
        "https://remote.test:9443/d/x?authz=abc",
        "https://gw.test:9443/d/x",  # same host, other port
        "davs://gw.test.example:8443/d/x",
        "https://[::2]:8443/x",
    ],
)
def test_parse_destination_remote(value: str) -> None:
    assert parse_destination(value, local_hosts=LOCAL) == Destination(value, False, None)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "d/x",
        "//gw.test/d/x",
        "ftp://gw.test/d/x",
        "gsiftp://gw.test/d/x",
        "https:///d/x",
        "https://gw.test:99999/d/x",
        "https://gw.test:8a/d/x",
        "https://gw te.st/x",
        "https://[::1/x",
        "https://gw.test:8443/d/x#frag",
        "/d/h#sh",
        "/d/x\r\nX-Injected: 1",
        "https://remote.test/x\nfoo",
        "/d/\x00",
        "/d/\udcff",  # undecodable byte (aiohttp surrogateescape)
        "https://gw.test:8443/d/%2e%2e/x",
        "https://gw.test:8443/d/%zz",
    ],
)
def test_parse_destination_invalid(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_destination(value, local_hosts=LOCAL)


@given(st.text(max_size=80))
def test_parse_destination_never_crashes(value: str) -> None:
    try:
        dest = parse_destination(value, local_hosts=LOCAL)
    except BadRequest:
        return
    assert dest.is_local == (dest.path is not None)
    assert not any(ord(c) < 0x20 for c in dest.url)


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("https://gw.test/d/x", False),  # 443 is not one of ours
        ("http://gw.test:8443/d/x", True),  # scheme does not decide, host:port does
        ("https://gw.test:443/d/x", True),
    ],
)
def test_parse_destination_ports(value: str, local: bool) -> None:
    hosts = {"gw.test:8443", "other.test", "gw.test:443"} if local else {"gw.test:8443"}
    assert parse_destination(value, local_hosts=hosts).is_local is local


def test_bare_host_matches_default_ports_only() -> None:
    hosts = {"gw.test"}
    assert parse_destination("http://gw.test/x", local_hosts=hosts).is_local
    assert parse_destination("davs://gw.test:443/x", local_hosts=hosts).is_local
    assert not parse_destination("https://gw.test:8443/x", local_hosts=hosts).is_local
    assert not parse_destination("https://gw.test:80/x", local_hosts=hosts).is_local


# -- Want-Digest and digest values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("want", "expected"),
    [
        ("adler32", ["adler32"]),
        ("ADLER32", ["adler32"]),
        ("MD5, ADLER32", ["md5"]),
        ("ADLER32,MD5", ["adler32"]),
        ("sha-512,sha-256;q=0.8,sha;q=0.6,md5;q=0.4,adler32;q=0.2", ["md5"]),
        ("md5;q=0.3, adler32;q=0.9", ["adler32"]),
        ("md5;q=0.5,adler32;q=0.5", ["md5"]),  # tie: client order
        ("adler32;Q=1.0", ["adler32"]),
        ("crc32c", ["crc32c"]),
        ("CRC32c", ["crc32c"]),
        ("foo", []),
        ("", []),
        (None, []),
        ("md5;q=0", []),
        ("md5;q=0.000, adler32", ["adler32"]),
        ("md5;q=abc, adler32;q=0.1", ["adler32"]),  # unreadable q excludes md5
        ("md5;q=2, crc32c;q=0.1", ["crc32c"]),
        ("md5;q=nan, adler32;q=inf, crc32c;q=1e0", []),
        ("md5;q=0.5;charset=x, adler32;foo", ["adler32"]),
        (" , ;q=1, adler32 ; q = 0.7 ", ["adler32"]),
        ("adler32;q=0, adler32;q=1", []),  # the first mention counts
    ],
)
def test_negotiate_digest(want: str | None, expected: list[str]) -> None:
    assert negotiate_digest(want) == expected


def test_negotiate_digest_restricted_support() -> None:
    assert negotiate_digest("MD5, ADLER32", supported=("ADLER32",)) == ["adler32"]
    assert negotiate_digest("crc32c", supported=("adler32", "md5")) == []


@given(st.text(max_size=120))
def test_negotiate_digest_never_raises(want: str) -> None:
    result = negotiate_digest(want)
    assert len(result) <= 1
    assert set(result) <= {"adler32", "md5", "crc32c"}


def test_adler32_zero_padded() -> None:
    assert adler32_hex(zlib.adler32(b"\0\0\0\0")) == "00040001"
    assert format_digest("ADLER32", adler32_hex(zlib.adler32(b"\0\0\0\0"))) == "adler32=00040001"
    assert adler32_hex(0x0004000A) == "0004000a"
    assert adler32_hex(1) == "00000001"
    assert adler32_hex(0xFFFFFFFF) == "ffffffff"


def test_crc32c_hex_not_base64() -> None:
    assert crc32c_hex(google_crc32c.value(b"123456789")) == "e3069283"
    assert crc32c_hex(google_crc32c.value(b"")) == "00000000"
    assert format_digest("crc32c", crc32c_hex(5)) == "crc32c=00000005"


def test_md5_base64_of_raw_bytes() -> None:
    digest = hashlib.md5(b"").digest()
    assert md5_b64(digest) == "1B2M2Y8AsgTpgAmY7PhCfg=="
    assert format_digest("md5", md5_b64(digest)) == "md5=1B2M2Y8AsgTpgAmY7PhCfg=="


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_hex32_range(bad: int) -> None:
    with pytest.raises(ValueError):
        adler32_hex(bad)
    with pytest.raises(ValueError):
        crc32c_hex(bad)


def test_md5_length_checked() -> None:
    with pytest.raises(ValueError):
        md5_b64(b"\0" * 15)


@pytest.mark.parametrize(
    ("algorithm", "value"),
    [("adler32", "0004\r\n0001"), ("adler32", "a,b"), ("adler 32", "00040001"), ("", "00")],
)
def test_format_digest_refuses_header_breakers(algorithm: str, value: str) -> None:
    with pytest.raises(ValueError):
        format_digest(algorithm, value)


# -- Content-Length ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        (["0"], 0),
        (["4"], 4),
        (["6442450944"], 6 * GIB),
        (["42", "42"], 42),
        (["42, 42"], 42),
        ([" 7 "], 7),
    ],
)
def test_parse_content_length(values: list[str], expected: int | None) -> None:
    assert parse_content_length(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        ["-1"],
        ["+1"],
        [""],
        ["1a"],
        ["0x10"],
        ["1.0"],
        ["0", "4"],
        ["4, 5"],
        ["4,"],
        ["\u0661"],
        ["99999999999999999999"],
        ["9223372036854775808"],
    ],
)
def test_parse_content_length_invalid(values: list[str]) -> None:
    with pytest.raises(BadRequest):
        parse_content_length(values)
