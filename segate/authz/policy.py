"""Site rules: ``[[rules]]`` from the config, as plain values. Pure.

A rule says: on ``path`` (and below), principals matching any ``who`` entry get ``allow``.
Rules are ordered; the first rule whose path covers the request path and whose ``who`` matches
the principal decides (an empty ``allow`` is an explicit deny).

``who`` entries::

    anonymous              no credential at all
    any-authenticated      any verified credential
    any-token              a JWT (or a macaroon minted for one)
    issuer:<iss>           a JWT from that issuer
    sub:<iss>#<sub>        one token subject
    group:<group>          a ``wlcg.groups`` entry of a JWT (exact: /cms/uscms does not give /cms)
    dn:<subject DN>        an X509 end-entity DN in slash form (``/DC=.../CN=...``), exact
    user:<account>         the account ``[x509] dn_map`` maps the X509 DN to
    vo:<vo>                a verified VOMS VO
    fqan:<FQAN>            a verified FQAN: group prefix, optional ``/Role=``

FQAN matching (PROTOCOLS.md §5.3-5.4; issue #4): ``/Capability=`` is ignored and ``Role=NULL``
means "no role". ``fqan:/vo/g`` matches FQANs in ``/vo/g`` or any group below it (segment-wise:
``/vo/g`` does not match ``/vo/gx``), with any role; ``fqan:/vo/g/Role=r`` also needs role ``r``.
So ``fqan:/testvo/Role=production`` matches ``/testvo/Role=production/Capability=NULL`` and
``fqan:/testvo`` matches ``/testvo/Role=NULL/Capability=NULL``. ``vo:testvo`` matches the
principal's VO or any FQAN whose first group is ``testvo``. Only verified FQANs ever reach a
principal (segate.auth.voms).
"""

from __future__ import annotations

from dataclasses import dataclass

from segate.auth.principal import Kind, Permission, Principal
from segate.paths import LogicalPath

WHO_KINDS = (
    "anonymous",
    "any-authenticated",
    "any-token",
    "issuer:",
    "sub:",
    "group:",
    "dn:",
    "user:",
    "vo:",
    "fqan:",
)


def valid_who(entry: str) -> bool:
    if entry in ("anonymous", "any-authenticated", "any-token"):
        return True
    head, sep, rest = entry.partition(":")
    if head == "dn" and not (rest.startswith("/") and "=" in rest):
        return False  # slash form only
    if head == "fqan" and not (rest.startswith("/") and _split_fqan(rest)[0] != "/"):
        return False  # "fqan:/" would match every FQAN
    return bool(sep) and bool(rest) and f"{head}:" in WHO_KINDS


@dataclass(frozen=True, slots=True)
class Rule:
    path: LogicalPath
    allow: frozenset[Permission]
    who: tuple[str, ...]


def _split_fqan(fqan: str) -> tuple[str, str | None]:
    """'/vo/g/Role=r/Capability=NULL' -> ('/vo/g', 'r' or None for NULL/absent)."""
    groups: list[str] = []
    role: str | None = None
    for part in fqan.split("/"):
        if not part:
            continue
        if part.startswith("Role="):
            role = part[5:]
            if role == "NULL":
                role = None
        elif part.startswith("Capability="):
            continue
        else:
            groups.append(part)
    return "/" + "/".join(groups), role


def fqan_matches(pattern: str, fqan: str) -> bool:
    """``/testvo`` matches any group below with any role; ``/testvo/Role=production`` needs that
    role in ``/testvo`` or below; groups match segment-wise."""
    pgroup, prole = _split_fqan(pattern)
    group, role = _split_fqan(fqan)
    if not (group == pgroup or group.startswith(pgroup.rstrip("/") + "/")):
        return False
    return prole is None or prole == role


def who_matches(entry: str, principal: Principal) -> bool:
    if entry == "anonymous":
        return principal.kind is Kind.ANONYMOUS
    if principal.kind is Kind.ANONYMOUS:
        return False
    if entry == "any-authenticated":
        return True
    is_token = principal.kind is Kind.JWT or "jwt" in principal.via
    if entry == "any-token":
        return is_token
    head, _, value = entry.partition(":")
    if head == "issuer":
        return is_token and principal.issuer == value
    if head == "sub":
        return is_token and f"{principal.issuer}#{principal.subject}" == value
    if head == "group":
        return is_token and value in principal.groups
    if head == "dn":
        return principal.dn is not None and principal.dn == value
    if head == "user":
        return principal.dn is not None and principal.subject == value
    if head == "vo":
        return principal.vo == value or any(
            _split_fqan(f)[0].split("/")[1:2] == [value] for f in principal.fqans
        )
    if head == "fqan":
        return any(fqan_matches(value, f) for f in principal.fqans)
    return False


def first_matching_rule(
    rules: tuple[Rule, ...], principal: Principal, path: LogicalPath
) -> Rule | None:
    for rule in rules:
        if path.is_within(rule.path) and any(who_matches(w, principal) for w in rule.who):
            return rule
    return None
