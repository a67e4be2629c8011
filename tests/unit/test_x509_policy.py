"""Site rules for X509 principals: ``dn:``, ``user:``, ``vo:``, ``fqan:`` (segate.authz.policy).

Issue #4: ``fqan:/testvo/Role=production`` matches ``/testvo/Role=production/Capability=NULL``;
``fqan:/testvo`` matches any group below with any role; ``vo:testvo`` matches the VO.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segate.auth.principal import Kind, Op, Permission, Principal
from segate.authz.decide import Policy, decide
from segate.authz.policy import Rule, fqan_matches, valid_who, who_matches
from segate.paths import LogicalPath
from testbed.pki import FQANS, USER_DN

USER = Principal(kind=Kind.X509, subject=USER_DN, dn=USER_DN, vo="testvo", fqans=FQANS)
PLAIN = Principal(kind=Kind.X509, subject=USER_DN, dn=USER_DN)


@pytest.mark.parametrize(
    ("pattern", "fqan", "ok"),
    [
        ("/testvo/Role=production", "/testvo/Role=production/Capability=NULL", True),
        ("/testvo/Role=production", "/testvo/Role=NULL/Capability=NULL", False),
        ("/testvo/Role=production", "/testvo/sub/Role=production/Capability=NULL", True),
        ("/testvo/Role=production", "/testvo/Role=productionX", False),
        ("/testvo", "/testvo/Role=NULL/Capability=NULL", True),
        ("/testvo", "/testvo/Role=production/Capability=NULL", True),
        ("/testvo", "/testvo/a/b/Role=lcgadmin", True),
        ("/testvo", "/testvo", True),
        ("/testvo", "/testvo2/Role=NULL", False),
        ("/testvo/a", "/testvo/ab", False),
        ("/testvo/a", "/testvo", False),
        ("/testvo/Role=NULL", "/testvo/Role=production", True),  # NULL: no role required
        ("/testvo/", "/testvo/x", True),
    ],
)
def test_fqan_table(pattern: str, fqan: str, ok: bool) -> None:
    assert fqan_matches(pattern, fqan) is ok


_SEG = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)
_ROLE = st.one_of(st.none(), _SEG)


def _fqan(groups: list[str], role: str | None, cap: bool) -> str:
    out = "/" + "/".join(groups)
    if role is not None or cap:
        out += f"/Role={role or 'NULL'}"
    if cap:
        out += "/Capability=NULL"
    return out


@given(st.lists(_SEG, min_size=1, max_size=4), st.integers(0, 4), _ROLE, st.booleans())
def test_group_prefix_matches_any_role(
    groups: list[str], cut: int, role: str | None, cap: bool
) -> None:
    prefix = groups[: max(1, min(cut, len(groups)))]
    assert fqan_matches("/" + "/".join(prefix), _fqan(groups, role, cap))


@given(st.lists(_SEG, min_size=1, max_size=4), _SEG, _ROLE, st.booleans())
def test_role_must_be_equal(groups: list[str], want: str, role: str | None, cap: bool) -> None:
    pattern = "/" + "/".join(groups) + f"/Role={want}"
    assert fqan_matches(pattern, _fqan(groups, role, cap)) is (role == want)


@given(st.lists(_SEG, min_size=1, max_size=3), _SEG, _ROLE)
def test_groups_match_segment_wise(groups: list[str], suffix: str, role: str | None) -> None:
    longer = [*groups[:-1], groups[-1] + suffix]
    assert not fqan_matches("/" + "/".join(groups), _fqan(longer, role, False))


def test_who_entries() -> None:
    assert who_matches("vo:testvo", USER) and not who_matches("vo:othervo", USER)
    assert who_matches("fqan:/testvo/Role=production", USER)
    assert who_matches(f"dn:{USER_DN}", PLAIN) and not who_matches(f"dn:{USER_DN}x", PLAIN)
    assert not who_matches("vo:testvo", PLAIN) and not who_matches("fqan:/testvo", PLAIN)
    # VO from FQANs even without the vo field (e.g. a macaroon carrying FQANs)
    assert who_matches("vo:testvo", Principal(kind=Kind.MACAROON, fqans=("/testvo/x",)))
    mapped = Principal(kind=Kind.X509, subject="tuser", dn=USER_DN)
    assert who_matches("user:tuser", mapped) and not who_matches("user:tuser", PLAIN)
    jwt = Principal(kind=Kind.JWT, subject="tuser", issuer="https://i")
    assert not who_matches("user:tuser", jwt) and not who_matches(f"dn:{USER_DN}", jwt)
    assert not who_matches("any-token", USER) and who_matches("any-authenticated", USER)


@pytest.mark.parametrize(
    ("entry", "ok"),
    [
        (f"dn:{USER_DN}", True),
        ("dn:CN=Test User,DC=testbed", False),
        ("dn:", False),
        ("fqan:/testvo", True),
        ("fqan:/testvo/Role=production", True),
        ("fqan:/", False),
        ("fqan://", False),
        ("fqan:testvo", False),
        ("vo:testvo", True),
        ("user:tuser", True),
        ("user:", False),
    ],
)
def test_valid_who(entry: str, ok: bool) -> None:
    assert valid_who(entry) is ok


def test_b13_rules_decide() -> None:
    rules = (
        Rule(
            LogicalPath.from_plain("/data/prod"),
            frozenset({Permission.MODIFY}),
            ("fqan:/testvo/Role=production",),
        ),
        Rule(
            LogicalPath.from_plain("/data/dn"), frozenset({Permission.MODIFY}), (f"dn:{USER_DN}",)
        ),
        Rule(LogicalPath.from_plain("/data/vo"), frozenset({Permission.READ}), ("vo:testvo",)),
    )
    policy = Policy(rules=rules)

    def ok(p: Principal, op: Op, path: str) -> bool:
        return decide(p, op, LogicalPath.from_plain(path), policy).allowed

    assert ok(USER, Op.CREATE, "/data/prod/f") and not ok(PLAIN, Op.CREATE, "/data/prod/f")
    assert ok(USER, Op.CREATE, "/data/dn/f") and ok(PLAIN, Op.CREATE, "/data/dn/f")
    assert ok(USER, Op.READ, "/data/vo/f") and not ok(USER, Op.CREATE, "/data/vo/f")
    assert not ok(PLAIN, Op.READ, "/data/vo/f")
    member = Principal(kind=Kind.X509, dn="/DC=x/CN=y", vo="testvo", fqans=(FQANS[0],))
    assert not ok(member, Op.CREATE, "/data/prod/f") and ok(member, Op.READ, "/data/vo/f")
