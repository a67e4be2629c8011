"""COPY headers -> TransferRequest (segate/tpc/parse.py; PROTOCOLS.md §4.1-4.2, B21, B25, B26)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segate.errors import BadRequest
from segate.tpc.parse import Mode, TransferRequest, normalize_remote, parse_transfer

REMOTE = "https://se.example.test:2880/data/f.root"


def parse(*headers: tuple[str, str], local: bool = False, max_streams: int = 16) -> TransferRequest:
    return parse_transfer(headers, is_local=lambda _url: local, max_streams=max_streams)


def test_pull_and_push() -> None:
    pull = parse(("Source", REMOTE))
    assert pull.mode is Mode.PULL and pull.remote == REMOTE
    assert pull.overwrite and not pull.require_checksum and pull.streams == 1
    push = parse(("Destination", REMOTE))
    assert push.mode is Mode.PUSH and push.remote == REMOTE


@pytest.mark.parametrize(
    "headers",
    [
        (("Source", REMOTE), ("Destination", REMOTE)),
        (),
        (("Overwrite", "T"),),
        (("Source", REMOTE), ("Source", REMOTE)),
    ],
)
def test_both_neither_or_twice_is_400(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(BadRequest):
        parse(*headers)


def test_a_local_destination_is_not_third_party() -> None:
    with pytest.raises(BadRequest):
        parse(("Destination", "https://localhost:8443/x"), local=True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("davs://h:1/a", "https://h:1/a"),
        ("DAV://h/a?x=1", "http://h/a?x=1"),
        ("HTTPS://h", "https://h/"),
        ("https://h/dir/name%20with%2Bplus.root?sig=a%2Fb&tok=1", None),
        ("https://h/p?copy_mode=pull", None),
        ("https://[::1]:8443/x", None),
        ("https://h/a b", "https://h/a%20b"),
        ("https://h/caf\u00e9", "https://h/caf%C3%A9"),
    ],
)
def test_remote_url_kept_verbatim(raw: str, expected: str | None) -> None:
    assert normalize_remote(raw) == (expected or raw)


@pytest.mark.parametrize(
    "raw",
    [
        "ftp://h/x",
        "file:///etc/passwd",
        "s3://bucket/x",
        "/local/path",
        "https://user:pw@h/x",
        "https://h/x#frag",
        "https://h:99999/x",
        "https://h:port/x",
        "https://h/%zz",
        "https://h/a\r\nX-Injected: 1",
        "https:///x",
        "https://h\u00e9/x",
        "https://[::1/x",
    ],
)
def test_bad_remote_urls_are_400(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalize_remote(raw)


@given(
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4),
    st.text(max_size=30),
)
def test_well_formed_urls_are_never_reencoded(segments: list[str], query: str) -> None:
    path = "/" + "/".join(quote(s, safe="") for s in segments)
    url = f"https://h.test:2880{path}?{quote(query, safe='=&')}"
    assert normalize_remote(url) == url


def test_transfer_headers_are_forwarded_with_canonical_names() -> None:
    req = parse(
        ("Source", REMOTE),
        ("Authorization", "Bearer CLIENT"),
        ("transferheaderauthorization", "Bearer R"),
        ("TransferHeaderArchiveMetadata", "abc"),
        ("TRANSFERHEADERX-Custom-Thing", "v"),
        ("TransferHeaderContent-Length", "5"),
        ("TransferHeaderHost", "evil"),
        ("TransferHeaderTransfer-Encoding", "chunked"),
        ("TransferHeaderConnection", "close"),
        ("TransferHeaderExpect", "100-continue"),
        ("TransferHeaderRange", "bytes=0-1"),
        ("Copy-Header", "SciTag: 65"),
    )
    assert req.headers == (
        ("Authorization", "Bearer R"),
        ("ArchiveMetadata", "abc"),
        ("X-Custom-Thing", "v"),
        ("SciTag", "65"),
    )
    assert all("CLIENT" not in v for _, v in req.headers)


@pytest.mark.parametrize(
    "header",
    [
        ("TransferHeaderBad Name", "x"),
        ("TransferHeaderX", "a\nb"),
        ("Copy-Header", "no colon"),
    ],
)
def test_bad_forwarded_headers_are_400(header: tuple[str, str]) -> None:
    with pytest.raises(BadRequest):
        parse(("Source", REMOTE), header)


def test_two_forwarded_authorizations_are_400() -> None:
    with pytest.raises(BadRequest):
        parse(
            ("Source", REMOTE),
            ("TransferHeaderAuthorization", "Bearer A"),
            ("Copy-Header", "Authorization: Bearer B"),
        )


@pytest.mark.parametrize("value", ["none", "None", "NONE"])
def test_credential_none_is_accepted(value: str) -> None:
    assert parse(("Source", REMOTE), ("Credential", value)).mode is Mode.PULL


@pytest.mark.parametrize("value", ["gridsite", "oidc", "x509", ""])
def test_other_credentials_are_400(value: str) -> None:
    with pytest.raises(BadRequest):
        parse(("Source", REMOTE), ("Credential", value))


def test_flags() -> None:
    req = parse(
        ("Source", REMOTE),
        ("Overwrite", "f"),
        ("RequireChecksumVerification", "TRUE"),
        ("Copy-Flags", "NoHead"),
    )
    assert not req.overwrite and req.require_checksum and req.no_head
    assert parse(("Source", REMOTE), ("Overwrite", "T")).overwrite


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Overwrite", "yes"),
        ("Overwrite", ""),
        ("RequireChecksumVerification", "1"),
        ("X-Number-Of-Streams", "-1"),
        ("X-Number-Of-Streams", "1.5"),
        ("X-Number-Of-Streams", "9999999"),
        ("X-Number-Of-Streams", "\u0661"),
    ],
)
def test_bad_values_are_400(name: str, value: str) -> None:
    with pytest.raises(BadRequest):
        parse(("Source", REMOTE), (name, value))


@pytest.mark.parametrize(("value", "streams"), [("0", 1), ("1", 1), ("4", 4), ("100", 16)])
def test_streams(value: str, streams: int) -> None:
    assert parse(("Source", REMOTE), ("X-Number-Of-Streams", value)).streams == streams
