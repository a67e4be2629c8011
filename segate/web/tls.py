"""TLS contexts.

Server: TLS >= 1.2 and the host certificate. When ``[server] ca_dir`` is set, a client
certificate is *requested but not required* (CERT_OPTIONAL) and verified against that hashed CA
directory, with RFC 3820 proxy certificates allowed (OpenSSL refuses them otherwise; PROTOCOLS.md
§5.1); the X509 authenticator re-checks the proxy rules OpenSSL leaves out (segate.auth.x509).

* CRLs: when every CA (``<hash>.N``) has a CRL (``<hash>.rN``), ``VERIFY_CRL_CHECK_CHAIN`` is
  set: the end-entity certificate and every CA are checked. Not ``_LEAF``: behind a proxy the
  leaf is the proxy, and OpenSSL 3 skips revocation checks for proxy certificates (their
  issuer, the user, publishes no CRL), so ``_LEAF`` would never look at the user certificate.
  With ``_CHAIN`` proxies work and a revoked user is refused with or without a proxy (tests).
  If some CA lacks a CRL, checking is off (a warning is logged): OpenSSL would refuse every
  user of that CA ("unable to get certificate CRL"). An expired CRL refuses that CA's users
  ("CRL has expired"), as in other grid services: run fetch-crl.
* Reload: OpenSSL reads ``<hash>`` files lazily and never re-reads a CRL it has loaded, so a
  long-running server would keep stale CRLs (and then refuse everyone once they expire). The
  directory listing (names, sizes, mtimes) is looked at every ``reload_every`` seconds from
  the handshake callback; when it changed, a fresh context is built and later handshakes are
  switched to it (``SSLObject.context = ...`` in ``sni_callback``, which OpenSSL calls with or
  without SNI).
* No TLS 1.3 session tickets (``num_tickets = 0``, ``OP_NO_TICKET``): a resumed session has the
  peer certificate but no verified chain (``get_verified_chain()`` is None), which would hide
  the proxy's issuer and VOMS data. TLS 1.2 session-ID resumption cannot be turned off from
  Python; ``segate.web.credentials`` remembers the verified chain per session ID instead.

* A handshake that fails is logged (``HandshakeLoggingSSLObject``): asyncio and uvloop report
  TLS handshake errors only in debug mode, so an expired or untrusted proxy used to be refused
  without a line in the server log. A refused client certificate is a WARNING with OpenSSL's
  reason; other failures (scanners, clients that hang up) are INFO.

Client (JWKS discovery, third-party copy): the system trust store plus ``ca_dir``.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from segate.auth.pkix import ca_dir_stamp

log = logging.getLogger("segate")

_CA_FILE = re.compile(r"^[0-9a-f]{8}\.(\d+)$")
_CRL_FILE = re.compile(r"^[0-9a-f]{8}\.r(\d+)$")


def ca_dir_has_crls(ca_dir: Path) -> bool:
    try:
        names = [p.name for p in ca_dir.iterdir()]
    except OSError:
        return False
    cas = {n.replace(".", ".r", 1) for n in names if _CA_FILE.match(n)}
    crls = {n for n in names if _CRL_FILE.match(n)}
    return bool(cas) and cas <= crls


class HandshakeLoggingSSLObject(ssl.SSLObject):
    """The server's TLS objects (``SSLContext.sslobject_class``): ``do_handshake`` logs why
    a handshake failed before the event loop closes the connection silently."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLCertVerificationError as exc:
            log.warning("TLS handshake refused a client certificate: %s", exc.verify_message)
            raise
        except ssl.SSLError as exc:
            log.info("TLS handshake failed: %s", exc.reason or type(exc).__name__)
            raise


def _server_context(
    cert: Path, key: Path, ca_dir: Path | None, *, warn: bool = True
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslobject_class = HandshakeLoggingSSLObject
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if ca_dir is not None:
        ctx.load_verify_locations(capath=str(ca_dir))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
        if ca_dir_has_crls(ca_dir):
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        elif warn and any(_CRL_FILE.match(name) for name, _, _ in ca_dir_stamp(ca_dir)):
            log.warning("CRL checking is off: not every CA in %s has a <hash>.r0 CRL", ca_dir)
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


class _Reloader:
    """The ``sni_callback`` that moves new handshakes to a context built from a changed ca_dir."""

    def __init__(self, cert: Path, key: Path, ca_dir: Path, every: float) -> None:
        self.cert, self.key, self.ca_dir, self.every = cert, key, ca_dir, every
        self.stamp = ca_dir_stamp(ca_dir)
        self.checked = time.monotonic()
        self.current: ssl.SSLContext | None = None
        self.lock = threading.Lock()

    def _refresh(self) -> ssl.SSLContext | None:
        now = time.monotonic()
        with self.lock:
            if now - self.checked < self.every:
                return self.current
            self.checked = now
            stamp = ca_dir_stamp(self.ca_dir)
            if stamp and stamp != self.stamp:
                try:
                    self.current = _server_context(self.cert, self.key, self.ca_dir)
                    self.stamp = stamp
                    log.info("CA directory %s changed: new TLS handshakes use it", self.ca_dir)
                except (OSError, ssl.SSLError) as exc:
                    log.warning(
                        "CA directory %s changed but cannot be loaded: %s", self.ca_dir, exc
                    )
            return self.current

    def __call__(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        fresh = self._refresh()
        if fresh is not None:
            sslobj.context = fresh


def server_ssl_context(
    cert: Path, key: Path, ca_dir: Path | None, *, reload_every: float = 300.0
) -> ssl.SSLContext:
    ctx = _server_context(cert, key, ca_dir)
    if ca_dir is not None and reload_every > 0:
        ctx.sni_callback = _Reloader(cert, key, ca_dir, reload_every)
    return ctx


def client_ssl_context(ca_dir: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_dir is not None and ca_dir.is_dir():
        ctx.load_verify_locations(capath=str(ca_dir))
    return ctx
