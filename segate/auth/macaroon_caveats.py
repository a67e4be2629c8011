"""Macaroon caveats: the identity caveat, caveat values, and the use-time checker. Pure.

Rules (PROTOCOLS.md §3.3, §3.5; field reports B04, B12):

* ``id:<base64url JSON>`` (:class:`MintedFor`) names the identity a macaroon was minted for:
  kind (``jwt``, ``x509``, ``admin``), subject, issuer, DN, VO, FQANs, groups, its capability
  grants as ``<permission>:<path>`` strings (a trailing ``/`` = directory only) or none (an
  identity credential, judged by ``[[rules]]`` at use time), and the restrictions the minter
  itself carried (a macaroon minted with a macaroon keeps every narrowing of its parent).
  It must be the first caveat and occur once, so a holder cannot append another identity.
* ``activity:A,B`` (names of §3.3; several caveats intersect), ``path:/p`` (absolute,
  percent-decoded once, ``.``/``..`` refused; several all apply, so they narrow, never widen),
  ``before:<ISO 8601>`` (fraction allowed; expired at ``before + leeway``, the JWT rule),
  ``ip:<addr|CIDR>,...`` (the client address must be in one; several intersect).
* Anything else, and anything malformed, fails. The checker only states facts: whether the
  request is allowed is ``authz.decide``'s business.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from segate.auth.durations import DurationError, parse_instant
from segate.auth.principal import Activity, Grant, Kind, Permission, Principal, Restriction
from segate.errors import BadRequest
from segate.paths import LogicalPath, PathError, parse_url_path

ADMIN_KIND = "admin"
_ACTIVITY_ORDER = {a: i for i, a in enumerate(Activity)}


class CaveatError(ValueError):
    """A caveat that is malformed or does not hold; the message says which (never the secret)."""


# -- identity caveat -------------------------------------------------------------------------
def _grant_str(g: Grant) -> str:
    slash = "/" if g.dir_only and not g.path.is_root else ""
    return f"{g.permission.value}:{g.path}{slash}"


def _grant_from(s: str) -> Grant:
    perm, sep, raw = s.partition(":")
    if not sep or not raw.startswith("/"):
        raise ValueError("bad grant")
    return Grant(Permission(perm), LogicalPath.from_plain(raw), raw.endswith("/") and raw != "/")


def _strs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return tuple(v)


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise ValueError("expected a string")
    return v


@dataclass(frozen=True, slots=True)
class MintedFor:
    """The identity a macaroon was minted for, carried in its ``id:`` caveat.

    ``grants`` is set when that identity was a capability credential (its scopes travel with the
    macaroon); None means an identity judged by ``[[rules]]`` at use time. ``restrictions`` are
    the minter's own (a macaroon minted with a macaroon keeps every narrowing of its parent).
    """

    kind: str
    subject: str = ""
    issuer: str | None = None
    dn: str | None = None
    vo: str | None = None
    fqans: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    grants: tuple[Grant, ...] | None = None
    restrictions: tuple[Restriction, ...] = ()

    @classmethod
    def of(cls, p: Principal) -> MintedFor:
        if p.is_anonymous:
            raise ValueError("an anonymous principal cannot hold a macaroon")
        kind = p.kind.value
        if p.kind is Kind.MACAROON:
            kind = p.via[0] if p.via else kind
        return cls(
            kind, p.subject, p.issuer, p.dn, p.vo, p.fqans, p.groups, p.capabilities, p.restrictions
        )

    @classmethod
    def admin(cls, subject: str = "segate-admin") -> MintedFor:
        root = LogicalPath.root()
        grants = tuple(
            Grant(p, root) for p in (Permission.READ, Permission.MODIFY, Permission.STAGE)
        )
        return cls(ADMIN_KIND, subject, grants=grants)

    def encode(self) -> str:
        doc: dict[str, Any] = {"k": self.kind, "s": self.subject}
        for key, val in (("i", self.issuer), ("d", self.dn), ("v", self.vo)):
            if val is not None:
                doc[key] = val
        if self.fqans:
            doc["f"] = list(self.fqans)
        if self.groups:
            doc["g"] = list(self.groups)
        if self.grants is not None:
            doc["c"] = [_grant_str(g) for g in self.grants]
        if self.restrictions:
            doc["r"] = [
                {"a": activity_list(r.activities), "p": [str(p) for p in r.paths]}
                for r in self.restrictions
            ]
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> MintedFor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("k"), str):
                raise ValueError("not an identity")
            grants = None
            if "c" in doc:
                grants = tuple(_grant_from(s) for s in _strs(doc["c"]))
            restrictions = []
            for r in doc.get("r", []):
                acts = frozenset(Activity(a) for a in _strs(r["a"]))
                paths = tuple(LogicalPath.from_plain(p) for p in _strs(r["p"]))
                restrictions.append(Restriction(acts, paths))
            subject = doc.get("s", "")
            if not isinstance(subject, str):
                raise ValueError("bad subject")
            return cls(
                kind=doc["k"],
                subject=subject,
                issuer=_opt_str(doc.get("i")),
                dn=_opt_str(doc.get("d")),
                vo=_opt_str(doc.get("v")),
                fqans=_strs(doc.get("f", [])),
                groups=_strs(doc.get("g", [])),
                grants=grants,
                restrictions=tuple(restrictions),
            )
        except (ValueError, KeyError, TypeError, PathError, binascii.Error, RecursionError):
            raise CaveatError("malformed id caveat") from None


# -- caveat values ---------------------------------------------------------------------------
def activity_list(acts: frozenset[Activity]) -> list[str]:
    return [a.value for a in sorted(acts, key=_ACTIVITY_ORDER.__getitem__)]


def parse_activities(text: str) -> frozenset[Activity]:
    """``DOWNLOAD,LIST`` -> activities. Unknown names and an empty list are errors."""
    names = [n.strip() for n in text.split(",")]
    if not any(names):
        raise CaveatError("empty activity list")
    try:
        return frozenset(Activity(n) for n in names)
    except ValueError:
        bad = next(n for n in names if n not in Activity.__members__)
        raise CaveatError(f"unknown activity {bad[:40]!r}") from None


def parse_caveat_path(text: str) -> LogicalPath:
    """An absolute path, percent-decoded once (as we write them); ``.``/``..`` refused."""
    if not text.startswith("/"):
        raise CaveatError("caveat path must be absolute")
    if any(seg in (".", "..") for seg in text.split("/")):
        raise CaveatError("dot-segment in caveat path")
    try:
        return parse_url_path(text).path
    except BadRequest:
        raise CaveatError("malformed caveat path") from None


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    out = []
    for part in text.split(","):
        try:
            out.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise CaveatError(f"{part.strip()[:50]!r} is not an IP address or CIDR") from None
    return tuple(out)


def ip_in(client_ip: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    cands: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        cands.append(addr.ipv4_mapped)
    return any(a in n for a in cands for n in networks if a.version == n.version)


@dataclass(frozen=True, slots=True)
class CaveatFacts:
    minted_for: MintedFor
    activities: frozenset[Activity]
    paths: tuple[LogicalPath, ...]
    expires_at: float | None


class CaveatChecker:
    """Checks one caveat at a time (a pymacaroons general predicate) and collects the facts.

    Returns False (and remembers why) for any caveat that is unknown, malformed or unmet.
    """

    def __init__(self, *, now: float, leeway: float, client_ip: str) -> None:
        self.now, self.leeway, self.client_ip = now, leeway, client_ip
        self.failure: str | None = None
        self.count = 0
        self.minted_for: MintedFor | None = None
        self.activities = frozenset(Activity)
        self.paths: list[LogicalPath] = []
        self.expires_at: float | None = None

    def __call__(self, caveat: str) -> bool:
        try:
            self._check(caveat)
        except CaveatError as exc:
            if self.failure is None:
                self.failure = str(exc)
            return False
        return True

    def _check(self, caveat: str) -> None:
        self.count += 1
        name, sep, value = caveat.partition(":")
        if not sep:
            raise CaveatError("malformed caveat")
        if name == "id":
            if self.count != 1:
                raise CaveatError("id caveat must come first, exactly once")
            self.minted_for = MintedFor.decode(value)
            return
        if self.count == 1:
            raise CaveatError("macaroon has no id caveat")
        if name == "activity":
            self.activities &= parse_activities(value)
        elif name == "path":
            self.paths.append(parse_caveat_path(value))
        elif name == "before":
            try:
                t = parse_instant(value)
            except DurationError:
                raise CaveatError("malformed before caveat") from None
            if self.now >= t + self.leeway:
                raise CaveatError("macaroon expired")
            self.expires_at = t if self.expires_at is None else min(self.expires_at, t)
        elif name == "ip":
            if not ip_in(self.client_ip, parse_networks(value)):
                raise CaveatError("client address not allowed by ip caveat")
        else:
            raise CaveatError(f"unknown caveat {name[:30]!r}")

    def facts(self) -> CaveatFacts:
        if self.failure is not None:
            raise CaveatError(self.failure)
        if self.minted_for is None:
            raise CaveatError("macaroon has no id caveat")
        return CaveatFacts(self.minted_for, self.activities, tuple(self.paths), self.expires_at)


def principal_from(facts: CaveatFacts) -> Principal:
    mf = facts.minted_for
    own = Restriction(facts.activities, facts.paths, source="macaroon")
    return Principal(
        kind=Kind.MACAROON,
        subject=mf.subject,
        issuer=mf.issuer,
        dn=mf.dn,
        vo=mf.vo,
        fqans=mf.fqans,
        groups=mf.groups,
        capabilities=mf.grants,
        restrictions=(*mf.restrictions, own),
        expires_at=facts.expires_at,
        via=(mf.kind,),
    )
