"""PROPFIND/PROPPATCH bodies in, multistatus bodies out (RFC 4918 §9.1, §9.2, §14, §15). Pure.

Rules (PROTOCOLS.md §6.1; field report B18):

* Request bodies are parsed with defusedxml and no DTD at all: a DOCTYPE, an entity or an
  external reference is a 400, like malformed XML (litmus ``propfind_invalid``/``_invalid2``)
  and a root other than ``DAV:propfind`` holding exactly one of ``allprop`` (an ``include``
  beside it is accepted and needs nothing more: allprop already returns every live property),
  ``propname`` or ``prop``. A body over ``max_size`` is a 413 before parsing; an empty (or
  all-whitespace) body means ``allprop`` (§9.1). Elements in other namespaces are ignored
  (§17).
* Responses use the ``D:`` prefix for ``DAV:``. Each ``response`` has first one ``200``
  propstat with every property found (empty ``<D:prop/>`` if none, so davix, which keeps one
  entry per 2xx propstat, still sees the resource) and then, for ``prop`` requests only, one
  ``404`` propstat with the rest. Entries come in the caller's order (collection first).
* Live properties: ``resourcetype`` (``<D:collection/>`` for collections), ``displayname``,
  ``getlastmodified`` (IMF-fixdate, RFC 9110 §5.6.7), ``creationdate`` (RFC 3339, §15.1),
  ``getetag`` (quoted), and for files only ``getcontentlength`` (exact, any size) and
  ``getcontenttype``. ``iscollection`` (``1``/``0``, an XRootD extension) is answered only
  when asked for by name. On a collection, a requested ``getcontentlength`` is a 404 property.
* PROPPATCH (§9.2, §14.19): a ``DAV:propertyupdate`` with ``set``/``remove`` children, each
  holding one ``DAV:prop``; every element in it is one instruction, kept in document order. A set
  value is the whole property element re-serialized with its own namespace declarations
  (§4.3: namespaces, attributes and mixed content are kept; an inherited ``xml:lang`` is copied
  onto it, §4.4). Protected live properties (:data:`PROTECTED`) cannot be set or removed (403
  ``cannot-modify-protected-property``, the others 424, §9.2.1).
* Dead properties come from the caller as ``{PropName: serialized element}``; allprop and
  propname list them after the live ones, ``prop`` finds them by name. A stored value that is not
  a well-formed element of that name is left out (so nothing from storage can break the XML).
* Every string is escaped for XML; characters XML 1.0 cannot carry (controls, lone surrogates
  from undecodable file names) become U+FFFD, so the output is always well-formed UTF-8.
  ``href`` values come percent-encoded from the caller and are only XML-escaped here.
"""

from __future__ import annotations

import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException

from segate.errors import BadRequest, RequestTooLarge
from segate.storage.base import FileInfo

DAV_NS = "DAV:"
XML_NS = "http://www.w3.org/XML/1998/namespace"
#: Content-Type for 207 and error bodies (RFC 4918 §8.2)
XML_CONTENT_TYPE = 'application/xml; charset="utf-8"'

PropName = tuple[str, str]  # (namespace, local name); namespace "" = none
PropfindKind = Literal["allprop", "propname", "prop"]

_KINDS = ("allprop", "propname", "prop")
#: properties one PROPFIND ``prop`` may name; more is a 400. Each is answered for every entry,
#: so a 1 MB body naming 30,000 would multiply a Depth-1 response by that (amplification)
MAX_PROPFIND_PROPS = 256
# characters no XML name can hold; a cheap guard for PropfindRequest built by hand
_NOT_IN_NAME = re.compile(r"[\s<>&\"'/:=!?;,()\[\]{}]")


@dataclass(frozen=True, slots=True)
class PropfindRequest:
    kind: PropfindKind
    props: tuple[PropName, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"bad PROPFIND kind {self.kind!r}")
        for _, local in self.props:
            if not local or _NOT_IN_NAME.search(local):
                raise ValueError(f"bad property name {local!r}")


ALLPROP = PropfindRequest("allprop")
PROPNAME = PropfindRequest("propname")


def _split_tag(tag: str) -> PropName:
    if tag.startswith("{"):
        ns, _, local = tag[1:].rpartition("}")  # local names never hold "}"; URIs might
        return ns, local
    return "", tag


def _parse_body(body: bytes, method: str) -> ET.Element:
    try:
        root: ET.Element = DefusedET.fromstring(
            body, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException as exc:  # DTD, entity or external reference
        raise BadRequest(f"{method} body: DTDs and entities are not accepted") from exc
    # ParseError: not well-formed; LookupError/ValueError: unknown or unusable declared encoding
    except (ET.ParseError, LookupError, ValueError, UnicodeError) as exc:
        raise BadRequest(f"{method} body is not well-formed XML") from exc
    return root


def parse_propfind(body: bytes, *, max_size: int) -> PropfindRequest:
    """Parse a PROPFIND body. Raises RequestTooLarge or BadRequest, nothing else."""
    if len(body) > max_size:
        raise RequestTooLarge(f"PROPFIND body over {max_size} bytes")
    if not body.strip():
        return ALLPROP
    root = _parse_body(body, "PROPFIND")
    if root.tag != f"{{{DAV_NS}}}propfind":
        raise BadRequest("PROPFIND body must be a DAV:propfind element")
    chosen: list[ET.Element] = []
    for child in root:
        if not isinstance(child.tag, str):
            continue  # comments / processing instructions, if a builder keeps them
        ns, local = _split_tag(child.tag)
        if ns == DAV_NS and local in _KINDS:
            chosen.append(child)
    if len(chosen) != 1:
        raise BadRequest("DAV:propfind needs exactly one of allprop, propname, prop")
    kind = _split_tag(chosen[0].tag)[1]
    if kind == "allprop":
        return ALLPROP
    if kind == "propname":
        return PROPNAME
    props: dict[PropName, None] = {}  # ordered set: request order, duplicates once
    for el in chosen[0]:
        if isinstance(el.tag, str):
            props[_split_tag(el.tag)] = None
            if len(props) > MAX_PROPFIND_PROPS:
                raise BadRequest(f"PROPFIND names more than {MAX_PROPFIND_PROPS} properties")
    return PropfindRequest("prop", tuple(props))


# -- PROPPATCH --------------------------------------------------------------------------------

_XML_LANG = f"{{{XML_NS}}}lang"
#: live properties a client can never set or remove (RFC 4918 §15, RFC 4331 quotas, XRootD)
PROTECTED: frozenset[PropName] = frozenset(
    (DAV_NS, n)
    for n in [
        "creationdate",
        "displayname",
        "getcontentlength",
        "getcontenttype",
        "getetag",
        "getlastmodified",
        "resourcetype",
        "lockdiscovery",
        "supportedlock",
        "iscollection",
        "quota-used-bytes",
        "quota-available-bytes",
    ]
)


@dataclass(frozen=True, slots=True)
class PropUpdate:
    """One PROPPATCH instruction: set ``name`` to ``xml`` (the serialized element) or remove it."""

    name: PropName
    xml: str | None


def _serialize_property(el: ET.Element, lang: str | None) -> str:
    el.tail = None  # text after the element belongs to the enclosing DAV:prop
    if lang is not None and _XML_LANG not in el.attrib:
        el.set(_XML_LANG, lang)
    out: str = ET.tostring(el, encoding="unicode")
    return out


def parse_proppatch(body: bytes, *, max_size: int) -> tuple[PropUpdate, ...]:
    """Parse a PROPPATCH body. Raises RequestTooLarge or BadRequest, nothing else."""
    if len(body) > max_size:
        raise RequestTooLarge(f"PROPPATCH body over {max_size} bytes")
    if not body.strip():
        raise BadRequest("PROPPATCH needs a DAV:propertyupdate body")
    root = _parse_body(body, "PROPPATCH")
    if root.tag != f"{{{DAV_NS}}}propertyupdate":
        raise BadRequest("PROPPATCH body must be a DAV:propertyupdate element")
    updates: list[PropUpdate] = []
    seen_instruction = False
    for action in root:
        if not isinstance(action.tag, str):
            continue
        ns, kind = _split_tag(action.tag)
        if ns != DAV_NS or kind not in ("set", "remove"):
            continue  # unknown elements are ignored (§17)
        seen_instruction = True
        lang = action.get(_XML_LANG, root.get(_XML_LANG))
        props = [c for c in action if isinstance(c.tag, str) and c.tag == f"{{{DAV_NS}}}prop"]
        if len(props) != 1:
            raise BadRequest(f"DAV:{kind} must hold exactly one DAV:prop")
        prop_lang = props[0].get(_XML_LANG, lang)
        for el in props[0]:
            if not isinstance(el.tag, str):
                continue
            name = _split_tag(el.tag)
            if not name[1] or _NOT_IN_NAME.search(name[1]):
                raise BadRequest("bad property name")
            xml = _serialize_property(el, prop_lang) if kind == "set" else None
            updates.append(PropUpdate(name, xml))
    if not seen_instruction:
        raise BadRequest("DAV:propertyupdate needs a DAV:set or DAV:remove")
    return tuple(updates)


def clark(name: PropName) -> str:
    """``{namespace}local``: how a property name is keyed in storage."""
    return f"{{{name[0]}}}{name[1]}"


def from_clark(key: str) -> PropName | None:
    if not key.startswith("{") or "}" not in key:
        return None
    ns, _, local = key[1:].rpartition("}")
    return (ns, local) if local and not _NOT_IN_NAME.search(local) else None


def dead_properties(stored: Mapping[str, str]) -> dict[PropName, str]:
    """Storage's ``{clark: xml}`` as ``{PropName: xml}``, keeping only well-formed entries."""
    out: dict[PropName, str] = {}
    for key, xml in stored.items():
        name = from_clark(key)
        if name is None:
            continue
        try:
            el = DefusedET.fromstring(
                xml.encode("utf-8"), forbid_dtd=True, forbid_entities=True, forbid_external=True
            )
        except (DefusedXmlException, ET.ParseError, ValueError, UnicodeError):
            continue
        if _split_tag(el.tag) == name:
            out[name] = xml
    return out


# -- rendering -------------------------------------------------------------------------------

_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\r": "&#13;",
        "\n": "&#10;",
        "\t": "&#9;",
    }
)
_HEAD = '<?xml version="1.0" encoding="utf-8"?>\n'
_OK = "HTTP/1.1 200 OK"
_NOT_FOUND = "HTTP/1.1 404 Not Found"
#: latest instant an IMF-fixdate (4-digit year) can show: 9999-12-31T23:59:59Z
_MAX_TIMESTAMP = 253402300799


def _text(s: str) -> str:
    if s.isascii() and s.isprintable():  # no control character: nothing for _NOT_XML_CHAR
        if "&" in s or "<" in s or ">" in s:
            return s.translate(_TEXT_ESCAPES)
        return s
    return _NOT_XML_CHAR.sub("\ufffd", s).translate(_TEXT_ESCAPES)


def _attr(s: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", s).translate(_ATTR_ESCAPES)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _second(ts: float) -> int:
    """The whole second a date shows for ``ts``: clamped to 1970..9999, NaN/inf the epoch."""
    if not math.isfinite(ts):
        return 0
    return int(min(max(ts, 0.0), _MAX_TIMESTAMP))


#: formatted dates by timestamp (a file stat'ed again has the same one; NaN never matches
#: and is formatted each time); emptied when it reaches _DATES_MAX entries
_HTTP_DATES: dict[float, str] = {}
_RFC3339_DATES: dict[float, str] = {}
_DATES_MAX = 4096


def http_date(ts: float) -> str:
    """IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT`` (RFC 9110 §5.6.7); locale-free.

    The same text as ``email.utils.format_datetime(..., usegmt=True)``, without a datetime.
    """
    text = _HTTP_DATES.get(ts)
    if text is None:
        y, mo, d, h, mi, s, wd, _, _ = time.gmtime(_second(ts))
        # email.utils' own format string; printf-style is cheaper than f-string format specs
        text = "%s, %02d %s %04d %02d:%02d:%02d GMT" % (  # noqa: UP031
            _WEEKDAYS[wd],
            d,
            _MONTHS[mo],
            y,
            h,
            mi,
            s,
        )
        if len(_HTTP_DATES) >= _DATES_MAX:
            _HTTP_DATES.clear()
        _HTTP_DATES[ts] = text
    return text


def rfc3339_date(ts: float) -> str:
    text = _RFC3339_DATES.get(ts)
    if text is None:
        text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_second(ts)))  # locale-free
        if len(_RFC3339_DATES) >= _DATES_MAX:
            _RFC3339_DATES.clear()
        _RFC3339_DATES[ts] = text
    return text


def _quoted_etag(etag: str) -> str:
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def live_properties(info: FileInfo) -> dict[str, str]:
    """DAV: local name -> element content (already XML), for allprop and propname."""
    props = {
        "resourcetype": "<D:collection/>" if info.is_dir else "",
        "displayname": _text(info.path.name),
        "getlastmodified": http_date(info.mtime),
        "creationdate": rfc3339_date(info.ctime),
    }
    if info.etag:
        props["getetag"] = _text(_quoted_etag(info.etag))
    if not info.is_dir:
        props["getcontentlength"] = str(info.size)
        props["getcontenttype"] = "application/octet-stream"
    return props


def _live_elements(info: FileInfo) -> str:
    """``_element(DAV_NS, k, v)`` for every ``live_properties(info)`` item, in order, joined."""
    name = _text(info.path.name)
    out = (
        ("<D:resourcetype><D:collection/></D:resourcetype>" if info.is_dir else "<D:resourcetype/>")
        + (f"<D:displayname>{name}</D:displayname>" if name else "<D:displayname/>")
        + f"<D:getlastmodified>{http_date(info.mtime)}</D:getlastmodified>"
        f"<D:creationdate>{rfc3339_date(info.ctime)}</D:creationdate>"
    )
    if info.etag:
        out += f"<D:getetag>{_text(_quoted_etag(info.etag))}</D:getetag>"
    if not info.is_dir:
        out += (
            f"<D:getcontentlength>{info.size!s}</D:getcontentlength>"
            "<D:getcontenttype>application/octet-stream</D:getcontenttype>"
        )
    return out


#: ``_element(DAV_NS, k)`` for every live property name, by (is_dir, has etag)
_LIVE_NAMES = {
    (is_dir, etag): "".join(
        f"<D:{k}/>"
        for k in (
            "resourcetype",
            "displayname",
            "getlastmodified",
            "creationdate",
            *(("getetag",) if etag else ()),
            *(() if is_dir else ("getcontentlength", "getcontenttype")),
        )
    )
    for is_dir in (False, True)
    for etag in (False, True)
}


def _on_request_properties(info: FileInfo) -> dict[str, str]:
    return {"iscollection": "1" if info.is_dir else "0"}


#: one live property's content (as ``live_properties`` and ``_on_request_properties`` give
#: it), or None where that property does not exist for ``info``
_LIVE_VALUE: dict[str, Callable[[FileInfo], str | None]] = {
    "resourcetype": lambda i: "<D:collection/>" if i.is_dir else "",
    "displayname": lambda i: _text(i.path.name),
    "getlastmodified": lambda i: http_date(i.mtime),
    "creationdate": lambda i: rfc3339_date(i.ctime),
    "getetag": lambda i: _text(_quoted_etag(i.etag)) if i.etag else None,
    "getcontentlength": lambda i: None if i.is_dir else str(i.size),
    "getcontenttype": lambda i: None if i.is_dir else "application/octet-stream",
    "iscollection": lambda i: "1" if i.is_dir else "0",
}


def _element(ns: str, local: str, content: str = "") -> str:
    if ns == DAV_NS:
        name, decl = f"D:{local}", ""
    elif ns == XML_NS:
        name, decl = f"xml:{local}", ""  # the xml prefix is bound by definition
    elif ns == "":
        name, decl = local, ""  # no default namespace is ever declared, so this is "none"
    else:
        name, decl = f"ns0:{local}", f' xmlns:ns0="{_attr(ns)}"'
    if content:
        return f"<{name}{decl}>{content}</{name}>"
    return f"<{name}{decl}/>"


def _propstat(elements: Iterable[str], status: str) -> str:
    inner = "".join(elements)
    prop = f"<D:prop>{inner}</D:prop>" if inner else "<D:prop/>"
    return f"<D:propstat>{prop}<D:status>{status}</D:status></D:propstat>"


_MULTISTATUS_HEAD = f'{_HEAD}<D:multistatus xmlns:D="{DAV_NS}">'
_OK_TAIL = f"</D:prop><D:status>{_OK}</D:status></D:propstat>"


def _response(
    info: FileInfo, request: PropfindRequest, href: str, dead: Mapping[PropName, str]
) -> str:
    head = f"<D:response><D:href>{_text(href)}</D:href>"
    if request.kind == "allprop":  # never an empty prop: resourcetype is always there
        values = _live_elements(info)
        if dead:
            values += "".join(dead.values())
        return f"{head}<D:propstat><D:prop>{values}{_OK_TAIL}</D:response>"
    if request.kind == "propname":
        names = _LIVE_NAMES[info.is_dir, bool(info.etag)]
        if dead:
            names += "".join(_element(ns, local) for ns, local in dead)
        return f"{head}<D:propstat><D:prop>{names}{_OK_TAIL}</D:response>"
    found: list[str] = []
    missing: list[str] = []
    for ns, local in request.props:
        value = _LIVE_VALUE[local](info) if ns == DAV_NS and local in _LIVE_VALUE else None
        if value is not None:  # only the properties asked for are computed
            found.append(_element(ns, local, value))
        elif (ns, local) in dead:
            found.append(dead[(ns, local)])
        else:
            missing.append(_element(ns, local))
    parts = [head, _propstat(found, _OK)]
    if missing:
        parts.append(_propstat(missing, _NOT_FOUND))
    parts.append("</D:response>")
    return "".join(parts)


def needs_dead_properties(request: PropfindRequest) -> bool:
    """Whether answering ``request`` may need dead properties (else skip reading them)."""
    return request.kind != "prop" or any(name not in PROTECTED for name in request.props)


def render_multistatus(
    entries: list[FileInfo],
    request: PropfindRequest,
    *,
    href_of: Callable[[FileInfo], str],
    dead: Sequence[Mapping[PropName, str]] | None = None,
) -> bytes:
    """A 207 body: one ``response`` per entry, in order (put the requested resource first).

    ``href_of`` returns the percent-encoded href (collections ending in ``/``); ``dead`` holds
    each entry's dead properties (see :func:`dead_properties`), in the same order.
    """
    body = [_MULTISTATUS_HEAD]
    for i, info in enumerate(entries):
        body.append(_response(info, request, href_of(info), dead[i] if dead else {}))
    body.append("</D:multistatus>\n")
    return "".join(body).encode("utf-8")


def render_propname(entries: list[FileInfo], *, href_of: Callable[[FileInfo], str]) -> bytes:
    """A 207 body answering ``<D:propname/>``: the names of the live properties, no values."""
    return render_multistatus(entries, PROPNAME, href_of=href_of)


def render_proppatch(href: str, results: Sequence[tuple[PropName, int]]) -> bytes:
    """The 207 answer to a PROPPATCH: one propstat per status, names only (§9.2.1).

    A 403 propstat carries the ``cannot-modify-protected-property`` condition (§16).
    """
    by_status: dict[int, dict[PropName, None]] = {}
    for name, status in results:
        by_status.setdefault(status, {})[name] = None
    parts = [_HEAD, f'<D:multistatus xmlns:D="{DAV_NS}">']
    parts.append(f"<D:response><D:href>{_text(href)}</D:href>")
    for status, names in by_status.items():
        line = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"
        inner = "".join(_element(ns, local) for ns, local in names)
        parts.append(f"<D:propstat><D:prop>{inner}</D:prop><D:status>{line}</D:status>")
        if status == 403:
            parts.append("<D:error><D:cannot-modify-protected-property/></D:error>")
        parts.append("</D:propstat>")
    parts.append("</D:response></D:multistatus>\n")
    return "".join(parts).encode("utf-8")


_CONDITION = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")


def error_body(condition: str) -> bytes:
    """``<D:error><D:{condition}/></D:error>`` (RFC 4918 §16), e.g. propfind-finite-depth."""
    if not _CONDITION.fullmatch(condition):
        raise ValueError(f"bad DAV: condition name {condition!r}")
    return f'{_HEAD}<D:error xmlns:D="{DAV_NS}"><D:{condition}/></D:error>\n'.encode()
