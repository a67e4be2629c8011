"""VOMS AC parsing and validation (segate.auth.vomsac, segate.auth.voms): PROTOCOLS.md §5.2-5.3.

Real ACs come from voms-proxy-fake (testbed/pki.py); the unusual and broken ones are forged with
tests/x509_forge.py. Every rejection must name its reason (field report B13).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from segate import devpki
from segate.auth.pkix import CAStore, slash_dn
from segate.auth.voms import read_lsc, validate_ac, voms_attributes
from segate.auth.vomsac import (
    AC_EXTENSION_OID,
    AttributeCert,
    VomsError,
    find_ac_extension,
    parse_ac,
    parse_ac_extension,
)
from testbed import pki as tpki
from testbed.pki import TestPKI
from tests.x509_forge import NOW, SHA1_RSA, Ext, ac_extension, load_pem, make_ac, make_proxy

HOSTS = ("localhost", "localhost:8443")


@dataclass
class Keys:
    pki: TestPKI
    store: CAStore
    user: x509.Certificate
    user_key: rsa.RSAPrivateKey
    other: x509.Certificate
    voms: x509.Certificate
    voms_key: rsa.RSAPrivateKey
    rogue: x509.Certificate
    rogue_key: rsa.RSAPrivateKey
    ca: x509.Certificate


@pytest.fixture(scope="module")
def k(grid_pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    def both(c: Path, key: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        cert = x509.load_pem_x509_certificate(c.read_bytes())
        loaded = serialization.load_pem_private_key(key.read_bytes(), None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        return cert, loaded

    user, ukey = both(grid_pki.user_cert, grid_pki.user_key)
    voms, vkey = both(grid_pki.voms_cert, grid_pki.voms_key)
    rogue, rkey = both(grid_pki.rogue_voms_cert, grid_pki.rogue_voms_key)
    other = x509.load_pem_x509_certificate(grid_pki.other_user_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(grid_pki.ca_cert.read_bytes())
    return Keys(
        grid_pki, CAStore.load(grid_pki.ca_dir), user, ukey, other, voms, vkey, rogue, rkey, ca
    )


def chain_of(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def acs_of(path: Path) -> list[AttributeCert]:
    value = find_ac_extension(chain_of(path), 1)
    assert value is not None
    return parse_ac_extension(value)


def check(
    k: Keys, ac: AttributeCert, *, eec: x509.Certificate | None = None, **kw: object
) -> str | None:
    args: dict[str, object] = {
        "eec": eec or k.user,
        "vomsdir": k.pki.vomsdir,
        "store": k.store,
        "now": NOW,
        "local_hosts": HOSTS,
    }
    args.update(kw)
    return validate_ac(ac, **args)  # type: ignore[arg-type]


# -- parsing what voms-proxy-fake writes -----------------------------------------------------------
def test_parse_real_ac_and_what_voms_writes_as_holder(k: Keys) -> None:
    (ac,) = acs_of(k.pki.proxy_voms)
    assert (ac.vo, ac.host, ac.fqans) == ("testvo", "voms.localhost", tpki.FQANS)
    # voms-proxy-fake (like VOMS core) names the holder by the EEC's *subject* and serial
    assert ac.holder_serial == k.user.serial_number
    assert ac.holder_names == (k.user.subject.public_bytes(),)
    assert ac.holder_names != (k.user.issuer.public_bytes(),)
    assert ac.issuer_dn == tpki.VOMS_DN
    assert ac.aa_certs == (k.voms,)
    ski = k.voms.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ac.akid == ski.digest
    assert ac.signature_oid == ac.inner_signature_oid == "1.2.840.113549.1.1.11"
    assert ac.not_after - ac.not_before == dt.timedelta(hours=24)
    assert ac.problems == () and ac.targets == ()


def test_plain_proxy_has_no_ac(k: Keys) -> None:
    assert find_ac_extension(chain_of(k.pki.proxy_plain), 1) is None
    r = voms_attributes(
        chain_of(k.pki.proxy_plain), 1, vomsdir=k.pki.vomsdir, store=k.store, now=NOW
    )
    assert (r.vo, r.fqans, r.problems) == (None, (), ())


@pytest.mark.parametrize("bad", [b"", b"\x30\x00\x00", b"\x04\x03abc", b"\x30\x03\x30\x01\x00"])
def test_malformed_extension_is_a_voms_error(bad: bytes) -> None:
    with pytest.raises(VomsError):
        parse_ac_extension(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_voms_error(data: bytes) -> None:
    with contextlib.suppress(VomsError):
        parse_ac_extension(data)


# -- the proxies of the test PKI (B13) -------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "fqans", "problem"),
    [
        ("voms", tpki.FQANS, None),
        ("voms_user_only", ("/testvo",), None),
        ("limited", tpki.FQANS, None),
        ("expired_ac", (), "AC expired at"),
        ("rogue_ac", (), "rogue-voms.localhost does not match testvo/voms.localhost.lsc"),
    ],
)
def test_test_pki_proxies(k: Keys, name: str, fqans: tuple[str, ...], problem: str | None) -> None:
    r = voms_attributes(
        chain_of(k.pki.proxies[name]),
        1,
        vomsdir=k.pki.vomsdir,
        store=k.store,
        now=NOW,
        local_hosts=HOSTS,
    )
    assert r.fqans == fqans
    assert r.vo == ("testvo" if fqans else None)
    if problem is None:
        assert r.problems == () and r.not_after is not None
    else:
        assert len(r.problems) == 1 and problem in r.problems[0], r.problems
        assert r.problems[0].startswith("AC for testvo from voms.localhost: ")


def test_other_vo(k: Keys) -> None:
    chain = chain_of(k.pki.proxy_other_user)
    r = voms_attributes(chain, 1, vomsdir=k.pki.vomsdir, store=k.store, now=NOW)
    assert (r.vo, r.fqans, r.problems) == ("othervo", ("/othervo",), ())


# -- validation rules, one at a time ---------------------------------------------------------------
def test_time_window_has_leeway_only_before(k: Keys) -> None:
    (ac,) = acs_of(k.pki.proxy_voms)
    assert check(k, ac, now=ac.not_before - dt.timedelta(seconds=30)) is None
    assert "not valid before" in (check(k, ac, now=ac.not_before - dt.timedelta(minutes=5)) or "")
    assert check(k, ac, now=ac.not_after) is None
    assert "expired" in (check(k, ac, now=ac.not_after + dt.timedelta(seconds=1)) or "")


def test_vomsdir_required(k: Keys, tmp_path: Path) -> None:
    (ac,) = acs_of(k.pki.proxy_voms)
    assert check(k, ac, vomsdir=None) == "no [x509] vomsdir configured"
    assert "not trusted" in (check(k, ac, vomsdir=tmp_path) or "")


def test_holder_must_be_this_eec(k: Keys) -> None:
    (ac,) = acs_of(k.pki.proxy_voms)
    assert "AC holder is not /DC=test/DC=testbed/OU=Users/CN=Other User" in (
        check(k, ac, eec=k.other) or ""
    )
    forged = make_ac(k.user, k.voms, k.voms_key, holder_serial=k.user.serial_number + 1)
    assert "AC holder is not" in (check(k, parse_ac(forged)) or "")
    rfc_form = make_ac(k.user, k.voms, k.voms_key, holder_name=k.user.issuer)
    assert check(k, parse_ac(rfc_form)) is None  # RFC 5755 wording: the EEC's issuer


def test_aa_certificate_must_chain_to_ca_dir(k: Keys) -> None:
    (ac,) = acs_of(k.pki.proxy_voms)
    assert "AA certificate not trusted: no trusted issuer /DC=test/DC=testbed/CN=Testbed CA" in (
        check(k, ac, store=CAStore()) or ""
    )
    assert "AC embeds no AA certificate" in (check(k, replace(ac, aa_certs=())) or "")


def test_revoked_aa_certificate(k: Keys) -> None:
    ca_key = serialization.load_pem_private_key(k.pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    crl = devpki.make_crl(k.ca, ca_key, revoked=(k.voms.serial_number,))
    store = replace(k.store, crls={k.ca.subject.public_bytes(): (crl,)})
    (ac,) = acs_of(k.pki.proxy_voms)
    assert "voms.localhost is revoked" in (check(k, ac, store=store) or "")


def test_tampered_signature(k: Keys) -> None:
    (ac,) = acs_of(k.pki.proxy_voms)
    bad = bytearray(ac.signature)
    bad[10] ^= 1
    assert "AC signature does not verify" in (check(k, replace(ac, signature=bytes(bad))) or "")
    other_body = ac.signed_bytes.replace(b"production", b"prodXction")
    assert "AC signature does not verify" in (check(k, replace(ac, signed_bytes=other_body)) or "")


def test_signer_must_be_the_ac_issuer(k: Keys) -> None:
    forged = make_ac(k.user, k.voms, k.voms_key, issuer_name=k.rogue.subject)
    assert "is not the AA certificate" in (check(k, parse_ac(forged)) or "")
    # the rogue server signs, but embeds the listed VOMS certificate: signature fails
    forged = make_ac(k.user, k.rogue, k.rogue_key, aa_certs=[k.voms], issuer_name=k.voms.subject)
    problem = check(k, parse_ac(forged)) or ""
    assert "AuthorityKeyIdentifier" in problem or "does not verify" in problem


def test_akid_must_match(k: Keys) -> None:
    forged = make_ac(k.user, k.voms, k.voms_key, akid=b"\x01" * 20)
    assert "AuthorityKeyIdentifier" in (check(k, parse_ac(forged)) or "")


def test_pem_fallback(k: Keys, tmp_path: Path) -> None:
    vomsdir = tmp_path / "vomsdir"
    (vomsdir / "testvo").mkdir(parents=True)
    (ac,) = acs_of(k.pki.proxy_voms)
    assert "not trusted" in (check(k, ac, vomsdir=vomsdir) or "")
    shutil.copy(k.pki.voms_cert, vomsdir / "testvo" / "voms.localhost.pem")
    assert check(k, replace(ac, aa_certs=()), vomsdir=vomsdir) is None
    shutil.copy(k.pki.rogue_voms_cert, vomsdir / "testvo" / "voms.localhost.pem")
    assert "no AA certificate in testvo/voms.localhost.pem" in (check(k, ac, vomsdir=vomsdir) or "")


def test_lsc_alternatives_and_comments(k: Keys, tmp_path: Path) -> None:
    lsc = tmp_path / "testvo" / "voms.localhost.lsc"
    lsc.parent.mkdir()
    lsc.write_text(
        f"# rotated\n{tpki.ROGUE_VOMS_DN}\n{tpki.CA_DN}\n------ NEXT CHAIN ------\n"
        f"{tpki.VOMS_DN.replace('voms.localhost', 'VOMS.localhost')}\n{tpki.CA_DN}\n"
    )
    assert read_lsc(lsc) == [
        [tpki.ROGUE_VOMS_DN, tpki.CA_DN],
        [tpki.VOMS_DN.replace("voms.localhost", "VOMS.localhost"), tpki.CA_DN],
    ]
    (ac,) = acs_of(k.pki.proxy_voms)
    assert check(k, ac, vomsdir=tmp_path) is None  # second chain, case-insensitive
    lsc.write_text(f"{tpki.VOMS_DN}\n")  # one line is not enough
    assert "does not match" in (check(k, ac, vomsdir=tmp_path) or "")
    lsc.write_text(f"{tpki.VOMS_DN}\n/DC=test/CN=Other CA\n")
    assert "does not match" in (check(k, ac, vomsdir=tmp_path) or "")


def test_targets(k: Keys) -> None:
    ours = parse_ac(make_ac(k.user, k.voms, k.voms_key, targets=["other.test", "localhost"]))
    assert ours.targets == ("other.test", "localhost")
    assert check(k, ours) is None
    uri = parse_ac(make_ac(k.user, k.voms, k.voms_key, targets=["https://LOCALHOST:8443/"]))
    assert check(k, uri) is None
    theirs = parse_ac(make_ac(k.user, k.voms, k.voms_key, targets=["other.test"]))
    assert check(k, theirs) == "AC targets do not name this server"


@pytest.mark.parametrize(
    ("kw", "problem"),
    [
        ({"extensions": [Ext("1.2.3.4", b"\x05\x00", True)]}, "unknown critical extension 1.2.3.4"),
        ({"critical_akid": True}, "AuthorityKeyIdentifier extension is critical"),
        ({"fqans": ["/othervo/Role=NULL"]}, "is not in VO testvo"),
        ({"fqans": ["/testvo/Role=x/g"]}, "malformed FQAN"),
        ({"fqans": ["/testvo/Capability=NULL/Role=x"]}, "malformed FQAN"),
        ({"fqans": ["testvo"]}, "is not in VO testvo"),
    ],
)
def test_broken_acs_are_refused(k: Keys, kw: dict[str, object], problem: str) -> None:
    ac = parse_ac(make_ac(k.user, k.voms, k.voms_key, **kw))  # type: ignore[arg-type]
    assert problem in (check(k, ac) or ""), check(k, ac)


def test_noncritical_unknown_extension_and_sha1_are_accepted(k: Keys) -> None:
    ac = make_ac(k.user, k.voms, k.voms_key, extensions=[Ext("1.2.3.4", b"\x05\x00")])
    assert check(k, parse_ac(ac)) is None
    assert check(k, parse_ac(make_ac(k.user, k.voms, k.voms_key, sig_oid=SHA1_RSA))) is None


@pytest.mark.parametrize("authority", ["testvo:/x", "../x://voms.localhost:1", "testvo://a/b:1"])
def test_policy_authority_names_plain_files(k: Keys, authority: str) -> None:
    with pytest.raises(VomsError, match="bad policy authority"):
        parse_ac(make_ac(k.user, k.voms, k.voms_key, authority=authority))


# -- where the AC is found and how several combine -------------------------------------------------
def test_ac_in_a_non_leaf_proxy(k: Keys) -> None:
    """A proxy of a VOMS proxy: the AC is in the middle certificate (PROTOCOLS §8 item 23)."""
    voms_proxy, voms_proxy_key = load_pem(k.pki.proxy_voms)
    leaf, _ = make_proxy(voms_proxy[0], voms_proxy_key, hours=2)
    chain = [leaf, *voms_proxy]
    assert find_ac_extension(chain, 2) is not None and find_ac_extension(chain[:1], 0) is None
    r = voms_attributes(chain, 2, vomsdir=k.pki.vomsdir, store=k.store, now=NOW)
    assert r.fqans == tpki.FQANS and r.problems == ()


def test_leaf_ac_wins_over_an_earlier_one(k: Keys) -> None:
    voms_proxy, voms_proxy_key = load_pem(k.pki.proxy_voms)
    newer = make_ac(k.user, k.voms, k.voms_key, fqans=["/testvo/g1"])
    leaf, _ = make_proxy(voms_proxy[0], voms_proxy_key, extensions=[ac_extension(newer)])
    r = voms_attributes([leaf, *voms_proxy], 2, vomsdir=k.pki.vomsdir, store=k.store, now=NOW)
    assert r.fqans == ("/testvo/g1",)


def test_several_acs_bad_ones_skipped(k: Keys) -> None:
    bad = make_ac(k.user, k.rogue, k.rogue_key)
    good = make_ac(k.user, k.voms, k.voms_key, fqans=["/testvo/a", "/testvo/a/Role=r"])
    soon = NOW + dt.timedelta(hours=1)
    other = make_ac(
        k.user,
        k.voms,
        k.voms_key,
        fqans=["/othervo", "/testvo/a"],
        authority="othervo://voms.localhost:15001",
        not_after=soon,
    )
    proxy, _ = make_proxy(k.user, k.user_key, extensions=[ac_extension(bad, good, other)])
    r = voms_attributes([proxy, k.user, k.ca], 1, vomsdir=k.pki.vomsdir, store=k.store, now=NOW)
    assert len(r.problems) == 2  # the rogue AC, and othervo's AC asserting a testvo FQAN
    assert r.vo == "testvo" and r.fqans == ("/testvo/a", "/testvo/a/Role=r")
    assert r.not_after == pytest.approx(parse_ac(good).not_after.timestamp())


def test_extension_oid_constant_matches_testbed() -> None:
    assert AC_EXTENSION_OID == tpki.VOMS_EXTENSION_OID


def test_slash_dn_of_voms_cert(k: Keys) -> None:
    assert slash_dn(k.voms.subject) == tpki.VOMS_DN
