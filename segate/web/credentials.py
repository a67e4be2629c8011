"""Parse a request's credentials into plain values (auth.chain.Credentials).

* ``Authorization: Bearer <t>``, scheme case-insensitive (RFC 6750 §2.1, RFC 9110 §11.1). Any
  other scheme is a 401: a credential we cannot judge is never treated as absent.
* Query ``authz=`` (dCache/XRootD, optionally ``Bearer%20``-prefixed) or ``access_token=``
  (RFC 6750 §2.3, StoRM) when ``[tokens] allow_query_token``; header wins if both are present.
* The verified client certificate chain (DER, leaf first), read from the TLS object once per
  connection: Python 3.13 has ``SSLObject.get_verified_chain()``; 3.11/3.12 expose the same call
  on the private ``_sslobj``. A resumed TLS session (TLS 1.2 session IDs: Python cannot turn
  off the server's session cache; tls.py turns off TLS 1.3 tickets) has the peer certificate
  but no verified chain, so the chain of each full handshake is remembered by session ID
  (bounded, 2 h, the leaf must match) and recalled on resumption. If it is gone, the leaf
  alone is passed: the certificate authenticator then refuses a proxy it cannot see the issuer
  of, instead of the request silently becoming anonymous.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from multidict import MultiMapping

from segate.auth.chain import Credentials
from segate.errors import BadRequest, Unauthenticated

_DER = 2  # _ssl.ENCODING_DER
_CHAIN_KEY = "segate_peer_chain"
_SESSION_TTL = 7200.0  # OpenSSL's default TLS session timeout
_SESSION_MAX = 4096
_session_chains: OrderedDict[bytes, tuple[float, tuple[bytes, ...]]] = OrderedDict()


def _session_id(sslobj: Any) -> bytes | None:
    try:
        session = sslobj.session
    except (AttributeError, ValueError, ssl.SSLError):
        return None
    sid = getattr(session, "id", None) if session is not None else None
    return bytes(sid) if sid else None


def _remember(sid: bytes | None, chain: tuple[bytes, ...]) -> None:
    if sid is None:
        return
    _session_chains[sid] = (time.monotonic() + _SESSION_TTL, chain)
    _session_chains.move_to_end(sid)
    while len(_session_chains) > _SESSION_MAX:
        _session_chains.popitem(last=False)


def _recall(sid: bytes | None, leaf: bytes) -> tuple[bytes, ...]:
    entry = _session_chains.get(sid) if sid is not None else None
    if entry is None or entry[0] < time.monotonic() or entry[1][:1] != (leaf,):
        return ()
    return entry[1]


def _chain_from_sslobj(sslobj: Any) -> tuple[bytes, ...]:
    getter = getattr(sslobj, "get_verified_chain", None)
    if getter is None:
        inner = getattr(sslobj, "_sslobj", None)
        getter = getattr(inner, "get_verified_chain", None)
    if getter is None:
        return ()
    try:
        chain = getter() or []
    except (ssl.SSLError, ValueError):
        return ()
    out: list[bytes] = []
    for cert in chain:
        if isinstance(cert, bytes | bytearray):
            out.append(bytes(cert))
        else:
            out.append(cert.public_bytes(_DER))
    return tuple(out)


def peer_chain(transport: asyncio.BaseTransport | None, holder: Any) -> tuple[bytes, ...]:
    """The verified client chain of ``transport``'s TLS session; ``holder`` (the connection's
    protocol object) keeps it, as it is fixed for the connection."""
    if transport is None:
        return ()
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return ()
    cached = getattr(holder, _CHAIN_KEY, None)
    if cached is not None and cached[0] is sslobj:
        return cached[1]  # type: ignore[no-any-return]
    leaf = sslobj.getpeercert(binary_form=True)
    if leaf is None:
        chain: tuple[bytes, ...] = ()
    else:
        chain = _chain_from_sslobj(sslobj)
        sid = _session_id(sslobj)
        if chain:
            _remember(sid, chain)
        else:  # resumed session: no verified chain (see the module docstring)
            chain = _recall(sid, leaf) or (leaf,)
    with contextlib.suppress(AttributeError):
        setattr(holder, _CHAIN_KEY, (sslobj, chain))
    return chain


def _strip_bearer(value: str) -> str:
    v = value.strip()
    if v[:7].lower() == "bearer ":
        v = v[7:].strip()
    return v


def bearer_from(
    headers: MultiMapping[str],
    query_string: str,
    query: Callable[[], MultiMapping[str]],
    *,
    allow_query: bool,
) -> tuple[str | None, str]:
    """The bearer credential and where it came from ("header", "query" or "").

    ``headers`` is a case-insensitive multi-mapping (CIMultiDictProxy); ``query`` gives the
    parsed query (only called when a query token may be used)."""
    values = headers.getall("Authorization", [])
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    if values:
        scheme, _, rest = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated(
                f"unsupported authorization scheme {scheme[:20]!r}; use Bearer",
                bearer_error="invalid_request",
            )
        return rest.strip(), "header"
    if allow_query and query_string:
        parsed = query()
        for key in ("authz", "access_token"):
            found = parsed.getall(key, [])
            if len(found) > 1:
                raise BadRequest(f"more than one {key} query parameter")
            if found:
                return _strip_bearer(unquote(found[0]) if "%20" in found[0] else found[0]), (
                    "query"
                )
    return None, ""


def credentials_from(
    headers: MultiMapping[str],
    query_string: str,
    query: Callable[[], MultiMapping[str]],
    transport: asyncio.BaseTransport | None,
    holder: Any,
    host: str,
    client_ip: str,
    *,
    allow_query: bool,
) -> Credentials:
    bearer, source = bearer_from(headers, query_string, query, allow_query=allow_query)
    return Credentials(
        bearer=bearer,
        bearer_source=source,
        peer_chain=peer_chain(transport, holder),
        client_ip=client_ip,
        host=host,
    )


def peer_ip(transport: asyncio.BaseTransport | None) -> str:
    """The client's address ("" when the transport has none, e.g. a Unix socket)."""
    peer = transport.get_extra_info("peername") if transport else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def credentials_from_request(request: web.Request, *, allow_query: bool) -> Credentials:
    return credentials_from(
        request.headers,
        request.query_string,
        lambda: request.query,
        request.transport,
        request.protocol,
        request.host,
        peer_ip(request.transport),
        allow_query=allow_query,
    )
