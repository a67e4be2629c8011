"""VOMS attribute certificates in RFC 3820 proxies: find, parse (RFC 5755), validate.

Rules (PROTOCOLS.md §5.2-5.3, voms-api-java ``DefaultVOMSValidationStrategy``, field report B13):

* Location: extension 1.3.6.1.4.1.8005.100.100.5 of the first certificate, walking from the leaf
  towards the end-entity certificate (EEC), that carries it; its value is
  ``SEQUENCE OF SEQUENCE OF AttributeCertificate``. Parsed with pyasn1-modules' RFC 5755 module.
* FQANs: attribute 1.3.6.1.4.1.8005.100.100.4 (``IetfAttrSyntax``); ``policyAuthority`` is the
  URI ``<vo>://<host>:<port>``, the values are OCTET STRING FQANs, kept in AC order (the first
  is the primary). Each must be ``/<vo>[/group...][/Role=r][/Capability=c]`` with ``<vo>`` the
  AC's VO - an AA may speak only for its own VO.
* An AC is accepted only if, in this order: ``notBefore - leeway <= now <= notAfter`` (no leeway
  after expiry: B13); the signature verifies (below); the holder is the EEC (below); its
  targets (2.5.29.55), when any are listed, name this server; AuthorityKeyIdentifier and
  NoRevAvail are not critical and no other unknown extension is critical.
* Signature: ``<vomsdir>/<vo>/<host>.lsc`` lists, one per line, the AA certificate's subject,
  its issuer, that one's issuer... (``#`` comments; lines starting ``-`` separate alternative
  chains). The AA certificate embedded in the AC (extension 1.3.6.1.4.1.8005.100.100.10,
  ``SEQUENCE { SEQUENCE OF Certificate }``) must chain to a CA of ``[server] ca_dir``
  (:func:`segate.auth.pkix.verify_path`) and its path must read like one of those chains
  (prefix, at least two lines, compared with :func:`~segate.auth.pkix.dn_key`). Without a
  ``.lsc`` file, ``<vomsdir>/<vo>/<host>.pem`` may hold the AA certificate itself (it too must
  chain to ca_dir). The AC's issuer must be the AA certificate's subject; its AKID, if any,
  the AA's SubjectKeyIdentifier; the signature over the DER ``acinfo`` is checked with the AA
  key (RSA PKCS#1 v1.5 or ECDSA; SHA-1/224/256/384/512; ``acinfo.signature`` must equal the
  outer algorithm).
* Holder: ``baseCertificateID`` is required; its serial must be the EEC's serial and one of its
  issuer names must be the EEC's *subject* (what VOMS and ``voms-proxy-fake`` write; voms-api-java
  ``checkACHolder`` compares the same) or, as RFC 5755 §4.2.2 words it, the EEC's issuer.
* A failed AC contributes no FQANs; the reasons are returned for the caller to log. The ``vo``
  and ``host`` taken from the AC name vomsdir files, so both must be plain names.

Parsing is in :mod:`segate.auth.vomsac`. Pure: every fact (chain, vomsdir, CA store, time,
host names) is an argument.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from segate.auth.pkix import CAStore, UntrustedPath, dn_key, slash_dn, trusted_path
from segate.auth.vomsac import (
    AttributeCert,
    VomsError,
    find_ac_extension,
    name_der_to_slash,
    parse_ac_extension,
)

_SIG_HASHES: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "1.2.840.113549.1.1.5": ("rsa", hashes.SHA1),
    "1.2.840.113549.1.1.14": ("rsa", hashes.SHA224),
    "1.2.840.113549.1.1.11": ("rsa", hashes.SHA256),
    "1.2.840.113549.1.1.12": ("rsa", hashes.SHA384),
    "1.2.840.113549.1.1.13": ("rsa", hashes.SHA512),
    "1.2.840.10045.4.1": ("ec", hashes.SHA1),
    "1.2.840.10045.4.3.1": ("ec", hashes.SHA224),
    "1.2.840.10045.4.3.2": ("ec", hashes.SHA256),
    "1.2.840.10045.4.3.3": ("ec", hashes.SHA384),
    "1.2.840.10045.4.3.4": ("ec", hashes.SHA512),
}
_FQAN_GROUP = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, slots=True)
class VomsResult:
    """Verified VOMS data of a chain: FQANs in AC order, VO of the first accepted AC."""

    vo: str | None = None
    fqans: tuple[str, ...] = ()
    not_after: float | None = None  # the earliest notAfter of the accepted ACs (epoch)
    problems: tuple[str, ...] = ()


# -- validation ---------------------------------------------------------------------------------
def _same_name(der: bytes, name: x509.Name) -> bool:
    return der == name.public_bytes() or dn_key(name_der_to_slash(der)) == dn_key(slash_dn(name))


def read_lsc(path: Path) -> list[list[str]]:
    """Alternative chains of a ``.lsc`` file (DN lines; ``-`` lines separate chains)."""
    chains: list[list[str]] = [[]]
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("-"):
            chains.append([])
        elif line.startswith("/"):
            chains[-1].append(line)
    return [c for c in chains if c]


def _path_description(path: Sequence[x509.Certificate]) -> list[str]:
    out = [slash_dn(path[0].subject)]
    for cert in path:
        if cert.issuer != cert.subject:
            out.append(slash_dn(cert.issuer))
    return [dn_key(d) for d in out]


def _check_signature(ac: AttributeCert, aa: x509.Certificate) -> str | None:
    if ac.signature_oid != ac.inner_signature_oid:
        return "AC signature algorithms disagree"
    if not any(_same_name(n, aa.subject) for n in ac.issuer_names):
        return f"AC issuer {ac.issuer_dn} is not the AA certificate {slash_dn(aa.subject)}"
    if ac.akid is not None:
        try:
            ski = aa.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            if ski.digest != ac.akid:
                return "AC AuthorityKeyIdentifier does not match the AA certificate"
        except x509.ExtensionNotFound:
            pass
    kind_hash = _SIG_HASHES.get(ac.signature_oid)
    if kind_hash is None:
        return f"unsupported AC signature algorithm {ac.signature_oid}"
    kind, hash_cls = kind_hash
    key = aa.public_key()
    try:
        if kind == "rsa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(ac.signature, ac.signed_bytes, padding.PKCS1v15(), hash_cls())
        elif kind == "ec" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(ac.signature, ac.signed_bytes, ec.ECDSA(hash_cls()))
        else:
            return "AC signature algorithm does not fit the AA key"
    except InvalidSignature:
        return f"AC signature does not verify with {slash_dn(aa.subject)}"
    return None


def _signer_problem(
    ac: AttributeCert, vomsdir: Path, store: CAStore, now: dt.datetime
) -> str | None:
    base = vomsdir / ac.vo / ac.host
    lsc, pem = base.with_name(f"{ac.host}.lsc"), base.with_name(f"{ac.host}.pem")
    if lsc.is_file():
        if not ac.aa_certs:
            return "AC embeds no AA certificate"
        try:
            path = trusted_path(ac.aa_certs, store, now)
        except UntrustedPath as exc:
            return f"AA certificate not trusted: {exc}"
        desc = _path_description(path)
        chains = read_lsc(lsc)
        if not any(len(c) >= 2 and [dn_key(d) for d in c] == desc[: len(c)] for c in chains):
            return f"AA certificate {slash_dn(path[0].subject)} does not match {ac.vo}/{lsc.name}"
        return _check_signature(ac, path[0])
    if pem.is_file():
        try:
            certs = x509.load_pem_x509_certificates(pem.read_bytes())
        except ValueError:
            return f"cannot read {ac.vo}/{pem.name}"
        problem = f"no AA certificate in {ac.vo}/{pem.name} issued this AC"
        for cert in certs:
            if any(_same_name(n, cert.subject) for n in ac.issuer_names):
                try:
                    trusted_path([cert], store, now)
                except UntrustedPath as exc:
                    return f"AA certificate not trusted: {exc}"
                problem = _check_signature(ac, cert) or ""
                if not problem:
                    return None
        return problem
    return f"no {ac.vo}/{ac.host}.lsc (or .pem) in the vomsdir: VOMS server not trusted"


def _fqan_problem(fqan: str, vo: str) -> str | None:
    parts = fqan.split("/")
    if fqan.endswith("/") or len(parts) < 2 or parts[0] or parts[1] != vo:
        return f"FQAN {fqan[:80]!r} is not in VO {vo}"
    tail = [p for p in parts[2:] if "=" in p]
    groups = [p for p in parts[2:] if "=" not in p]
    if parts[2:] != groups + tail or not all(_FQAN_GROUP.match(g) for g in groups):
        return f"malformed FQAN {fqan[:80]!r}"
    keys = [p.split("=", 1)[0] for p in tail]
    if keys not in ([], ["Role"], ["Capability"], ["Role", "Capability"]):
        return f"malformed FQAN {fqan[:80]!r}"
    return None


def validate_ac(
    ac: AttributeCert,
    *,
    eec: x509.Certificate,
    vomsdir: Path | None,
    store: CAStore,
    now: dt.datetime,
    local_hosts: Iterable[str] = (),
    leeway: float = 60.0,
) -> str | None:
    """``None`` if the AC may be believed, else why not (one line)."""
    if now < ac.not_before - dt.timedelta(seconds=leeway):
        return f"AC not valid before {ac.not_before:%Y-%m-%dT%H:%M:%SZ}"
    if now > ac.not_after:
        return f"AC expired at {ac.not_after:%Y-%m-%dT%H:%M:%SZ}"
    if vomsdir is None:
        return "no [x509] vomsdir configured"
    problem = _signer_problem(ac, vomsdir, store, now)
    if problem:
        return problem
    if ac.holder_serial is None:
        return "AC holder has no baseCertificateID"
    names = (eec.subject, eec.issuer)
    if ac.holder_serial != eec.serial_number or not any(
        _same_name(n, name) for n in ac.holder_names for name in names
    ):
        return f"AC holder is not {slash_dn(eec.subject)} (serial {eec.serial_number:x})"
    hosts = {h.lower() for h in local_hosts}
    if ac.targets and not any(_target_host(t) in hosts for t in ac.targets):
        return "AC targets do not name this server"
    if ac.problems:
        return ac.problems[0]
    for fqan in ac.fqans:
        problem = _fqan_problem(fqan, ac.vo)
        if problem:
            return problem
    return None


def _target_host(target: str) -> str:
    t = target.lower()
    if "://" in t:
        t = t.split("://", 1)[1].split("/", 1)[0]
    return t


def voms_attributes(
    chain: Sequence[x509.Certificate],
    eec_index: int,
    *,
    vomsdir: Path | None,
    store: CAStore,
    now: dt.datetime,
    local_hosts: Iterable[str] = (),
    leeway: float = 60.0,
) -> VomsResult:
    """Verified FQANs of a chain (empty when it has no AC or none passes; see ``problems``)."""
    value = find_ac_extension(chain, eec_index)
    if value is None:
        return VomsResult()
    try:
        acs = parse_ac_extension(value)
    except VomsError as exc:
        return VomsResult(problems=(f"malformed VOMS extension: {exc}",))
    hosts = tuple(local_hosts)
    vo: str | None = None
    fqans: list[str] = []
    ends: list[float] = []
    problems: list[str] = []
    for ac in acs:
        problem = validate_ac(
            ac,
            eec=chain[eec_index],
            vomsdir=vomsdir,
            store=store,
            now=now,
            local_hosts=hosts,
            leeway=leeway,
        )
        if problem:
            problems.append(f"AC for {ac.vo} from {ac.host}: {problem}")
            continue
        vo = vo or ac.vo
        fqans.extend(f for f in ac.fqans if f not in fqans)
        ends.append(ac.not_after.timestamp())
    return VomsResult(
        vo=vo, fqans=tuple(fqans), not_after=min(ends) if ends else None, problems=tuple(problems)
    )
