"""COPY request headers -> TransferRequest. Pure: no I/O, no aiohttp.

Rules (PROTOCOLS.md §4.1-4.2, field reports B21, B25, B26):

* ``Source: <url>`` = pull (the request path is the local destination); a remote
  ``Destination: <url>`` = push (the request path is the local source). Both, neither, or a
  header given twice -> 400. Whether a Destination names this server is decided by the caller
  (``is_local``); a local one never reaches this module.
* Schemes ``http``/``https``; ``dav``/``davs`` become ``http``/``https``; anything else -> 400.
  The rest of the URL is kept byte for byte: no decoding, no re-encoding, query string intact
  (signed URLs, ``?copy_mode=pull``; B26). Only characters that may not appear in a URL at all
  (space, non-ASCII) are percent-encoded; control characters, malformed ``%`` escapes, a
  fragment or userinfo -> 400.
* ``TransferHeader<Name>: v`` (prefix case-insensitive, XRootD/StoRM/dCache) and XRootD's
  ``Copy-Header: <Name>: v`` are sent to the remote as ``<Name>: v`` on every request. Names
  that are well known get their canonical spelling, because XRootD 5.5.3 compares header names
  case-sensitively (PEERS.md §4). Hop-by-hop and framing headers (Host, Content-Length,
  Transfer-Encoding, Connection, Expect, Range, ...) are dropped: the active party owns them
  (draft-http-tpc "ignore dangerous ones"). The client's own ``Authorization`` is never a
  forwarded header (B21).
* ``Credential``: absent or ``none``; anything else (``gridsite``, ``oidc``) -> 400, since there
  is no delegation service (§4.6).
* ``Overwrite`` T/F (default T); ``RequireChecksumVerification`` true/false (default false, as
  StoRM and XRootD; gfal2 always sends it); anything else -> 400.
* ``X-Number-Of-Streams``: an integer; 0 means 1 (XRootD, gfal2 sends 0 by default); above
  ``max_streams`` it is clamped rather than refused, so a client asking for many streams still
  gets its copy. Non-numeric or negative -> 400.
* ``Copy-Flags: NoHead`` (gfal2 for S3 targets): skip the HEAD before a pull.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote

from segate.errors import BadRequest


class Mode(enum.StrEnum):
    PULL = "pull"
    PUSH = "push"


@dataclass(frozen=True, slots=True)
class TransferRequest:
    mode: Mode
    #: absolute http(s) URL of the passive party, otherwise exactly as the client sent it
    remote: str
    #: headers for every request to the remote: (name, value), canonical names
    headers: tuple[tuple[str, str], ...] = ()
    overwrite: bool = True
    require_checksum: bool = False
    streams: int = 1
    no_head: bool = False


PREFIX = "transferheader"
#: never forwarded: hop-by-hop (RFC 9110 §7.6.1), framing, and what the engine sets itself
DROPPED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "range",
        "if-range",
        "content-range",
        "content-encoding",
        "accept-encoding",
        "want-digest",
        "want-repr-digest",
        "source",
        "destination",
        "overwrite",
    }
)
#: canonical spellings (XRootD 5.5.3 matches header names with strcmp)
CANONICAL = {
    n.lower(): n
    for n in (
        "Authorization",
        "Cookie",
        "ArchiveMetadata",
        "SciTag",
        "Digest",
        "Repr-Digest",
        "Content-Type",
        "Content-MD5",
        "ClientInfo",
        "User-Agent",
        "Accept",
        "X-Auth-Token",
    )
}
#: forwarded headers that carry a credential: never sent to another host after a redirect
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "x-auth-token"})


def forwarded_secrets(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The credentials among forwarded headers: each whole value, and for ``<scheme> <cred>``
    the credential alone (a remote may echo either in an error body)."""
    out: list[str] = []
    for name, value in headers:
        if name.lower() in CREDENTIAL_HEADERS:
            out.append(value.strip())
            cred = value.strip().partition(" ")[2]
            if cred.strip():
                out.append(cred.strip())
    return out


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SCHEMES = {"http": "http", "https": "https", "dav": "http", "davs": "https"}
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# a DNS name or an IPv6 literal; nothing exotic that URL parsers disagree about (SSRF)
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")
# RFC 3986 characters that may stand in a URL as they are; '%' only as part of an escape
_URL_SAFE = "!#$&'()*+,/:;=?@[]~-._%"
_MAX_STREAM_DIGITS = 6


def _one(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name]
    if len(values) > 1:
        raise BadRequest(f"more than one {name.title()} header")
    return values[0].strip(" \t") if values else None


def _check_chars(value: str, what: str) -> None:
    for ch in value:
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            raise BadRequest(f"control character in {what}")


def normalize_remote(raw: str) -> str:
    """Validate a remote URL and map dav(s) to http(s); everything after the scheme is kept."""
    _check_chars(raw, "the remote URL")
    m = _URL.fullmatch(raw)
    if m is None:
        if "#" in raw:
            raise BadRequest("the remote URL must not contain a fragment")
        raise BadRequest("the remote URL must be an absolute http(s) or dav(s) URL")
    scheme = _SCHEMES.get(m.group(1).lower())
    if scheme is None:
        raise BadRequest(f"unsupported scheme {m.group(1)[:10]!r} (use https, http, davs, dav)")
    authority, rest = m.group(2), m.group(3)
    if "@" in authority:
        raise BadRequest("credentials in the remote URL are not accepted")
    if authority.startswith("["):
        host, bracket, tail = authority.partition("]")
        host += bracket
        port = tail[1:] if tail.startswith(":") else tail
        if tail and not tail.startswith(":"):
            raise BadRequest("the remote URL has a bad host")
    else:
        host, _, port = authority.partition(":")
    if not host or not _HOST.fullmatch(host):
        raise BadRequest("the remote URL has a bad host")
    if port and not (
        port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536
    ):
        raise BadRequest("the remote URL has a bad port")
    if _BAD_ESCAPE.search(rest):
        raise BadRequest("malformed percent-escape in the remote URL")
    rest = quote(rest, safe=_URL_SAFE)  # only what may not appear in a URL at all
    return f"{scheme}://{authority}{rest or '/'}"


def _forwarded(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for name, value in headers:
        low = name.lower()
        if low.startswith(PREFIX) and len(name) > len(PREFIX):
            fname, fvalue = name[len(PREFIX) :], value
        elif low == "copy-header":
            fname, sep, fvalue = value.partition(":")
            if not sep:
                raise BadRequest("Copy-Header must be 'Name: value'")
        else:
            continue
        fname, fvalue = fname.strip(" \t"), fvalue.strip(" \t")
        if not _TOKEN.fullmatch(fname):
            raise BadRequest("a forwarded header name is not a valid token")
        _check_chars(fvalue, f"forwarded header {fname[:40]}")
        flow = fname.lower()
        if flow in DROPPED:
            continue
        out.append((CANONICAL.get(flow, fname), fvalue))
    auth = [v for n, v in out if n.lower() == "authorization"]
    if len(auth) > 1:
        raise BadRequest("more than one forwarded Authorization header")
    return tuple(out)


def _boolean(value: str | None, name: str, default: bool) -> bool:
    if value is None:
        return default
    v = value.lower()
    if v == "true":
        return True
    if v == "false":
        return False
    raise BadRequest(f"{name} must be true or false")


def _overwrite(value: str | None) -> bool:
    if value is None:
        return True
    v = value.upper()
    if v in ("T", "F"):
        return v == "T"
    raise BadRequest("Overwrite must be T or F")


def _streams(value: str | None, max_streams: int) -> int:
    if value is None or value == "":
        return 1
    if not (value.isascii() and value.isdigit()) or len(value) > _MAX_STREAM_DIGITS:
        raise BadRequest("X-Number-Of-Streams must be a non-negative integer")
    return max(1, min(int(value), max_streams))


def parse_transfer(
    headers: Iterable[tuple[str, str]],
    *,
    is_local: Callable[[str], bool],
    max_streams: int,
) -> TransferRequest:
    """Read a third-party COPY. ``is_local(url)``: does a Destination URL name this server."""
    hs = list(headers)
    source = _one(hs, "source")
    destination = _one(hs, "destination")
    if source is not None and destination is not None:
        raise BadRequest("COPY with both Source and Destination")
    if source is None and (destination is None or is_local(destination)):
        raise BadRequest("third-party COPY needs Source or a remote Destination")
    credential = _one(hs, "credential")
    if credential is not None and credential.lower() != "none":
        raise BadRequest(
            f"unsupported Credential {credential[:20]!r}: only 'none' (no X.509 delegation); "
            "pass the remote's token as TransferHeaderAuthorization"
        )
    if source is not None:
        mode, raw = Mode.PULL, source
    else:
        assert destination is not None
        mode, raw = Mode.PUSH, destination
    flags = {f.strip(" \t").lower() for f in (_one(hs, "copy-flags") or "").split(",")}
    return TransferRequest(
        mode=mode,
        remote=normalize_remote(raw),
        headers=_forwarded(hs),
        overwrite=_overwrite(_one(hs, "overwrite")),
        require_checksum=_boolean(
            _one(hs, "requirechecksumverification"), "RequireChecksumVerification", False
        ),
        streams=_streams(_one(hs, "x-number-of-streams"), max_streams),
        no_head="nohead" in flags,
    )
