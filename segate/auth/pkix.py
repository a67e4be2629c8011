"""X.509 helpers shared by the X509 and VOMS authenticators: grid DNs, the CA store, paths.

* :func:`slash_dn` renders a name the way the grid writes it (OpenSSL ``X509_NAME_oneline``):
  ``/DC=test/DC=testbed/OU=Users/CN=Test User``, attributes in certificate order, OpenSSL short
  names (``DC C ST L O OU CN emailAddress UID ...``, unknown types as dotted OIDs), every
  entry of a multi-valued RDN as its own ``/K=V`` (as ``X509_NAME_oneline`` does). Characters
  outside printable ASCII are written ``\\xHH`` per UTF-8 byte. :func:`dn_key` folds the
  spelling variants found in old vomsdir/grid-mapfiles (``Email``/``E``, ``USERID``, case)
  for comparisons.
* :class:`CAStore` holds the CA certificates (``<hash>.N``) and CRLs (``<hash>.rN``) of a
  hashed CA directory (``[server] ca_dir``, ``X509_CERT_DIR``), keyed by subject/issuer DER;
  :class:`CAStoreCache` reloads it when its files change (checked at most every 60 s).
* :func:`trusted_path` checks a certificate (plus untrusted intermediates) up to a trust anchor
  of the store: names chain, each signature verifies (``verify_directly_issued_by``), every
  certificate is within its validity window, every issuer is a CA, and - where the store has
  a CRL for the issuer - the CRL is signed by it, current, and does not list the serial. It
  is used for the VOMS AA certificate embedded in an AC (PROTOCOLS.md §5.2); client chains
  are verified by OpenSSL during the TLS handshake (``segate.web.tls``).

Pure apart from :meth:`CAStore.load` (file reads); times are explicit ``datetime`` arguments.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

log = logging.getLogger("segate.auth.x509")

#: OpenSSL short names (``crypto/objects/objects.txt``) for the attribute types seen in DNs
SHORT_NAMES: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.41": "name",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.97": "organizationIdentifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}
_KEY_ALIASES = {"email": "emailaddress", "e": "emailaddress", "userid": "uid"}
_DN_PART = re.compile(r"/([A-Za-z0-9.]+)=")
_CA_NAME = re.compile(r"^[0-9a-f]{8}\.\d+$")
_CRL_NAME = re.compile(r"^[0-9a-f]{8}\.r\d+$")
MAX_PATH_DEPTH = 10


def escape_value(value: str | bytes) -> str:
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02X}" for b in raw)


def slash_pair(oid: str, value: str | bytes) -> str:
    return f"/{SHORT_NAMES.get(oid, oid)}={escape_value(value)}"


def slash_dn(name: x509.Name) -> str:
    """The grid (OpenSSL one-line) form of a certificate name."""
    return "".join(
        slash_pair(attr.oid.dotted_string, attr.value) for rdn in name.rdns for attr in rdn
    )


def dn_key(dn: str) -> str:
    """A comparison key for slash DNs: attribute names unaliased, everything lower case."""

    def key(m: re.Match[str]) -> str:
        k = m.group(1).lower()
        return f"/{_KEY_ALIASES.get(k, k)}="

    return _DN_PART.sub(key, dn.strip()).lower()


def same_name(a: x509.Name, b: x509.Name) -> bool:
    """Equal as OpenSSL compares names (canonically), not only byte for byte."""
    return a.public_bytes() == b.public_bytes() or dn_key(slash_dn(a)) == dn_key(slash_dn(b))


def ca_dir_stamp(ca_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of every hashed CA/CRL file: changes when fetch-crl runs."""
    out = []
    try:
        with os.scandir(ca_dir) as it:
            for e in it:
                if _CA_NAME.match(e.name) or _CRL_NAME.match(e.name):
                    st = e.stat()
                    out.append((e.name, st.st_size, st.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(out))


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def within_validity(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class CAStore:
    """Trust anchors and CRLs of one hashed CA directory."""

    anchors: dict[bytes, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    crls: dict[bytes, tuple[x509.CertificateRevocationList, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, ca_dir: Path | None) -> CAStore:
        anchors: dict[bytes, list[x509.Certificate]] = {}
        crls: dict[bytes, list[x509.CertificateRevocationList]] = {}
        if ca_dir is None:
            return cls()
        try:
            entries = sorted(ca_dir.iterdir())
        except OSError as exc:
            log.warning("cannot read CA directory %s: %s", ca_dir, exc.strerror)
            return cls()
        for p in entries:
            try:
                if _CA_NAME.match(p.name):
                    for cert in x509.load_pem_x509_certificates(p.read_bytes()):
                        anchors.setdefault(cert.subject.public_bytes(), []).append(cert)
                elif _CRL_NAME.match(p.name):
                    crl = x509.load_pem_x509_crl(p.read_bytes())
                    crls.setdefault(crl.issuer.public_bytes(), []).append(crl)
            except (OSError, ValueError) as exc:
                log.warning("CA directory %s: skipping %s: %s", ca_dir, p.name, exc)
        return cls(
            anchors={k: tuple(v) for k, v in anchors.items()},
            crls={k: tuple(v) for k, v in crls.items()},
        )

    def is_anchor(self, cert: x509.Certificate) -> bool:
        return cert in self.anchors.get(cert.subject.public_bytes(), ())


class CAStoreCache:
    """A CAStore reloaded when the directory's files change (looked at every ``check_every`` s)."""

    def __init__(
        self,
        ca_dir: Path | None,
        *,
        check_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ca_dir = ca_dir
        self.check_every = check_every
        self.clock = clock
        self._lock = threading.Lock()
        self._store: CAStore | None = None
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._checked = float("-inf")

    def get(self) -> CAStore:
        now = self.clock()
        with self._lock:
            if self._store is not None and now - self._checked < self.check_every:
                return self._store
            self._checked = now
            stamp = ca_dir_stamp(self.ca_dir) if self.ca_dir is not None else ()
            if self._store is None or stamp != self._stamp:
                self._store = CAStore.load(self.ca_dir)
                self._stamp = stamp
            return self._store


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _crl_problem(
    cert: x509.Certificate, issuer: x509.Certificate, store: CAStore, now: dt.datetime
) -> str | None:
    crls = store.crls.get(issuer.subject.public_bytes(), ())
    usable = [c for c in crls if c.is_signature_valid(issuer.public_key())]  # type: ignore[arg-type]
    if crls and not usable:
        return f"CRL of {slash_dn(issuer.subject)} has a bad signature"
    for crl in usable:
        nxt = crl.next_update_utc
        if nxt is not None and nxt < now:
            return f"CRL of {slash_dn(issuer.subject)} has expired"
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return f"{slash_dn(cert.subject)} is revoked"
    return None


class UntrustedPath(ValueError):
    """A certificate does not chain to a trust anchor of the store."""


def trusted_path(
    certs: Sequence[x509.Certificate], store: CAStore, now: dt.datetime
) -> list[x509.Certificate]:
    """The path from ``certs[0]`` to an anchor of ``store`` (``certs[1:]`` may serve as
    intermediates), leaf first, anchor last; :class:`UntrustedPath` with the reason if none."""
    if not certs:
        raise UntrustedPath("no certificate")
    pool = list(certs[1:])
    cur = certs[0]
    path = [cur]
    for _ in range(MAX_PATH_DEPTH):
        if not within_validity(cur, now):
            raise UntrustedPath(f"{slash_dn(cur.subject)} is outside its validity period")
        if store.is_anchor(cur):
            return path
        issuer_der = cur.issuer.public_bytes()
        candidates = [c for c in pool if c.subject.public_bytes() == issuer_der]
        candidates += list(store.anchors.get(issuer_der, ()))
        issuer = next((c for c in candidates if _signed_by(cur, c)), None)
        if issuer is None:
            raise UntrustedPath(
                f"no trusted issuer {slash_dn(cur.issuer)} for {slash_dn(cur.subject)}"
            )
        if not is_ca(issuer):
            raise UntrustedPath(f"issuer {slash_dn(issuer.subject)} is not a CA")
        problem = _crl_problem(cur, issuer, store, now)
        if problem:
            raise UntrustedPath(problem)
        if issuer in pool:
            pool.remove(issuer)
        cur = issuer
        path.append(cur)
    raise UntrustedPath("certificate path too long")
