"""TLS contexts.

Server: TLS >= 1.2, the host certificate, and - when ``[server] ca_dir`` is set - a client
certificate is *requested but not required* (CERT_OPTIONAL), verified against the hashed CA
directory, with RFC 3820 proxy certificates allowed (OpenSSL refuses them otherwise; PROTOCOLS.md
§5.1). CRLs (``<hash>.r0``) are checked when every CA in the directory has one.

Client (JWKS discovery, third-party copy): the system trust store plus ``ca_dir``.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

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


def server_ssl_context(cert: Path, key: Path, ca_dir: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if ca_dir is not None:
        ctx.load_verify_locations(capath=str(ca_dir))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


def client_ssl_context(ca_dir: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_dir is not None and ca_dir.is_dir():
        ctx.load_verify_locations(capath=str(ca_dir))
    return ctx
