"""decide(principal, op, path, policy) -> Decision. Pure: every fact is an argument.

Capability credentials (tokens with storage scopes) are judged by their grants alone; identity
credentials by the site's rules; macaroon restrictions narrow either. Sources: WLCG JWT profile
v1.3 §2.2 (PROTOCOLS.md §1.3-1.5), macaroon activities (§3.3), field reports B04/B05.
"""

from __future__ import annotations

from dataclasses import dataclass

from segate.auth.principal import Activity, Grant, Op, Permission, Principal, Restriction
from segate.authz.policy import Rule, first_matching_rule
from segate.paths import LogicalPath

_READ_OPS = frozenset({Op.STAT, Op.LIST, Op.READ})
_CREATE_OPS = frozenset({Op.STAT, Op.CREATE, Op.MKDIR, Op.MOVE_OUT})
_MODIFY_OPS = _CREATE_OPS | {Op.OVERWRITE, Op.DELETE}
_STAGE_OPS = frozenset({Op.STAT, Op.STAGE})


def permission_ops(permission: Permission, *, stage_implies_read: bool) -> frozenset[Op]:
    if permission is Permission.READ:
        return _READ_OPS
    if permission is Permission.CREATE:
        return _CREATE_OPS
    if permission is Permission.MODIFY:
        return _MODIFY_OPS
    return _STAGE_OPS | _READ_OPS if stage_implies_read else _STAGE_OPS


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    #: WLCG profile v1.0 / StoRM / dCache: stage ⊇ read. v1.3 says no; field report B05 says yes.
    stage_implies_read: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def _grant_allows(grant: Grant, op: Op, path: LogicalPath, policy: Policy) -> bool:
    ops = permission_ops(grant.permission, stage_implies_read=policy.stage_implies_read)
    if path.is_within(grant.path):
        if op not in ops:
            return False
        # trailing '/' = directory only: no file may live exactly at the scope path
        return not (
            grant.dir_only and path == grant.path and op in (Op.CREATE, Op.OVERWRITE, Op.READ)
        )
    if path.is_strict_ancestor_of(grant.path):
        # stat of ancestors for any scope; missing ancestors may be made by create/modify
        if op is Op.STAT:
            return True
        return op is Op.MKDIR and grant.permission in (Permission.CREATE, Permission.MODIFY)
    return False


def _activity_allows(acts: frozenset[Activity], op: Op, *, ancestor: bool) -> bool:
    writer = Activity.UPLOAD in acts or Activity.MANAGE in acts
    if ancestor:
        return op is Op.STAT or (op is Op.MKDIR and writer)
    if op is Op.STAT:
        return True  # every activity implies READ_METADATA
    if op is Op.LIST:
        return Activity.LIST in acts
    if op is Op.READ:
        return Activity.DOWNLOAD in acts
    if op is Op.CREATE:
        return writer
    if op is Op.OVERWRITE:
        return writer and Activity.DELETE in acts
    if op is Op.MKDIR or op is Op.MOVE_OUT:
        return Activity.MANAGE in acts
    if op is Op.DELETE:
        return Activity.DELETE in acts
    if op is Op.STAGE:
        return Activity.STAGE in acts
    return False


def restriction_allows(r: Restriction, op: Op, path: LogicalPath) -> bool:
    ancestor = False
    for p in r.paths:
        if path.is_within(p):
            continue
        if path.is_strict_ancestor_of(p):
            ancestor = True
            continue
        return False
    return _activity_allows(r.activities, op, ancestor=ancestor)


def decide(principal: Principal, op: Op, path: LogicalPath, policy: Policy) -> Decision:
    if path.is_reserved:
        return Decision(False, "reserved path")
    for r in principal.restrictions:
        if not restriction_allows(r, op, path):
            return Decision(False, f"{r.source} does not allow {op} on {path}")
    if principal.capabilities is not None:
        for g in principal.capabilities:
            if _grant_allows(g, op, path, policy):
                return Decision(True, f"scope storage.{g.permission}:{g.path}")
        return Decision(False, f"no token scope allows {op} on {path}")
    rule = first_matching_rule(policy.rules, principal, path)
    if rule is None:
        return Decision(False, f"no rule allows {principal.kind} {op} on {path}")
    ops: frozenset[Op] = frozenset()
    for perm in rule.allow:
        ops |= permission_ops(perm, stage_implies_read=policy.stage_implies_read)
    if op in ops:
        return Decision(True, f"rule {rule.path} allows {op}")
    return Decision(False, f"rule {rule.path} does not allow {op}")


def allowed_ops(principal: Principal, path: LogicalPath, policy: Policy) -> frozenset[Op]:
    """Every operation the principal may do at ``path`` (used to bound minted macaroons)."""
    return frozenset(op for op in Op if decide(principal, op, path, policy).allowed)
