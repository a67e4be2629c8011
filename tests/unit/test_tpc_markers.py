"""Perf markers, final lines and adler32 joining (segate/tpc/markers.py, digest.py; B20, B22)."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segate.tpc.digest import adler32_combine, adler32_from_digest, normalize_adler32
from segate.tpc.markers import failure_line, format_endpoint, perf_marker, success_line

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"


def test_marker_is_exactly_the_xrootd_format() -> None:
    m = perf_marker(1685106814.7, 1017184256, ["tcp:137.0.0.1:2001", "tcp:[::1]:443"])
    assert m == (
        "Perf Marker\n"
        "Timestamp: 1685106814\n"
        "Stripe Index: 0\n"
        "Stripe Bytes Transferred: 1017184256\n"
        "Total Stripe Count: 1\n"
        "RemoteConnections: tcp:137.0.0.1:2001,tcp:[::1]:443\n"
        "End\n"
    )
    # davix reads the byte count from offset 26 and the stripe count from offset 20
    lines = m.splitlines()
    assert int(lines[3][26:]) == 1017184256 and int(lines[4][20:]) == 1


def test_marker_without_a_known_connection_omits_the_line() -> None:
    assert "RemoteConnections" not in perf_marker(0, 0, [])


def test_endpoints() -> None:
    assert format_endpoint("127.0.0.1", 8443) == "tcp:127.0.0.1:8443"
    assert format_endpoint("::1", 443) == "tcp:[::1]:443"


def test_final_lines() -> None:
    assert success_line() == "success: Created\n"
    line = failure_line(f"remote said\r\n403 for Bearer {JWT} ?authz=secret&x=1")
    assert line.startswith("failure: remote said 403") and line.count("\n") == 1
    assert JWT not in line and "secret" not in line
    assert failure_line("") == "failure: transfer failed\n"
    assert len(failure_line("x" * 5000)) < 1024  # davix reads lines of at most 1023 bytes


@given(st.text())
def test_failure_line_is_always_one_line(reason: str) -> None:
    line = failure_line(reason)
    assert line.startswith("failure: ") and line.endswith("\n")
    assert "\n" not in line[:-1] and "\r" not in line
    assert len(line.encode()) <= 1023 * 4


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_adler32_combine_matches_zlib(x: bytes, y: bytes) -> None:
    assert adler32_combine(zlib.adler32(x), zlib.adler32(y), len(y)) == zlib.adler32(x + y)


def test_adler32_combine_for_long_blocks() -> None:
    blocks = [bytes([i]) * (70_000 + i) for i in range(1, 6)]
    value = 1
    for b in blocks:
        value = adler32_combine(value, zlib.adler32(b), len(b))
    assert value == zlib.adler32(b"".join(blocks))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (["adler32=668480ea"], "668480ea"),
        (["ADLER32=68480EA"], "068480ea"),
        (["md5=lQ3Y0HyN/LgNk4n5KcXdDw==, adler32=0001abcd"], "0001abcd"),
        (["md5=abc", "adler32=1"], "00000001"),
        (["md5=abc"], None),
        (["adler32=xyz"], None),
        ([], None),
    ],
)
def test_adler32_from_digest(fields: list[str], expected: str | None) -> None:
    assert adler32_from_digest(fields) == expected


def test_normalize_adler32() -> None:
    assert normalize_adler32(" 1 ") == "00000001"
    assert normalize_adler32("123456789") is None
