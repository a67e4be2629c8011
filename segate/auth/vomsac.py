"""Parse VOMS attribute certificates (RFC 5755 ACs) out of RFC 3820 proxy certificates.

Structure (PROTOCOLS.md §5.2; voms-api-java ``VOMSConstants``/``VOMSACUtils``), parsed with pyasn1
and pyasn1-modules' RFC 5755 module - no hand-written DER parsing:

* Proxy extension 1.3.6.1.4.1.8005.100.100.5 = ``SEQUENCE OF SEQUENCE OF AttributeCertificate``;
  :func:`find_ac_extension` takes it from the first certificate, walking from the leaf towards
  the end-entity certificate, that has it (``LeafACLookupStrategy``).
* FQANs: attribute 1.3.6.1.4.1.8005.100.100.4, ``IetfAttrSyntax`` whose ``policyAuthority`` URI is
  ``<vo>://<host>:<port>`` and whose values are OCTET STRING FQANs (kept in order). An AC without
  it is malformed. ``vo`` and ``host`` name files in the vomsdir, so both must be plain names.
* AC extensions: AA certificate chain 1.3.6.1.4.1.8005.100.100.10 (``SEQUENCE { SEQUENCE OF
  Certificate }``), AuthorityKeyIdentifier, Targets (2.5.29.55, ``SEQUENCE OF Targets``; only
  URI/DNS target names are understood), NoRevAvail, generic attributes (…100.11, ignored).
  A critical AKID or NoRevAvail, or any other critical extension, is recorded in
  ``AttributeCert.problems`` (RFC 5755 §4.3; voms-api-java), which makes the AC invalid.
* ``signed_bytes`` is the ``acinfo`` exactly as received (captured with ``univ.Any``), so the
  signature is checked over the sender's bytes, not a re-encoding.

Validation lives in :mod:`segate.auth.voms`. Malformed input raises :class:`VomsError`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, univ
from pyasn1_modules import rfc5280, rfc5755

from segate.auth.pkix import slash_pair

AC_EXTENSION_OID = "1.3.6.1.4.1.8005.100.100.5"
FQAN_ATTRIBUTE_OID = "1.3.6.1.4.1.8005.100.100.4"
AA_CERTS_OID = "1.3.6.1.4.1.8005.100.100.10"
GENERIC_ATTRIBUTES_OID = "1.3.6.1.4.1.8005.100.100.11"
TARGETS_OID = "2.5.29.55"
NO_REV_AVAIL_OID = "2.5.29.56"
AKID_OID = "2.5.29.35"
HANDLED_EXTENSIONS = frozenset(
    {AA_CERTS_OID, GENERIC_ATTRIBUTES_OID, TARGETS_OID, NO_REV_AVAIL_OID, AKID_OID}
)
_PLAIN_NAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,253}$")


class VomsError(ValueError):
    """A malformed VOMS extension or attribute certificate."""


class _ACList(univ.SequenceOf):  # type: ignore[misc]
    componentType = univ.SequenceOf(componentType=univ.Any())


class _SignedAC(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("acinfo", univ.Any()),
        namedtype.NamedType("signatureAlgorithm", rfc5280.AlgorithmIdentifier()),
        namedtype.NamedType("signatureValue", univ.BitString()),
    )


class _TargetInformation(univ.SequenceOf):  # type: ignore[misc]
    componentType = rfc5755.Targets()


@dataclass(frozen=True, slots=True)
class AttributeCert:
    """The facts of one VOMS AC, unvalidated."""

    vo: str
    host: str
    fqans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    holder_serial: int | None
    holder_names: tuple[bytes, ...]  # DER Names of holder.baseCertificateID.issuer
    issuer_names: tuple[bytes, ...]  # DER Names of issuer.v2Form.issuerName
    signature_oid: str
    inner_signature_oid: str
    signature: bytes
    signed_bytes: bytes  # DER of acinfo, as received
    aa_certs: tuple[x509.Certificate, ...]
    akid: bytes | None
    targets: tuple[str, ...]
    problems: tuple[str, ...]  # extension rules broken (critical AKID, unknown critical, ...)

    @property
    def issuer_dn(self) -> str:
        return name_der_to_slash(self.issuer_names[0]) if self.issuer_names else "?"


def _decode(data: bytes, spec: Any, what: str) -> Any:
    try:
        value, rest = decoder.decode(data, asn1Spec=spec)
    except PyAsn1Error as exc:
        raise VomsError(f"{what}: {str(exc)[:120]}") from exc
    if rest:
        raise VomsError(f"{what}: trailing data")
    return value


def name_der_to_slash(der: bytes) -> str:
    try:
        rdns = _decode(der, rfc5280.RDNSequence(), "name")
        out = []
        for rdn in rdns:
            for atv in rdn:
                try:
                    value: str | bytes = str(decoder.decode(bytes(atv["value"]))[0])
                except PyAsn1Error:
                    value = bytes(atv["value"])
                out.append(slash_pair(str(atv["type"]), value))
        return "".join(out)
    except VomsError:
        return "?"


def _directory_names(names: Any) -> tuple[bytes, ...]:
    out = []
    for gn in names:
        if gn.getName() == "directoryName":
            out.append(encoder.encode(gn["directoryName"]["rdnSequence"]))
    return tuple(out)


def _fqan_values(attributes: Any) -> tuple[str, tuple[str, ...]]:
    authority: str | None = None
    fqans: list[str] = []
    for attr in attributes:
        if str(attr["type"]) != FQAN_ATTRIBUTE_OID:
            continue
        for raw in attr["values"]:
            ietf = _decode(bytes(raw), rfc5755.IetfAttrSyntax(), "FQAN attribute")
            if ietf["policyAuthority"].hasValue():
                for gn in ietf["policyAuthority"]:
                    if gn.getName() == "uniformResourceIdentifier":
                        uri = str(gn["uniformResourceIdentifier"])
                        if authority not in (None, uri):
                            raise VomsError("FQAN attribute has two policy authorities")
                        authority = uri
            for v in ietf["values"]:
                if v.getName() != "octets":
                    raise VomsError("FQAN value is not an OCTET STRING")
                fqans.append(bytes(v["octets"]).decode("ascii", "replace"))
    if authority is None or not fqans:
        raise VomsError("AC has no FQAN attribute")
    return authority, tuple(fqans)


def _target_names(der: bytes) -> tuple[str, ...]:
    out = []
    for targets in _decode(der, _TargetInformation(), "targets"):
        for target in targets:
            if target.getName() != "targetName":
                out.append("")  # group/certificate targets name no host of ours
                continue
            name = target["targetName"]
            kind = name.getName()
            out.append(str(name[kind]) if kind in ("uniformResourceIdentifier", "dNSName") else "")
    return tuple(out)


def _extensions(
    exts: Any,
) -> tuple[tuple[x509.Certificate, ...], bytes | None, tuple[str, ...], tuple[str, ...]]:
    aa: tuple[x509.Certificate, ...] = ()
    akid: bytes | None = None
    targets: tuple[str, ...] = ()
    problems: list[str] = []
    for ext in exts if exts.hasValue() else ():
        oid, critical, value = str(ext["extnID"]), bool(ext["critical"]), bytes(ext["extnValue"])
        if oid == AA_CERTS_OID:
            try:
                raw = [bytes(c) for chain in _decode(value, _ACList(), "AA certs") for c in chain]
                aa = tuple(x509.load_der_x509_certificate(c) for c in raw)
            except ValueError as exc:
                raise VomsError(f"AA certificates: {exc}") from exc
        elif oid == AKID_OID:
            kid = _decode(value, rfc5280.AuthorityKeyIdentifier(), "AKID")["keyIdentifier"]
            akid = bytes(kid) if kid.hasValue() else None
            if critical:
                problems.append("AuthorityKeyIdentifier extension is critical")
        elif oid == TARGETS_OID:
            targets = _target_names(value)
        elif oid == NO_REV_AVAIL_OID and critical:
            problems.append("NoRevAvail extension is critical")
        elif oid not in HANDLED_EXTENSIONS and critical:
            problems.append(f"unknown critical extension {oid}")
    return aa, akid, targets, tuple(problems)


def parse_ac(der: bytes) -> AttributeCert:
    signed = _decode(der, _SignedAC(), "AC")
    info = _decode(bytes(signed["acinfo"]), rfc5755.AttributeCertificateInfo(), "AC info")
    authority, fqans = _fqan_values(info["attributes"])
    vo, sep, hostport = authority.partition("://")
    host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    if not sep or not _PLAIN_NAME.match(vo) or not _PLAIN_NAME.match(host):
        raise VomsError(f"bad policy authority {authority[:80]!r}")
    holder = info["holder"]["baseCertificateID"]
    v2 = info["issuer"]["v2Form"] if info["issuer"].getName() == "v2Form" else None
    period = info["attrCertValidityPeriod"]
    aa, akid, targets, problems = _extensions(info["extensions"])
    try:
        not_before = period["notBeforeTime"].asDateTime.astimezone(dt.UTC)
        not_after = period["notAfterTime"].asDateTime.astimezone(dt.UTC)
    except (PyAsn1Error, ValueError) as exc:
        raise VomsError("bad AC validity period") from exc
    return AttributeCert(
        vo=vo,
        host=host,
        fqans=fqans,
        not_before=not_before,
        not_after=not_after,
        holder_serial=int(holder["serial"]) if holder.hasValue() else None,
        holder_names=_directory_names(holder["issuer"]) if holder.hasValue() else (),
        issuer_names=(
            _directory_names(v2["issuerName"])
            if v2 is not None and v2["issuerName"].hasValue()
            else ()
        ),
        signature_oid=str(signed["signatureAlgorithm"]["algorithm"]),
        inner_signature_oid=str(info["signature"]["algorithm"]),
        signature=signed["signatureValue"].asOctets(),
        signed_bytes=bytes(signed["acinfo"]),
        aa_certs=aa,
        akid=akid,
        targets=targets,
        problems=problems,
    )


def parse_ac_extension(value: bytes) -> list[AttributeCert]:
    """Every AC in a proxy's 1.3.6.1.4.1.8005.100.100.5 extension, in order."""
    try:
        lists = _decode(value, _ACList(), "VOMS extension")
        return [parse_ac(bytes(ac)) for acs in lists for ac in acs]
    except VomsError:
        raise
    except (PyAsn1Error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise VomsError(f"{type(exc).__name__}: {str(exc)[:120]}") from exc


def find_ac_extension(chain: Sequence[x509.Certificate], eec_index: int) -> bytes | None:
    """The extension of the first certificate from the leaf to the EEC that has one."""
    oid = x509.ObjectIdentifier(AC_EXTENSION_OID)
    for cert in chain[: eec_index + 1]:
        try:
            ext = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if isinstance(ext, x509.UnrecognizedExtension):
            return ext.value
    return None
