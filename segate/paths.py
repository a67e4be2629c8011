"""Logical paths: what a URL path or a scope path means inside the storage namespace.

Rules (PROTOCOLS.md §1.4, field report B02):

* A request path is percent-decoded exactly once, segment by segment. A malformed escape
  (``%``, ``%4``, ``%zz``), an encoded ``/`` or ``\\`` inside a segment, or a NUL/control
  character is a 400.
* Empty segments (``//``) and ``.`` disappear. A literal ``..`` pops one segment and is clamped
  at the root (``/../../a`` is ``/a``), as RFC 3986 §5.2.4 does for URLs. A ``..`` that only
  appears after decoding (``%2e%2e``) is refused: it was hidden on purpose.
* Scope and caveat paths are stricter (:func:`parse_scope_path`): any ``..`` segment, raw or
  encoded (up to four rounds, like scitokens-cpp PR #208), rejects the whole credential.
* Prefix tests are segment-wise: ``/foo`` covers ``/foo/bar`` but never ``/foobar``.

Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from segate.errors import BadRequest, UriTooLong

_HEX = frozenset("0123456789abcdefABCDEF")
#: what ``url_path`` leaves unescaped: quote()'s always-safe characters and these
_URL_SAFE_CHARS = "!$&'()*+,;=:@~-._"
#: a joined path ``quote(segment, safe=_URL_SAFE_CHARS)`` would return unchanged, plus "/"
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~!$&'()*+,;=:@/-]*")
#: a path segment the gateway keeps for itself (staging area, metadata); never reachable
RESERVED_SEGMENT = ".segate"
MAX_PATH_BYTES = 4096


class PathError(ValueError):
    """A path that cannot be accepted; the message says why."""


class PathTooLong(PathError):
    """Longer than MAX_PATH_BYTES (a request path: 414)."""


def _pct_decode(segment: str) -> str:
    """Decode %XX escapes once, strictly (UTF-8). Raise PathError on malformed input."""
    if "%" not in segment:
        return segment
    out = bytearray()
    i = 0
    n = len(segment)
    while i < n:
        c = segment[i]
        if c == "%":
            if i + 2 >= n:
                raise PathError("truncated percent-escape")
            h = segment[i + 1 : i + 3]
            if h[0] not in _HEX or h[1] not in _HEX:
                raise PathError("malformed percent-escape")
            out.append(int(h, 16))
            i += 3
        else:
            out.extend(c.encode("utf-8"))
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PathError("percent-escapes are not valid UTF-8") from exc


#: longest name a POSIX filesystem takes (NAME_MAX); longer is a client error, not ENAMETOOLONG
MAX_SEGMENT_BYTES = 255


def _check_segment_chars(seg: str) -> None:
    if len(seg) > MAX_SEGMENT_BYTES // 4 and len(seg.encode("utf-8", "surrogatepass")) > (
        MAX_SEGMENT_BYTES
    ):
        raise PathError(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    for ch in seg:
        if ch == "/" or ch == "\\":
            raise PathError("encoded path separator in a segment")
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            raise PathError("control character in path")
        if 0xD800 <= o <= 0xDFFF:
            raise PathError("path is not valid UTF-8")


@dataclass(frozen=True, slots=True)
class LogicalPath:
    """An absolute, normalised path: a tuple of decoded segments. ``()`` is the root ``/``."""

    segments: tuple[str, ...] = ()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def root(cls) -> LogicalPath:
        return cls(())

    @classmethod
    def from_plain(cls, path: str) -> LogicalPath:
        """From an already-decoded path (config files, tests). ``..`` is refused."""
        segs: list[str] = []
        for seg in path.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                raise PathError("'..' is not allowed")
            _check_segment_chars(seg)
            segs.append(seg)
        return cls(tuple(segs))

    # -- relations ----------------------------------------------------------------------------
    def is_within(self, other: LogicalPath) -> bool:
        """True if self is ``other`` or below it (segment-wise)."""
        n = len(other.segments)
        return len(self.segments) >= n and self.segments[:n] == other.segments

    def is_strict_ancestor_of(self, other: LogicalPath) -> bool:
        return len(self.segments) < len(other.segments) and other.is_within(self)

    def join(self, other: LogicalPath) -> LogicalPath:
        return LogicalPath(self.segments + other.segments)

    def child(self, name: str) -> LogicalPath:
        return LogicalPath((*self.segments, name))

    def relative_to(self, base: LogicalPath) -> LogicalPath:
        if not self.is_within(base):
            raise PathError(f"{self} is not below {base}")
        return LogicalPath(self.segments[len(base.segments) :])

    @property
    def parent(self) -> LogicalPath:
        return LogicalPath(self.segments[:-1])

    @property
    def name(self) -> str:
        return self.segments[-1] if self.segments else ""

    @property
    def is_root(self) -> bool:
        return not self.segments

    @property
    def is_reserved(self) -> bool:
        """Inside the gateway's own area (staging files): never served."""
        return bool(self.segments) and self.segments[0] == RESERVED_SEGMENT

    # -- rendering ----------------------------------------------------------------------------
    def __str__(self) -> str:
        return "/" + "/".join(self.segments)

    def url_path(self, *, collection: bool = False) -> str:
        """Percent-encoded for hrefs and Location headers; round-trips through parse_url_path."""
        joined = "/".join(self.segments)
        if _URL_SAFE.fullmatch(joined) and joined.count("/") == max(len(self.segments) - 1, 0):
            enc = "/" + joined  # nothing quote() would change (no segment holds a "/")
        else:
            enc = "/" + "/".join(quote(s, safe=_URL_SAFE_CHARS) for s in self.segments)
        if collection and not enc.endswith("/"):
            enc += "/"
        return enc


@dataclass(frozen=True, slots=True)
class RequestPath:
    """A parsed request target: the logical path and whether it ended with ``/``."""

    path: LogicalPath
    trailing_slash: bool


def parse_url_path(raw: str) -> RequestPath:
    """Parse the path part of a request target (query already removed). Raises BadRequest."""
    if len(raw) > MAX_PATH_BYTES:  # before any work; in bytes below
        raise UriTooLong(f"request path longer than {MAX_PATH_BYTES} bytes")
    try:
        return _parse_url_path(raw)
    except PathTooLong as exc:
        raise UriTooLong(f"request path longer than {MAX_PATH_BYTES} bytes") from exc
    except PathError as exc:
        raise BadRequest(f"bad request path: {exc}") from exc


#: a path :func:`_parse_url_path` can take without decoding or checking characters: printable
#: ASCII without ``%`` (no escape) and ``\\`` (no separator inside a segment), from ``/``
_PLAIN_PATH = re.compile(r"/[\x20-\x24\x26-\x5b\x5d-\x7e]*")


def _parse_url_path(raw: str) -> RequestPath:
    if _PLAIN_PATH.fullmatch(raw) is not None:
        # the general loop below for this input: one byte per character, nothing to decode, no
        # character _check_segment_chars refuses; only "."/".." and the lengths remain
        if len(raw) > MAX_PATH_BYTES:
            raise PathTooLong("path too long")
        plain: list[str] = []
        for seg in raw.split("/"):
            if seg == "" or seg == ".":
                continue
            if seg == "..":
                if plain:
                    plain.pop()
                continue
            if len(seg) > MAX_SEGMENT_BYTES:
                raise PathError(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
            plain.append(seg)
        return RequestPath(LogicalPath(tuple(plain)), raw != "/" and raw.endswith("/"))
    return _parse_url_path_general(raw)


def _parse_url_path_general(raw: str) -> RequestPath:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in raw):
        raise PathError("path is not valid UTF-8")
    if len(raw.encode("utf-8")) > MAX_PATH_BYTES:
        raise PathTooLong("path too long")
    if not raw.startswith("/"):
        raise PathError("path must be absolute")
    trailing = raw.endswith("/") and raw != "/"
    segs: list[str] = []
    for rawseg in raw.split("/"):
        if rawseg in ("", "."):
            continue
        if rawseg == "..":
            if segs:
                segs.pop()
            continue
        seg = _pct_decode(rawseg)
        if seg in (".", ".."):
            raise PathError("encoded dot-segment")
        if seg == "":
            continue
        _check_segment_chars(seg)
        segs.append(seg)
    return RequestPath(LogicalPath(tuple(segs)), trailing)


def parse_scope_path(raw: str) -> tuple[LogicalPath, bool]:
    """Parse a scope or caveat path strictly. Returns (path, directory_only).

    Raises PathError if the path is not absolute, contains ``..`` in any form (decoded up to
    four times), an encoded separator, a control character or a bad escape.
    """
    if not raw.startswith("/"):
        raise PathError("scope path must be absolute")
    dir_only = raw.endswith("/") and raw != "/"
    segs: list[str] = []
    for rawseg in raw.split("/"):
        seg = rawseg
        for _ in range(4):
            if seg in ("..",):
                raise PathError("'..' in scope path")
            if "%" not in seg:
                break
            seg = _pct_decode(seg)
        if "%" in seg and any(
            seg[i + 1 : i + 3] and all(c in _HEX for c in seg[i + 1 : i + 3])
            for i, c in enumerate(seg)
            if c == "%"
        ):
            raise PathError("too many rounds of percent-encoding in scope path")
        if seg == "..":
            raise PathError("'..' in scope path")
        if seg in ("", "."):
            continue
        _check_segment_chars(seg)
        segs.append(seg)
    return LogicalPath(tuple(segs)), dir_only
