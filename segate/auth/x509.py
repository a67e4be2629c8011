"""X509 client certificates (RFC 3820 proxies, VOMS attributes) -> Principal.

The TLS layer (``segate.web.tls``) has already verified the chain against ``[server] ca_dir``
with proxies allowed (and CRLs when present); :class:`X509Authenticator` receives it as DER,
leaf first, and re-checks what OpenSSL does not (PROTOCOLS.md §5.1, §8 items 22-23):

* The end-entity certificate (EEC) is the first certificate, from the leaf, that is not a
  proxy. A proxy carries proxyCertInfo (1.3.6.1.5.5.7.1.14, RFC 3820 §3.8) or is a legacy GT2
  proxy (last RDN ``CN=proxy`` / ``CN=limited proxy``, no extension). Every proxy must (RFC 3820
  §3): be issued by the next certificate of the chain, have that certificate's subject plus
  exactly one single-valued CN RDN, not be a CA, carry no subject/issuer alternative name, have
  an issuer whose keyUsage (if any) allows digitalSignature, respect every
  ``pCPathLenConstraint`` above it, and use a policy language we understand: inheritAll
  (1.3.6.1.5.5.7.21.1) or Globus limited (1.3.6.1.4.1.3536.1.1.1.9). Independent proxies
  (…21.2, they carry no rights), GT3 draft proxies (1.3.6.1.4.1.3536.1.222) and unknown
  languages are refused. No proxy may appear above the EEC and the EEC may not be a CA.
  Names are compared as OpenSSL compares them (:func:`segate.auth.pkix.same_name`), so a
  proxy maker that re-encodes string types (Java) is not refused.
  Any break is a 401, as is a chain past its earliest notAfter (long keep-alive connections).
* Limited: any proxy with the Globus limited policy (or ``CN=limited proxy``). OpenSSL accepts
  them (§8 item 22); ``[x509] allow_limited_proxies = false`` makes them a 401, otherwise the
  principal carries ``limited_proxy=True`` for policies that care (macaroon minting, delegation).
* Identity: the EEC subject in grid slash form (:func:`segate.auth.pkix.slash_dn`), so proxy CNs
  never appear. VOMS data comes from :func:`segate.auth.voms.voms_attributes`: only verified
  FQANs reach the principal; a rejected AC leaves the user authenticated by DN alone and the
  reason is logged (warning, logger ``segate.auth.x509``; field report B13).
* ``expires_at`` = earliest notAfter of the chain, and of the accepted ACs when there are FQANs.
* ``[x509] dn_map``: a grid-mapfile (``"<DN>" account[,account...]``; ``#`` comments; FQAN lines
  are ignored). A mapped DN gets the first account as the principal's ``subject`` (``user:``
  rules match it); unmapped DNs keep the DN as subject. Re-read when the file changes.
* Results are cached by SHA-256 of the DER chain (LRU, bounded) until the earliest of the chain
  expiry, the AC expiry and 5 minutes (so vomsdir, CRL and dn_map changes take effect); a hit
  never outlives the chain. Failures are not cached.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1_modules import rfc3820

from segate.auth.chain import Credentials
from segate.auth.pkix import CAStoreCache, dn_key, is_ca, same_name, slash_dn
from segate.auth.principal import Kind, Principal
from segate.auth.voms import voms_attributes
from segate.config import X509Config
from segate.errors import Unauthenticated

log = logging.getLogger("segate.auth.x509")

PROXY_CERT_INFO_OID = "1.3.6.1.5.5.7.1.14"
GT3_PROXY_OID = "1.3.6.1.4.1.3536.1.222"
PPL_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
PPL_INDEPENDENT = "1.3.6.1.5.5.7.21.2"
PPL_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"
_LEGACY_CNS = {"proxy": PPL_INHERIT_ALL, "limited proxy": PPL_LIMITED}
_ALT_NAMES = (x509.SubjectAlternativeName, x509.IssuerAlternativeName)


def _reject(reason: str) -> Unauthenticated:
    return Unauthenticated(f"client certificate refused: {reason}", bearer_error=None)


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    policy: str  # policy language OID ("gt3" for a GT3 draft proxy)
    path_len: int | None = None
    legacy: bool = False


def _single_cn(rdn: x509.RelativeDistinguishedName) -> str | None:
    attrs = list(rdn)
    if len(attrs) == 1 and attrs[0].oid == NameOID.COMMON_NAME and isinstance(attrs[0].value, str):
        return attrs[0].value
    return None


def proxy_info(cert: x509.Certificate, issuer: x509.Certificate | None) -> ProxyInfo | None:
    """How ``cert`` is a proxy, or ``None`` if it is not one."""
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if oid == GT3_PROXY_OID:
            return ProxyInfo("gt3")
        if oid != PROXY_CERT_INFO_OID:
            continue
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            raise _reject("unreadable proxyCertInfo")
        try:
            pci, rest = decoder.decode(ext.value.value, asn1Spec=rfc3820.ProxyCertInfoExtension())
        except PyAsn1Error as exc:
            raise _reject("malformed proxyCertInfo") from exc
        if rest:
            raise _reject("malformed proxyCertInfo")
        plen = pci["pCPathLenConstraint"]
        return ProxyInfo(
            str(pci["proxyPolicy"]["policyLanguage"]), int(plen) if plen.hasValue() else None
        )
    rdns = cert.subject.rdns
    cn = _single_cn(rdns[-1]) if rdns else None
    if cn not in _LEGACY_CNS or issuer is None or is_ca(cert):
        return None
    if same_name(x509.Name(rdns[:-1]), issuer.subject) and same_name(cert.issuer, issuer.subject):
        return ProxyInfo(_LEGACY_CNS[cn], legacy=True)
    return None


def _check_proxy(
    cert: x509.Certificate, issuer: x509.Certificate, info: ProxyInfo, below: int
) -> None:
    """RFC 3820 §3 rules OpenSSL does not (all) enforce; ``below`` = proxies issued under it."""
    if info.policy == PPL_INDEPENDENT:
        raise _reject("independent proxies (id-ppl-independent) carry no identity")
    if info.policy == "gt3":
        raise _reject("GT3 draft proxies are not supported")
    if info.policy not in (PPL_INHERIT_ALL, PPL_LIMITED):
        raise _reject(f"unknown proxy policy language {info.policy[:60]}")
    if not same_name(cert.issuer, issuer.subject):
        raise _reject("proxy is not issued by the next certificate of the chain")
    rdns = cert.subject.rdns
    if (
        len(rdns) != len(issuer.subject.rdns) + 1
        or not same_name(x509.Name(rdns[:-1]), issuer.subject)
        or _single_cn(rdns[-1]) is None
    ):
        raise _reject("proxy subject is not its issuer's subject plus one CN")
    if is_ca(cert):
        raise _reject("proxy certificate is a CA")
    if any(isinstance(e.value, _ALT_NAMES) for e in cert.extensions):
        raise _reject("proxy certificate has an alternative name")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            raise _reject("proxy issuer's keyUsage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass
    if info.path_len is not None and below > info.path_len:
        raise _reject("proxy path length constraint exceeded")


@dataclass(frozen=True, slots=True)
class ChainFacts:
    eec_index: int
    dn: str
    limited: bool
    not_after: float  # epoch seconds: the earliest notAfter of the chain


def analyse_chain(chain: Sequence[x509.Certificate]) -> ChainFacts:
    """Find the EEC, check the proxies in front of it; :class:`Unauthenticated` if broken."""
    if not chain:
        raise _reject("empty chain")
    limited = False
    i = 0
    while i < len(chain):
        issuer = chain[i + 1] if i + 1 < len(chain) else None
        info = proxy_info(chain[i], issuer)
        if info is None:
            break
        if issuer is None:
            raise _reject("proxy certificate without its issuer")
        _check_proxy(chain[i], issuer, info, below=i)
        limited = limited or info.policy == PPL_LIMITED
        i += 1
    if i >= len(chain):
        raise _reject("no end-entity certificate")
    eec = chain[i]
    if is_ca(eec):
        raise _reject("a CA certificate is not a client identity")
    if any(
        e.oid.dotted_string in (PROXY_CERT_INFO_OID, GT3_PROXY_OID)
        for c in chain[i + 1 :]
        for e in c.extensions
    ):
        raise _reject("proxy certificate above the end-entity certificate")
    not_after = min(c.not_valid_after_utc for c in chain).timestamp()
    return ChainFacts(eec_index=i, dn=slash_dn(eec.subject), limited=limited, not_after=not_after)


# -- grid-mapfile -------------------------------------------------------------------------------
def parse_grid_mapfile(text: str) -> dict[str, str]:
    """``dn_key(DN) -> first account``; FQAN (voms-mapfile) lines and junk are skipped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"'):
            dn, sep, rest = line[1:].partition('"')
            if not sep:
                continue
        else:
            dn, _, rest = line.partition(" ")
        first = dn.split("/")[1] if dn.count("/") >= 1 and dn.startswith("/") else ""
        account = rest.strip().split(",")[0].strip()
        if "=" in first and account:
            out.setdefault(dn_key(dn), account)
    return out


class DnMap:
    """A grid-mapfile, re-read when its mtime changes (looked at every ``check_every`` s)."""

    def __init__(
        self,
        path: Path,
        *,
        check_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.check_every = check_every
        self.clock = clock
        self._lock = threading.Lock()
        self._map: dict[str, str] = {}
        self._stamp: float | None = None
        self._checked = float("-inf")

    def lookup(self, dn: str) -> str | None:
        now = self.clock()
        with self._lock:
            if now - self._checked >= self.check_every:
                self._checked = now
                try:
                    stamp: float | None = os.stat(self.path).st_mtime
                    if stamp != self._stamp:
                        self._map = parse_grid_mapfile(self.path.read_text(errors="replace"))
                        self._stamp = stamp
                except OSError as exc:
                    log.warning("cannot read [x509] dn_map %s: %s", self.path, exc.strerror)
            return self._map.get(dn_key(dn))


# -- the authenticator --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    chain_not_after: float
    until: float


def chain_key(chain_der: Sequence[bytes]) -> bytes:
    h = hashlib.sha256()
    for der in chain_der:
        h.update(len(der).to_bytes(4, "big"))
        h.update(der)
    return h.digest()


class X509Authenticator:
    """CertAuthenticator for verified TLS client chains (see the module docstring)."""

    name = "x509"

    def __init__(
        self,
        config: X509Config,
        *,
        ca_dir: Path | None,
        local_hosts: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        cache_size: int = 1024,
        max_age: float = 300.0,
        leeway: float = 60.0,
    ) -> None:
        self.config = config
        self.store = CAStoreCache(ca_dir)
        self.dn_map = DnMap(config.dn_map) if config.dn_map is not None else None
        self.local_hosts = tuple(h.lower() for h in local_hosts)
        self.clock = clock
        self.cache_size = cache_size
        self.max_age = max_age
        self.leeway = leeway
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()

    async def authenticate(self, creds: Credentials) -> Principal:
        return self.principal_for(creds.peer_chain)

    def principal_for(self, chain_der: Sequence[bytes]) -> Principal:
        now = self.clock()
        key = chain_key(chain_der)
        entry = self._cache.get(key)
        if entry is None or now >= entry.until:
            entry = self._evaluate(chain_der, now)
            self._cache[key] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        if now >= entry.chain_not_after:
            raise _reject("the certificate chain has expired")
        return entry.principal

    def _evaluate(self, chain_der: Sequence[bytes], now: float) -> _Entry:
        try:
            chain = [x509.load_der_x509_certificate(der) for der in chain_der]
        except ValueError as exc:
            raise _reject("unreadable certificate") from exc
        facts = analyse_chain(chain)
        if facts.limited and not self.config.allow_limited_proxies:
            raise _reject("limited proxies are not accepted ([x509] allow_limited_proxies)")
        voms = voms_attributes(
            chain,
            facts.eec_index,
            vomsdir=self.config.vomsdir,
            store=self.store.get(),
            now=dt.datetime.fromtimestamp(now, dt.UTC),
            local_hosts=self.local_hosts,
            leeway=self.leeway,
        )
        for problem in voms.problems:
            log.warning("X509 %s: VOMS attributes not accepted: %s", facts.dn, problem)
        mapped = self.dn_map.lookup(facts.dn) if self.dn_map is not None else None
        expires = (
            facts.not_after if voms.not_after is None else min(facts.not_after, voms.not_after)
        )
        principal = Principal(
            kind=Kind.X509,
            subject=mapped or facts.dn,
            dn=facts.dn,
            vo=voms.vo,
            fqans=voms.fqans,
            expires_at=expires,
            limited_proxy=facts.limited,
        )
        log.debug("X509 %s: vo=%s fqans=%d", facts.dn, voms.vo, len(voms.fqans))
        return _Entry(principal, facts.not_after, min(expires, now + self.max_age))
