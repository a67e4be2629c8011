"""Macaroon core offline: durations, secrets, wire format, caveat checks, widening attempts.

PROTOCOLS.md §3.1 (format), §3.3 (caveats), §3.6 (secrets, rotation); field reports B04, B12.
An injected clock; no network, no server.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymacaroons import Macaroon

from segate.auth.chain import AuthChain, Credentials
from segate.auth.durations import DurationError, format_instant, parse_duration, parse_instant
from segate.auth.macaroon_caveats import CaveatChecker, MintedFor, parse_caveat_path
from segate.auth.macaroons import (
    MacaroonAuthenticator,
    MacaroonKeyring,
    decode_secret,
    key_id,
    load_or_create_secret,
    looks_like_macaroon,
    mint,
    parse_v1,
)
from segate.auth.principal import Activity, Grant, Kind, Op, Permission, Principal, Restriction
from segate.authz.decide import Policy, decide
from segate.errors import Unauthenticated
from segate.paths import LogicalPath

NOW = 1_800_000_000.0
P = LogicalPath.from_plain
A = Activity
SECRET = b"s" * 32
KEYRING = MacaroonKeyring(SECRET)
POLICY = Policy()


def make(
    path: str = "/data",
    acts: frozenset[Activity] = frozenset({A.DOWNLOAD, A.LIST}),
    *,
    keyring: MacaroonKeyring = KEYRING,
    expires_at: float = NOW + 3600,
    networks: tuple[str, ...] = (),
    who: MintedFor | None = None,
) -> str:
    return mint(
        keyring,
        location="segate",
        minted_for=who or MintedFor.admin(),
        path=P(path),
        activities=acts,
        expires_at=expires_at,
        networks=networks,
    )


def extend(m: str, *caveats: str) -> str:
    mac = Macaroon.deserialize(m)
    for c in caveats:
        mac.add_first_party_caveat(c)
    out: str = mac.serialize()
    return out


def auth(keyring: MacaroonKeyring = KEYRING, now: float = NOW) -> MacaroonAuthenticator:
    return MacaroonAuthenticator(keyring, leeway=60, clock=lambda: now)


def verify(m: str, *, ip: str = "127.0.0.1", now: float = NOW) -> Principal:
    return auth(now=now).verify(m, client_ip=ip)


def allowed(p: Principal, op: Op, path: str) -> bool:
    return decide(p, op, P(path), POLICY).allowed


# -- durations -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT30S", 30),
        ("PT10M", 600),
        ("PT2H", 7200),
        ("P1D", 86400),
        ("P1DT2H30M", 95400),
        ("PT1H30M15S", 5415),
        ("PT180M", 10800),
        ("pt1.5s", 1.5),
        ("P2W", 14 * 86400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "P", "PT", "P1DT", "PT-5S", "-PT5S", "PT0S", "1H", "PT1.5M", "PT1H ", "P1Y", "P1M",
     "PT5X", "P99999999999D", "PT" + "9" * 80 + "S"],
)  # fmt: skip
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@given(st.integers(0, 30), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_duration_components_add_up(d: int, h: int, m: int, s: int) -> None:
    if d == h == m == s == 0:
        return
    text = f"P{d}DT{h}H{m}M{s}S"
    assert parse_duration(text) == ((d * 24 + h) * 60 + m) * 60 + s


def test_instants() -> None:
    base = parse_instant("2027-01-15T08:00:00Z")
    assert parse_instant("2027-01-15T08:00:00.250Z") == base + 0.25
    assert parse_instant("2027-01-15T10:00:00+02:00") == base
    assert format_instant(base + 0.9) == "2027-01-15T08:00:00Z"
    for bad in ("2027-01-15 08:00:00Z", "2027-01-15T08:00:00", "2027-02-30T00:00:00Z", "x"):
        with pytest.raises(DurationError):
            parse_instant(bad)


# -- secrets ---------------------------------------------------------------------------------
def test_secret_file_created_once_0600(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    assert len(first) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_concurrent_creation_agrees(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    out: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: out.append(load_or_create_secret(path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 1


def test_secret_formats() -> None:
    raw = os.urandom(48)
    assert decode_secret(base64.b64encode(raw) + b"\n") == raw
    assert decode_secret(base64.urlsafe_b64encode(raw).rstrip(b"=")) == raw
    binary = b"\xff" * 40
    assert decode_secret(binary) == binary
    with pytest.raises(ValueError):
        decode_secret(base64.b64encode(b"short"))
    with pytest.raises(ValueError):
        MacaroonKeyring(b"short")


def test_rotation_previous_verifies_only_current_signs() -> None:
    old, new = os.urandom(32), os.urandom(32)
    m_old = make(keyring=MacaroonKeyring(old))
    rotated = MacaroonKeyring(new, [old])
    assert rotated.current_id == key_id(new) != key_id(old)
    assert auth(rotated).verify(m_old, client_ip="").kind is Kind.MACAROON
    m_new = make(keyring=rotated)
    assert Macaroon.deserialize(m_new).identifier.startswith(key_id(new) + ":")
    with pytest.raises(Unauthenticated, match="not minted with a secret of this server"):
        auth(MacaroonKeyring(old)).verify(m_new, client_ip="")


# -- wire format -----------------------------------------------------------------------------
def test_shape_test() -> None:
    m = make()
    assert looks_like_macaroon(m)
    assert looks_like_macaroon(base64.b64encode(base64.urlsafe_b64decode(m + "==")).decode())
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    for other in (jwt_like, "MDAx", "not a token at all, really", "A" * 40, ""):
        assert not looks_like_macaroon(other)


def _packet(key: bytes, value: bytes) -> bytes:
    return b"%04x" % (len(key) + len(value) + 6) + key + b" " + value + b"\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"0000" * 8,  # zero-length packet: pymacaroons' own parser would loop forever
        _packet(b"location", b"x") + b"0004",
        _packet(b"location", b"x") + _packet(b"identifier", b"i"),  # no signature
        _packet(b"identifier", b"i") + _packet(b"signature", b"short"),
        _packet(b"identifier", b"i") + _packet(b"cid", b"c") + _packet(b"vid", b"v")
        + _packet(b"cl", b"l") + _packet(b"signature", b"s" * 32),
        _packet(b"identifier", b"i") + _packet(b"bogus", b"c") + _packet(b"signature", b"s" * 32),
        _packet(b"identifier", b"i") + b"zzzz" + _packet(b"signature", b"s" * 32),
    ],
)  # fmt: skip
def test_strict_v1_parser(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_v1(raw)
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with pytest.raises(Unauthenticated):
        verify(token)


def test_recognised_macaroon_never_falls_through() -> None:
    chain = AuthChain([auth()])
    bad = extend(make(), "unknown:x")
    with pytest.raises(Unauthenticated):
        asyncio.run(chain.authenticate(Credentials(bearer=bad)))


# -- caveats and widening attempts -----------------------------------------------------------
def test_principal_from_admin_macaroon() -> None:
    p = verify(make("/data", frozenset({A.DOWNLOAD, A.LIST})))
    assert p.kind is Kind.MACAROON and p.via == ("admin",) and p.expires_at == NOW + 3600
    assert p.restrictions == (Restriction(frozenset({A.DOWNLOAD, A.LIST}), (P("/data"),)),)
    assert allowed(p, Op.READ, "/data/x/y") and allowed(p, Op.LIST, "/data")
    assert not allowed(p, Op.READ, "/database") and not allowed(p, Op.CREATE, "/data/n")
    assert allowed(p, Op.STAT, "/") and not allowed(p, Op.LIST, "/")


def test_client_side_caveats_only_narrow() -> None:
    m = make("/data", frozenset({A.DOWNLOAD}))
    wider = verify(extend(m, "activity:DOWNLOAD,UPLOAD,DELETE,MANAGE"))
    assert wider.restrictions[-1].activities == {A.DOWNLOAD}
    assert not allowed(wider, Op.CREATE, "/data/x")
    two_paths = verify(extend(m, "path:/other"))
    assert not allowed(two_paths, Op.READ, "/data/f") and not allowed(two_paths, Op.READ, "/other")
    inner = verify(extend(m, "path:/data/sub"))
    assert allowed(inner, Op.READ, "/data/sub/f") and not allowed(inner, Op.READ, "/data/f")
    assert verify(extend(m, "before:2000-01-01T00:00:00Z", "ip:0.0.0.0/0"), now=0).expires_at


@pytest.mark.parametrize(
    "caveat",
    [
        "unknown:1",
        "nocolon",
        "root:/",
        "activity:FLY",
        "activity:",
        "path:relative",
        "path:/data/../etc",
        "path:/data/%2e%2e/etc",
        "path:/a%2Fb",
        "before:soon",
        "ip:not-an-ip",
        "ip:10.0.0.0/8",
        "id:" + MintedFor.admin("intruder").encode(),
        "before:" + format_instant(NOW - 120),
    ],
)
def test_bad_or_unmet_caveats_are_401(caveat: str) -> None:
    with pytest.raises(Unauthenticated, match="macaroon rejected"):
        verify(extend(make(), caveat))


def test_expiry_with_leeway_and_fractions() -> None:
    m = make(expires_at=NOW)
    assert verify(m, now=NOW + 59).expires_at == NOW
    with pytest.raises(Unauthenticated, match="expired"):
        verify(m, now=NOW + 60)
    frac = extend(make(), "before:" + format_instant(NOW + 10)[:-1] + ".750Z")
    assert verify(frac).expires_at == NOW + 10.75


def test_tampered_or_foreign() -> None:
    m = make()
    mac = Macaroon.deserialize(m)
    mac.signature = "11" * 32
    with pytest.raises(Unauthenticated, match="signature"):
        verify(mac.serialize())
    # an unmet caveat on a forgery is reported as a bad signature: the forger learns nothing
    mac = Macaroon.deserialize(extend(m, "ip:10.0.0.0/8"))
    mac.signature = "11" * 32
    with pytest.raises(Unauthenticated, match="signature"):
        verify(mac.serialize())
    other = make(keyring=MacaroonKeyring(b"o" * 32))
    with pytest.raises(Unauthenticated, match="not minted"):
        verify(other)
    forged = Macaroon(location="segate", identifier=f"{KEYRING.current_id}:abcdefgh", key=b"k" * 32)
    forged.add_first_party_caveat("id:" + MintedFor.admin().encode())
    with pytest.raises(Unauthenticated, match="signature"):
        verify(forged.serialize())


def test_id_caveat_must_come_first() -> None:
    mac = Macaroon(location="segate", identifier=f"{KEYRING.current_id}:abcdefgh", key=SECRET)
    mac.add_first_party_caveat("activity:DOWNLOAD")
    mac.add_first_party_caveat("id:" + MintedFor.admin().encode())
    with pytest.raises(Unauthenticated, match="no id caveat"):
        verify(mac.serialize())
    bare = Macaroon(location="segate", identifier=f"{KEYRING.current_id}:abcdefgh", key=SECRET)
    with pytest.raises(Unauthenticated, match="no id caveat"):
        verify(bare.serialize())


def test_ip_caveat() -> None:
    m = make(networks=("127.0.0.0/8", "2001:db8::/32"))
    assert verify(m, ip="127.0.0.1") and verify(m, ip="::ffff:127.0.0.9")
    assert verify(m, ip="2001:db8::5")
    for ip in ("10.0.0.1", "", "garbage", "::1"):
        with pytest.raises(Unauthenticated, match="ip caveat"):
            verify(m, ip=ip)


def test_caveat_paths_decode_once() -> None:
    assert parse_caveat_path("/a%20b/%2541") == P("/a b/%41")
    m = make("/a b/%41")
    assert "path:/a%20b/%2541" in [c.caveat_id for c in Macaroon.deserialize(m).caveats]
    assert verify(m).restrictions[-1].paths == (P("/a b/%41"),)


def test_checker_collects_facts() -> None:
    c = CaveatChecker(now=NOW, leeway=60, client_ip="127.0.0.1")
    assert c("id:" + MintedFor.admin().encode())
    assert c("activity:DOWNLOAD,LIST") and c("activity:LIST,UPLOAD")
    assert c("path:/a") and c("path:/a/b")
    assert not c("nope:1") and c.failure == "unknown caveat 'nope'"
    assert c.activities == {A.LIST} and c.paths == [P("/a"), P("/a/b")]


# -- identity caveat and use-time judgement --------------------------------------------------
def test_minted_for_roundtrip() -> None:
    jwt_user = Principal(
        kind=Kind.JWT,
        subject="u1",
        issuer="https://iss",
        groups=("/vo", "/vo/prod"),
        capabilities=(Grant(Permission.READ, P("/d"), True), Grant(Permission.CREATE, P("/d/u"))),
        restrictions=(Restriction(frozenset({A.UPLOAD}), (P("/d/u"),)),),
        expires_at=NOW + 10,
    )
    mf = MintedFor.of(jwt_user)
    assert MintedFor.decode(mf.encode()) == mf
    x509 = Principal(kind=Kind.X509, dn="/DC=test/CN=u", vo="vo", fqans=("/vo/Role=NULL",))
    mf2 = MintedFor.of(x509)
    assert MintedFor.decode(mf2.encode()) == mf2 and mf2.grants is None and mf2.kind == "x509"
    with pytest.raises(ValueError):
        MintedFor.of(Principal(kind=Kind.ANONYMOUS))


def test_carried_restrictions_and_grants() -> None:
    jwt_user = Principal(
        kind=Kind.JWT,
        subject="u1",
        issuer="https://iss",
        capabilities=(Grant(Permission.READ, P("/d")),),
    )
    p = verify(make("/d", frozenset({A.DOWNLOAD}), who=MintedFor.of(jwt_user)))
    assert p.via == ("jwt",) and p.issuer == "https://iss" and p.subject == "u1"
    assert p.capabilities == jwt_user.capabilities
    child = verify(make("/d/x", frozenset({A.DOWNLOAD, A.DELETE}), who=MintedFor.of(p)))
    assert child.via == ("jwt",) and len(child.restrictions) == 2
    assert allowed(child, Op.READ, "/d/x/f") and not allowed(child, Op.DELETE, "/d/x/f")
    assert not allowed(child, Op.READ, "/d/y")


def test_identity_macaroon_judged_by_rules_at_use_time() -> None:
    from segate.authz.policy import Rule

    user = Principal(kind=Kind.JWT, subject="u", issuer="https://iss", groups=("/vo",))
    p = verify(make("/d", frozenset({A.DOWNLOAD}), who=MintedFor.of(user)))
    assert p.capabilities is None
    rule = Rule(P("/d"), frozenset({Permission.READ}), ("group:/vo",))
    assert decide(p, Op.READ, P("/d/f"), Policy(rules=(rule,))).allowed
    assert not decide(p, Op.READ, P("/d/f"), Policy()).allowed


def test_b04_upload_macaroon() -> None:
    p = verify(make("/a/m/file", frozenset({A.UPLOAD})))
    assert allowed(p, Op.MKDIR, "/a/m") and allowed(p, Op.CREATE, "/a/m/file")
    assert not allowed(p, Op.MKDIR, "/a/m/file") and not allowed(p, Op.MKDIR, "/a/x")
    assert not allowed(p, Op.OVERWRITE, "/a/m/file")


def test_macaroon_is_never_in_error_messages() -> None:
    m = make()
    for bad in (m[:-6], extend(m, "x:1"), m + "AAAA", m.replace("M", "N", 1)):
        with pytest.raises(Unauthenticated) as info:
            verify(bad)
        assert m[-20:] not in str(info.value) and m[:30] not in str(info.value)
