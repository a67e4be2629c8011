"""WebDAV / HTTP request headers -> plain values; digest formatting. Pure: no I/O.

Rules (PROTOCOLS.md §4.2, §6; field reports B19, B20, B28):

* ``Range`` (RFC 9110 §14.1-14.2): only the ``bytes`` unit. A header we may ignore is ignored
  (``None`` = serve 200 with the full body): another unit, a syntactically invalid range set, a
  range with ``last < first`` (§14.1.1 "invalid"), or a position with more than 30 digits. More
  than :data:`MAX_RANGES` ranges is a 400, decided before anything is sent (B19: one clean
  response, never a 206 followed by an error). Ranges that start at or beyond the end are
  dropped; if none is left the answer is 416 with ``Content-Range: bytes */<size>`` (§14.1.2,
  §15.5.17). Ranges are clamped to the size and returned as inclusive ``(first, last)`` pairs in
  the client's order; overlaps are kept. A zero-length file has no satisfiable int-range; a
  suffix range on it is satisfiable but selects nothing, so it yields ``None`` (200, empty).
* ``Depth`` (RFC 4918 §10.2) ``0``, ``1`` or ``infinity``; ``Overwrite`` (§10.6) ``T`` or ``F``,
  absent = ``T``. ABNF literals are case-insensitive (RFC 5234 §2.3). Anything else is a 400.
* ``Destination`` (RFC 4918 §10.3): an absolute ``http``/``https``/``dav``/``davs`` URL or an
  absolute path (local). A URL is local when its authority is in ``local_hosts``; a default port
  (443 for https/davs, 80 for http/dav) matches both ``host`` and ``host:port``. Control
  characters, a fragment, userinfo-only or empty hosts and bad ports are 400. Remote URLs are
  kept verbatim (query included) for third-party copy (§4.1).
* ``Want-Digest`` (RFC 3230 §4.3.1): algorithm names are case-insensitive; q-values rank them
  (ties keep the client's order; ``q=0`` or an unreadable q excludes an entry). Exactly one
  supported algorithm is answered, because StoRM's TPC only understands a single-valued
  ``Digest: adler32=...`` (§6.2). Never raises: a bad header means "no digest" (B20, xrootd#1707).
* Digest values (B20): adler32 and crc32c are 8 lowercase hex digits, zero-padded; md5 is the
  base64 of the 16 raw bytes.
* ``Content-Length`` (RFC 9110 §8.6, B28): digits only; repeated values (as several fields or a
  comma list) must all be equal, else 400.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from segate.errors import BadRequest, RangeNotSatisfiable
from segate.paths import RequestPath, parse_url_path

#: ranges accepted in one Range header (davix vector reads stay far below: ~3900 header bytes)
MAX_RANGES = 200
#: longest accepted byte position; 10**30 bytes is beyond any storage, longer numbers are noise
_MAX_POS_DIGITS = 30

_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
_OWS = " \t"


def _position(digits: str) -> int | None:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_POS_DIGITS else None


def parse_range(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable byte ranges of a ``size``-byte representation, or ``None`` to send it all.

    Raises BadRequest for more than MAX_RANGES ranges and RangeNotSatisfiable (with a
    ``Content-Range: bytes */size`` header) when no range is satisfiable.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    if header is None:
        return None
    unit, eq, range_set = header.strip(_OWS).partition("=")
    if not eq or unit.strip(_OWS).lower() != "bytes":
        return None  # §14.2: a recipient ignores a range unit it does not understand
    # §5.6.1: empty list elements are allowed and do not count
    specs = [s for s in (e.strip(_OWS) for e in range_set.split(",")) if s]
    if len(specs) > MAX_RANGES:
        raise BadRequest(f"too many ranges ({len(specs)} > {MAX_RANGES})")
    if not specs:
        return None
    ranges: list[tuple[int, int]] = []
    empty_suffix_ok = False
    for spec in specs:
        if m := _INT_RANGE.fullmatch(spec):
            first = _position(m.group(1))
            last = _position(m.group(2)) if m.group(2) else None
            if first is None or (m.group(2) and last is None):
                return None
            if last is not None and last < first:
                return None  # §14.1.1: invalid range-spec -> ignore the whole header
            if first < size:
                ranges.append((first, size - 1 if last is None else min(last, size - 1)))
        elif m := _SUFFIX_RANGE.fullmatch(spec):
            length = _position(m.group(1))
            if length is None:
                return None
            if length > 0:
                if size == 0:
                    empty_suffix_ok = True
                else:
                    ranges.append((max(0, size - length), size - 1))
        else:
            return None
    if ranges:
        return ranges
    if empty_suffix_ok:
        return None
    raise RangeNotSatisfiable("no satisfiable range", headers={"Content-Range": f"bytes */{size}"})


_DEPTHS = ("0", "1", "infinity")


def parse_depth(value: str | None, *, default: str) -> str:
    """``"0"``, ``"1"`` or ``"infinity"``; ``default`` when the header is absent."""
    if value is None:
        if default not in _DEPTHS:
            raise ValueError(f"bad default depth {default!r}")
        return default
    depth = value.strip(_OWS).lower()
    if depth not in _DEPTHS:
        raise BadRequest("Depth must be 0, 1 or infinity")
    return depth


def parse_overwrite(value: str | None) -> bool:
    """``Overwrite: T`` (or absent) is True, ``F`` is False."""
    if value is None:
        return True
    flag = value.strip(_OWS).upper()
    if flag == "T":
        return True
    if flag == "F":
        return False
    raise BadRequest("Overwrite must be T or F")


@dataclass(frozen=True, slots=True)
class Destination:
    """A parsed ``Destination`` header. ``path`` is set only for this server's URLs."""

    url: str
    is_local: bool
    path: RequestPath | None


_SCHEME_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?]*)(.*)")
_DEFAULT_PORTS = {"http": 80, "dav": 80, "https": 443, "davs": 443}
_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")
_IP_LITERAL = re.compile(r"\[[0-9A-Za-z:.%_~-]+\]")


def _check_header_chars(value: str, what: str) -> None:
    for ch in value:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF:
            raise BadRequest(f"control or undecodable character in {what}")


def _split_authority(authority: str) -> tuple[str, int | None]:
    """(lowercase host without trailing dot, port or None). Raises BadRequest."""
    hostport = authority.rpartition("@")[2]  # userinfo never decides locality
    if hostport.startswith("["):
        host, bracket, rest = hostport.partition("]")
        host += bracket
        if not _IP_LITERAL.fullmatch(host) or (rest and not rest.startswith(":")):
            raise BadRequest("Destination has a bad IP literal")
        port_s = rest[1:] if rest else None
    else:
        host, colon, port_s_ = hostport.partition(":")
        port_s = port_s_ if colon else None
        if not _REG_NAME.fullmatch(host):
            raise BadRequest("Destination has a bad host")
    port: int | None = None
    if port_s is not None and port_s != "":  # RFC 3986 §3.2.3: an empty port is allowed
        if not (port_s.isascii() and port_s.isdigit() and len(port_s) <= 5):
            raise BadRequest("Destination has a bad port")
        port = int(port_s)
        if port > 65535:
            raise BadRequest("Destination has a bad port")
    host = host.lower()
    if host.endswith(".") and not host.startswith("["):
        host = host[:-1]
    if not host:
        raise BadRequest("Destination has an empty host")
    return host, port


def parse_destination(value: str, *, local_hosts: set[str]) -> Destination:
    """Parse ``Destination``. ``local_hosts``: lowercase ``host`` / ``host:port`` of this server."""
    value = value.strip(_OWS)
    _check_header_chars(value, "Destination")
    if "#" in value:
        raise BadRequest("Destination must not contain a fragment")
    if value.startswith("/") and not value.startswith("//"):
        return Destination(value, True, parse_url_path(value.partition("?")[0]))
    m = _SCHEME_URL.fullmatch(value)
    if m is None:
        raise BadRequest("Destination must be an absolute URL or an absolute path")
    scheme = m.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise BadRequest(f"unsupported Destination scheme {scheme!r}")
    host, port = _split_authority(m.group(2))
    default = _DEFAULT_PORTS[scheme]
    candidates = {host, f"{host}:{default}"} if port in (None, default) else {f"{host}:{port}"}
    if candidates.isdisjoint(local_hosts):
        return Destination(value, False, None)
    path = m.group(3).partition("?")[0] or "/"
    return Destination(value, True, parse_url_path(path))


_Q_VALUE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{0,6})?|\.[0-9]{1,6}")


def _q(params: str) -> float:
    q = 1.0
    for param in params.split(";"):
        name, _, raw = param.partition("=")
        if name.strip(_OWS).lower() != "q":
            continue
        raw = raw.strip(_OWS)
        q = float(raw) if _Q_VALUE.fullmatch(raw) else 0.0
        if not 0.0 <= q <= 1.0:
            q = 0.0
    return q


def negotiate_digest(
    want_digest: str | None, supported: tuple[str, ...] = ("adler32", "md5", "crc32c")
) -> list[str]:
    """The supported algorithm to answer ``Want-Digest`` with: ``[]`` or one lowercase name."""
    if not want_digest:
        return []
    usable = {s.lower() for s in supported}
    seen: set[str] = set()
    best: str | None = None
    best_q = 0.0
    for item in want_digest.split(","):
        name, _, params = item.partition(";")
        name = name.strip(_OWS).lower()
        if not name or name in seen:
            continue  # the first mention of an algorithm is the one that counts
        seen.add(name)
        q = _q(params)
        if name in usable and q > best_q:  # strict: ties keep the client's order
            best, best_q = name, q
    return [best] if best is not None else []


_ALGO_TOKEN = re.compile(r"[a-z0-9][a-z0-9-]*")
_DIGEST_VALUE = re.compile(r"[A-Za-z0-9+/]+=*")


def format_digest(algorithm: str, value: str) -> str:
    """``adler32=0004000a``: one ``Digest`` header value (RFC 3230 §4.3.2)."""
    algorithm = algorithm.lower()
    if not _ALGO_TOKEN.fullmatch(algorithm) or not _DIGEST_VALUE.fullmatch(value):
        raise ValueError(f"not a digest: {algorithm!r}={value!r}")
    return f"{algorithm}={value}"


def _hex32(v: int, name: str) -> str:
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{name} out of range: {v}")
    return f"{v:08x}"


def adler32_hex(v: int) -> str:
    return _hex32(v, "adler32")


def crc32c_hex(v: int) -> str:
    return _hex32(v, "crc32c")


def md5_b64(digest: bytes) -> str:
    if len(digest) != 16:
        raise ValueError("an MD5 digest has 16 bytes")
    return base64.b64encode(digest).decode("ascii")


_CL_VALUE = re.compile(r"[0-9]{1,19}")
_MAX_CONTENT_LENGTH = 2**63 - 1


def parse_content_length(values: list[str]) -> int | None:
    """The request body length from every ``Content-Length`` field; ``None`` when absent."""
    if not values:
        return None
    lengths: set[int] = set()
    for field in values:
        for element in field.split(","):
            element = element.strip(_OWS)
            if not _CL_VALUE.fullmatch(element):
                raise BadRequest("invalid Content-Length")
            lengths.add(int(element))
    if len(lengths) != 1:
        raise BadRequest("conflicting Content-Length values")
    length = lengths.pop()
    if length > _MAX_CONTENT_LENGTH:
        raise BadRequest("invalid Content-Length")
    return length
