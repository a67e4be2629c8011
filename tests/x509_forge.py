"""Hand-made RFC 3820 proxies and RFC 5755 VOMS ACs for the cases voms-proxy-fake cannot make.

voms-proxy-fake (testbed/pki.py) makes the realistic proxies; this module makes the broken or
unusual ones: independent/unknown policy languages, path-length violations, proxies of proxies
with the AC in a non-leaf certificate, ACs with targets, critical extensions, other holders,
other signers. Everything is built with cryptography and pyasn1(-modules) at test time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ
from pyasn1_modules import rfc3820, rfc5280, rfc5755

from segate.auth.vomsac import (
    AA_CERTS_OID,
    AC_EXTENSION_OID,
    AKID_OID,
    FQAN_ATTRIBUTE_OID,
    NO_REV_AVAIL_OID,
    TARGETS_OID,
)
from segate.auth.x509 import PPL_INHERIT_ALL, PROXY_CERT_INFO_OID
from tests.grid_pki import shared_grid_pki

shared_grid_pki()  # build the session's PKI first: its ACs must not start after NOW
NOW = dt.datetime.now(dt.UTC)
SHA256_RSA = "1.2.840.113549.1.1.11"
SHA1_RSA = "1.2.840.113549.1.1.5"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # shared: speed


def load_pem(path: Path) -> tuple[list[x509.Certificate], rsa.RSAPrivateKey]:
    """Certificates and the key of a PEM file (a proxy file, or cert+key concatenated)."""
    data = path.read_bytes()
    key = serialization.load_pem_private_key(data, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return x509.load_pem_x509_certificates(data), key


def proxy_cert_info(policy: str = PPL_INHERIT_ALL, path_len: int | None = None) -> bytes:
    pci = rfc3820.ProxyCertInfoExtension()
    if path_len is not None:
        pci["pCPathLenConstraint"] = path_len
    pci["proxyPolicy"]["policyLanguage"] = univ.ObjectIdentifier(policy)
    return bytes(encoder.encode(pci))


@dataclass
class Ext:
    oid: str
    value: bytes
    critical: bool = False


def make_proxy(
    issuer: x509.Certificate,
    issuer_key: rsa.RSAPrivateKey,
    *,
    policy: str | None = PPL_INHERIT_ALL,
    path_len: int | None = None,
    cn: str = "4242",
    subject: x509.Name | None = None,
    hours: float = 12,
    extensions: Sequence[Ext] = (),
    ca: bool = False,
    san: bool = False,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An RFC 3820 proxy of ``issuer`` (``policy=None``: no proxyCertInfo, e.g. legacy)."""
    name = subject or x509.Name(
        [
            *issuer.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        ]
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(hours=hours))
    )
    if policy is not None:
        b = b.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(PROXY_CERT_INFO_OID), proxy_cert_info(policy, path_len)
            ),
            critical=True,
        )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("x.test")]), critical=False)
    for e in extensions:
        b = b.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(e.oid), e.value), critical=e.critical
        )
    return b.sign(issuer_key, hashes.SHA256()), _KEY


# -- ACs -------------------------------------------------------------------------------------------
class _Nested(univ.SequenceOf):  # type: ignore[misc]
    componentType = univ.SequenceOf(componentType=univ.Any())


def nested_sequence(items: Sequence[Sequence[bytes]]) -> bytes:
    """DER ``SEQUENCE OF SEQUENCE OF <raw DER>``: the AC list and the AA-certificate list."""
    outer = _Nested()
    for i, inner_items in enumerate(items):
        inner = outer.getComponentByPosition(i)
        for j, raw in enumerate(inner_items):
            inner.setComponentByPosition(j, univ.Any(raw))
    return bytes(encoder.encode(outer))


def ac_extension(*acs: bytes) -> Ext:
    return Ext(AC_EXTENSION_OID, nested_sequence([list(acs)]))


def _set_name(general_names: object, name: x509.Name) -> None:
    rdns, _ = decoder.decode(name.public_bytes(), asn1Spec=rfc5280.RDNSequence())
    gn = general_names.getComponentByPosition(0)  # type: ignore[attr-defined]
    gn["directoryName"]["rdnSequence"] = rdns


def make_ac(
    holder: x509.Certificate,
    signer: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
    *,
    fqans: Sequence[str] = ("/testvo/Role=NULL/Capability=NULL",),
    authority: str = "testvo://voms.localhost:15000",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    holder_name: x509.Name | None = None,
    holder_serial: int | None = None,
    issuer_name: x509.Name | None = None,
    aa_certs: Sequence[x509.Certificate] | None = None,
    akid: bytes | None = None,
    targets: Sequence[str] | None = None,
    extensions: Sequence[Ext] = (),
    critical_akid: bool = False,
    sig_oid: str = SHA256_RSA,
) -> bytes:
    """A VOMS-style AC (as VOMS writes it: holder issuer = holder *subject*), DER."""
    info = rfc5755.AttributeCertificateInfo()
    info["version"] = 1
    base = info["holder"]["baseCertificateID"]
    _set_name(base["issuer"], holder_name or holder.subject)
    base["serial"] = holder.serial_number if holder_serial is None else holder_serial
    _set_name(info["issuer"]["v2Form"]["issuerName"], issuer_name or signer.subject)
    info["signature"]["algorithm"] = univ.ObjectIdentifier(sig_oid)
    info["signature"]["parameters"] = univ.Any(b"\x05\x00")
    info["serialNumber"] = 7
    period = info["attrCertValidityPeriod"]
    start = not_before or NOW - dt.timedelta(minutes=5)
    end = not_after or NOW + dt.timedelta(hours=12)
    period["notBeforeTime"] = start.strftime("%Y%m%d%H%M%SZ")
    period["notAfterTime"] = end.strftime("%Y%m%d%H%M%SZ")

    ietf = rfc5755.IetfAttrSyntax()
    ietf["policyAuthority"][0]["uniformResourceIdentifier"] = authority
    for i, f in enumerate(fqans):
        ietf["values"][i]["octets"] = f.encode()
    attr = info["attributes"][0]
    attr["type"] = univ.ObjectIdentifier(FQAN_ATTRIBUTE_OID)
    attr["values"][0] = univ.Any(encoder.encode(ietf))

    exts: list[Ext] = []
    certs = [signer] if aa_certs is None else list(aa_certs)
    if certs:
        exts.append(
            Ext(
                AA_CERTS_OID,
                nested_sequence([[c.public_bytes(serialization.Encoding.DER) for c in certs]]),
            )
        )
    exts.append(Ext(NO_REV_AVAIL_OID, b"\x05\x00"))
    kid = akid
    if kid is None:
        ski = signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        kid = ski.digest
    aki = rfc5280.AuthorityKeyIdentifier()
    aki["keyIdentifier"] = kid
    exts.append(Ext(AKID_OID, encoder.encode(aki), critical_akid))
    if targets is not None:
        ti = univ.SequenceOf(componentType=rfc5755.Targets())
        for i, t in enumerate(targets):
            ti[0][i]["targetName"]["uniformResourceIdentifier"] = t
        exts.append(Ext(TARGETS_OID, encoder.encode(ti), True))
    exts.extend(extensions)
    for i, e in enumerate(exts):
        ext = info["extensions"][i]
        ext["extnID"] = univ.ObjectIdentifier(e.oid)
        ext["critical"] = e.critical
        ext["extnValue"] = e.value

    tbs = encoder.encode(info)
    hash_alg = hashes.SHA1() if sig_oid == SHA1_RSA else hashes.SHA256()
    sig = signer_key.sign(tbs, padding.PKCS1v15(), hash_alg)
    ac = rfc5755.AttributeCertificate()
    ac["acinfo"] = info
    ac["signatureAlgorithm"]["algorithm"] = univ.ObjectIdentifier(sig_oid)
    ac["signatureAlgorithm"]["parameters"] = univ.Any(b"\x05\x00")
    ac["signatureValue"] = univ.BitString.fromOctetString(sig)
    return bytes(encoder.encode(ac))


def der_chain(*certs: x509.Certificate) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
