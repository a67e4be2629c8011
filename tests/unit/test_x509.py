"""X509 chains -> Principal (segate.auth.x509, segate.auth.pkix): RFC 3820, PROTOCOLS.md §5.1.

Real proxies come from voms-proxy-fake (testbed/pki.py); broken ones from tests/x509_forge.py.
TLS-level refusals (expired, untrusted, revoked) are in tests/integration/test_x509_inprocess.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from segate.auth.chain import Credentials
from segate.auth.pkix import dn_key, slash_dn
from segate.auth.principal import Kind
from segate.auth.x509 import (
    PPL_INDEPENDENT,
    PPL_LIMITED,
    X509Authenticator,
    analyse_chain,
    parse_grid_mapfile,
    proxy_info,
)
from segate.config import X509Config
from segate.errors import Unauthenticated
from testbed import pki as tpki
from testbed.pki import TestPKI
from tests.x509_forge import NOW, Ext, ac_extension, der_chain, load_pem, make_ac, make_proxy

NAME = x509.NameAttribute


@dataclass
class Clock:
    t: float = NOW.timestamp()

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def user(grid_pki: TestPKI) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = serialization.load_pem_private_key(grid_pki.user_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return x509.load_pem_x509_certificate(grid_pki.user_cert.read_bytes()), key


@pytest.fixture(scope="module")
def ca(grid_pki: TestPKI) -> x509.Certificate:
    return x509.load_pem_x509_certificate(grid_pki.ca_cert.read_bytes())


def chain_of(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def authn(pki: TestPKI, clock: Clock | None = None, **cfg: object) -> X509Authenticator:
    conf = X509Config(vomsdir=pki.vomsdir, **cfg)  # type: ignore[arg-type]
    return X509Authenticator(
        conf, ca_dir=pki.ca_dir, local_hosts=["localhost"], clock=clock or Clock()
    )


def creds_of(*certs: x509.Certificate) -> Credentials:
    return Credentials(peer_chain=der_chain(*certs))


# -- DNs ------------------------------------------------------------------------------------------
def test_slash_dn_forms() -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([NAME(NameOID.COUNTRY_NAME, "CH")]),
            x509.RelativeDistinguishedName([NAME(NameOID.ORGANIZATION_NAME, "CERN")]),
            x509.RelativeDistinguishedName(
                [NAME(NameOID.ORGANIZATIONAL_UNIT_NAME, "A"), NAME(NameOID.USER_ID, "u1")]
            ),
            x509.RelativeDistinguishedName([NAME(NameOID.EMAIL_ADDRESS, "a@b.c")]),
            x509.RelativeDistinguishedName([NAME(NameOID.COMMON_NAME, "Jürgen/x")]),
            x509.RelativeDistinguishedName([NAME(x509.ObjectIdentifier("1.2.3.4"), "z")]),
        ]
    )
    assert slash_dn(name) == (
        "/C=CH/O=CERN/OU=A/UID=u1/emailAddress=a@b.c/CN=J\\xC3\\xBCrgen/x/1.2.3.4=z"
    )


def test_dn_key_folds_legacy_spellings() -> None:
    assert dn_key("/C=CH/Email=a@b.c/USERID=x") == dn_key("/C=ch/emailAddress=A@B.C/UID=x")
    assert dn_key("/CN=a") != dn_key("/CN=b")


# -- chains ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "dn", "limited"),
    [
        ("voms", tpki.USER_DN, False),
        ("plain", tpki.USER_DN, False),
        ("limited", tpki.USER_DN, True),
        ("other_user", tpki.OTHER_USER_DN, False),
    ],
)
def test_real_proxies(
    grid_pki: TestPKI, ca: x509.Certificate, name: str, dn: str, limited: bool
) -> None:
    chain = [*chain_of(grid_pki.proxies[name]), ca]
    facts = analyse_chain(chain)
    assert (facts.eec_index, facts.dn, facts.limited) == (1, dn, limited)
    assert facts.not_after == min(c.not_valid_after_utc for c in chain).timestamp()
    info = proxy_info(chain[0], chain[1])
    assert info is not None and not info.legacy
    assert info.policy == (PPL_LIMITED if limited else "1.3.6.1.5.5.7.21.1")


def test_user_certificate_alone(
    user: tuple[x509.Certificate, rsa.RSAPrivateKey], ca: x509.Certificate
) -> None:
    facts = analyse_chain([user[0], ca])
    assert (facts.eec_index, facts.dn, facts.limited) == (0, tpki.USER_DN, False)


def test_proxy_of_a_limited_proxy_is_limited(grid_pki: TestPKI) -> None:
    certs, key = load_pem(grid_pki.proxy_limited)
    leaf, _ = make_proxy(certs[0], key)
    facts = analyse_chain([leaf, *certs])
    assert (facts.eec_index, facts.limited) == (2, True)


def test_legacy_proxy_is_recognised(user: tuple[x509.Certificate, rsa.RSAPrivateKey]) -> None:
    for cn, limited in (("proxy", False), ("limited proxy", True)):
        legacy, _ = make_proxy(*user, policy=None, cn=cn)
        info = proxy_info(legacy, user[0])
        assert info is not None and info.legacy
        facts = analyse_chain([legacy, user[0]])
        assert (facts.eec_index, facts.dn, facts.limited) == (1, tpki.USER_DN, limited)
    not_proxy, _ = make_proxy(*user, policy=None, cn="Somebody")
    assert proxy_info(not_proxy, user[0]) is None


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"policy": PPL_INDEPENDENT}, "independent proxies"),
        ({"policy": "1.2.3.4.5"}, "unknown proxy policy language 1.2.3.4.5"),
        ({"policy": "1.3.6.1.5.5.7.21.0"}, "unknown proxy policy language"),
        ({"ca": True}, "proxy certificate is a CA"),
        ({"san": True}, "alternative name"),
        (
            {"extensions": [Ext("1.3.6.1.4.1.3536.1.222", b"\x30\x00", False)], "policy": None},
            "GT3 draft proxies",
        ),
    ],
)
def test_broken_proxies_are_refused(
    user: tuple[x509.Certificate, rsa.RSAPrivateKey], kw: dict[str, object], reason: str
) -> None:
    proxy, _ = make_proxy(*user, **kw)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match=reason) as err:
        analyse_chain([proxy, user[0]])
    assert err.value.status == 401
    assert err.value.headers["WWW-Authenticate"] == 'Bearer realm="segate"'


def test_proxy_subject_rules(user: tuple[x509.Certificate, rsa.RSAPrivateKey]) -> None:
    extra = x509.RelativeDistinguishedName([NAME(NameOID.COMMON_NAME, "1")])
    two_cns = x509.Name([*user[0].subject.rdns, extra, extra])
    for subject in (two_cns, x509.Name([*list(user[0].subject.rdns)[:-1], extra])):
        proxy, _ = make_proxy(*user, subject=subject)
        with pytest.raises(Unauthenticated, match="subject plus one CN"):
            analyse_chain([proxy, user[0]])
    ou = x509.RelativeDistinguishedName([NAME(NameOID.ORGANIZATIONAL_UNIT_NAME, "1")])
    proxy, _ = make_proxy(*user, subject=x509.Name([*user[0].subject.rdns, ou]))
    with pytest.raises(Unauthenticated, match="subject plus one CN"):
        analyse_chain([proxy, user[0]])


def test_proxy_path_length(user: tuple[x509.Certificate, rsa.RSAPrivateKey]) -> None:
    p1, k1 = make_proxy(*user, path_len=0)
    p2, _ = make_proxy(p1, k1)
    with pytest.raises(Unauthenticated, match="path length"):
        analyse_chain([p2, p1, user[0]])
    p1, k1 = make_proxy(*user, path_len=1)
    p2, _ = make_proxy(p1, k1)
    assert analyse_chain([p2, p1, user[0]]).eec_index == 2


def test_chain_shape_rules(
    grid_pki: TestPKI, user: tuple[x509.Certificate, rsa.RSAPrivateKey], ca: x509.Certificate
) -> None:
    proxy, _ = make_proxy(*user)
    with pytest.raises(Unauthenticated, match="without its issuer"):
        analyse_chain([proxy])
    other = chain_of(grid_pki.proxy_other_user)[1]
    with pytest.raises(Unauthenticated, match="not issued by the next certificate"):
        analyse_chain([proxy, other])
    with pytest.raises(Unauthenticated, match="a CA certificate is not a client identity"):
        analyse_chain([ca])
    with pytest.raises(Unauthenticated, match="proxy certificate above"):
        analyse_chain([user[0], proxy])


# -- the authenticator ----------------------------------------------------------------------------
async def test_principal_from_voms_proxy(grid_pki: TestPKI, ca: x509.Certificate) -> None:
    chain = [*chain_of(grid_pki.proxy_voms), ca]
    p = await authn(grid_pki).authenticate(creds_of(*chain))
    assert (p.kind, p.subject, p.dn, p.vo, p.fqans) == (
        Kind.X509,
        tpki.USER_DN,
        tpki.USER_DN,
        "testvo",
        tpki.FQANS,
    )
    assert not p.limited_proxy and p.capabilities is None and p.label() == tpki.USER_DN
    ac_end = chain[0].not_valid_after_utc.timestamp()  # AC and proxy: both 24 h
    assert p.expires_at is not None and abs(p.expires_at - ac_end) < 600


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("rogue_ac", "does not match testvo/voms.localhost.lsc"),
        ("expired_ac", "AC expired at"),
    ],
)
async def test_bad_ac_leaves_dn_only_and_logs_why(
    grid_pki: TestPKI, caplog: pytest.LogCaptureFixture, name: str, why: str
) -> None:
    caplog.set_level(logging.WARNING, logger="segate.auth.x509")
    chain = chain_of(grid_pki.proxies[name])
    p = await authn(grid_pki).authenticate(creds_of(*chain))
    assert (p.dn, p.vo, p.fqans) == (tpki.USER_DN, None, ())
    assert p.expires_at == min(c.not_valid_after_utc for c in chain).timestamp()
    (record,) = [r for r in caplog.records if r.name == "segate.auth.x509"]
    msg = record.getMessage()
    assert msg.startswith(f"X509 {tpki.USER_DN}: VOMS attributes not accepted: AC for testvo")
    assert why in msg and "BEGIN" not in msg


async def test_plain_proxy_and_no_vomsdir(
    grid_pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="segate.auth.x509")
    p = await authn(grid_pki).authenticate(creds_of(*chain_of(grid_pki.proxy_plain)))
    assert (p.dn, p.fqans) == (tpki.USER_DN, ()) and not caplog.records
    auth = X509Authenticator(X509Config(), ca_dir=grid_pki.ca_dir)
    p = await auth.authenticate(creds_of(*chain_of(grid_pki.proxy_voms)))
    assert p.fqans == () and "no [x509] vomsdir configured" in caplog.text


async def test_limited_proxies_policy(grid_pki: TestPKI) -> None:
    creds = creds_of(*chain_of(grid_pki.proxy_limited))
    p = await authn(grid_pki).authenticate(creds)
    assert p.limited_proxy and p.fqans == tpki.FQANS
    with pytest.raises(Unauthenticated, match="limited proxies are not accepted"):
        await authn(grid_pki, allow_limited_proxies=False).authenticate(creds)


async def test_cache_hits_and_expiries(grid_pki: TestPKI, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    auth = authn(grid_pki, clock)
    chain = chain_of(grid_pki.proxy_voms_user_only)  # proxy 12 h, AC 12 h
    calls = []
    original = auth._evaluate

    def counting(chain_der: tuple[bytes, ...], now: float) -> object:
        calls.append(now)
        return original(chain_der, now)

    monkeypatch.setattr(auth, "_evaluate", counting)
    first = auth.principal_for(der_chain(*chain))
    assert auth.principal_for(der_chain(*chain)) is first and len(calls) == 1
    clock.t += 301  # at most 5 minutes
    assert auth.principal_for(der_chain(*chain)) == first and len(calls) == 2
    assert first.expires_at is not None
    clock.t = first.expires_at + 1  # chain and AC over: a kept-alive connection is refused
    with pytest.raises(Unauthenticated, match="chain has expired"):
        auth.principal_for(der_chain(*chain))


async def test_cache_respects_ac_expiry(
    grid_pki: TestPKI, user: tuple[x509.Certificate, rsa.RSAPrivateKey]
) -> None:
    voms = x509.load_pem_x509_certificate(grid_pki.voms_cert.read_bytes())
    vkey = serialization.load_pem_private_key(grid_pki.voms_key.read_bytes(), None)
    assert isinstance(vkey, rsa.RSAPrivateKey)
    ac = make_ac(user[0], voms, vkey, not_after=NOW + dt.timedelta(minutes=2))
    proxy, _ = make_proxy(*user, extensions=[ac_extension(ac)])
    clock = Clock()
    auth = authn(grid_pki, clock)
    chain = der_chain(proxy, user[0])
    p = auth.principal_for(chain)
    assert p.fqans and p.expires_at is not None and p.expires_at < clock.t + 180
    clock.t += 150  # AC over, proxy still valid: DN only, expiry back to the chain's
    p2 = auth.principal_for(chain)
    assert p2.fqans == () and p2.expires_at == proxy.not_valid_after_utc.timestamp()


async def test_cache_is_bounded(
    grid_pki: TestPKI, user: tuple[x509.Certificate, rsa.RSAPrivateKey]
) -> None:
    auth = authn(grid_pki)
    auth.cache_size = 3
    for i in range(6):
        proxy, _ = make_proxy(*user, cn=str(i))
        auth.principal_for(der_chain(proxy, user[0]))
    assert len(auth._cache) == 3


def test_grid_mapfile_parsing() -> None:
    text = (
        "# comment\n"
        '"/DC=test/DC=testbed/OU=Users/CN=Test User" tuser,other\n'
        "/DC=test/CN=nospace  acct2\n"
        '"/testvo/Role=production" prod\n'
        '"/DC=test/CN=no account"\n'
        '"/DC=test/CN=broken\n'
        "\n"
    )
    assert parse_grid_mapfile(text) == {
        dn_key(tpki.USER_DN): "tuser",
        dn_key("/DC=test/CN=nospace"): "acct2",
    }


async def test_dn_map_sets_subject_and_reloads(grid_pki: TestPKI, tmp_path: Path) -> None:
    mapfile = tmp_path / "grid-mapfile"
    mapfile.write_text(f'"{tpki.USER_DN}" tuser\n')
    auth = authn(grid_pki, dn_map=mapfile)
    assert auth.dn_map is not None
    p = auth.principal_for(der_chain(*chain_of(grid_pki.proxy_plain)))
    assert (p.subject, p.dn) == ("tuser", tpki.USER_DN)
    other = auth.principal_for(der_chain(*chain_of(grid_pki.proxy_other_user)))
    assert other.subject == other.dn == tpki.OTHER_USER_DN
    mapfile.write_text(f'"{tpki.USER_DN}" renamed\n')
    os.utime(mapfile, (1, 1))
    auth.dn_map.check_every = 0
    assert auth.dn_map.lookup(tpki.USER_DN) == "renamed"


async def test_unreadable_der() -> None:
    auth = X509Authenticator(X509Config(), ca_dir=None)
    with pytest.raises(Unauthenticated, match="unreadable certificate"):
        auth.principal_for((b"\x30\x03\x02\x01\x00",))


def test_proxy_names_compare_like_openssl(user: tuple[x509.Certificate, rsa.RSAPrivateKey]) -> None:
    """A proxy maker that re-encodes the user's name (PrintableString for UTF8String) is fine."""
    printable = x509.name._ASN1Type.PrintableString
    rdns = [
        x509.RelativeDistinguishedName(
            [
                NAME(a.oid, a.value, _type=printable) if a.oid == NameOID.COMMON_NAME else a
                for a in rdn
            ]
        )
        for rdn in user[0].subject.rdns
    ]
    reencoded = x509.Name([*rdns, x509.RelativeDistinguishedName([NAME(NameOID.COMMON_NAME, "9")])])
    assert x509.Name(rdns).public_bytes() != user[0].subject.public_bytes()
    proxy, _ = make_proxy(*user, subject=reencoded)
    assert analyse_chain([proxy, user[0]]).dn == tpki.USER_DN
