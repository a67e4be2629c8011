"""Macaroon requests as pure values: body parsing, activities from operations, bounding.

PROTOCOLS.md §3.2 (request body; dCache and XRootD dialects; gfal2's bodies), §3.5 (bounding).
"""

from __future__ import annotations

import pytest

from segate.auth.durations import parse_instant
from segate.auth.principal import Activity, Grant, Kind, Op, Permission, Principal, Restriction
from segate.authz.decide import Policy
from segate.errors import BadRequest, Forbidden
from segate.paths import LogicalPath
from segate.web.macaroon_endpoint import (
    Bounded,
    MacaroonRequest,
    activities_for,
    bound,
    is_macaroon_request,
    parse_request,
    target_path,
)

A = Activity
P = LogicalPath.from_plain
NOW = 1_800_000_000.0
ALL = frozenset(Activity)


def token(*grants: tuple[Permission, str], expires_at: float | None = NOW + 3600) -> Principal:
    caps = tuple(Grant(perm, P(path)) for perm, path in grants)
    return Principal(kind=Kind.JWT, subject="u", issuer="https://i", capabilities=caps,
                     expires_at=expires_at)  # fmt: skip


def b(
    p: Principal, req: MacaroonRequest, path: str = "/d", max_validity: float = 86400.0
) -> Bounded:
    return bound(p, req, P(path), policy=Policy(), now=NOW, max_validity=max_validity)


def test_content_type() -> None:
    assert is_macaroon_request("application/macaroon-request")
    assert is_macaroon_request("Application/Macaroon-Request ; charset=UTF-8")
    for other in ("", "application/json", "application/macaroon-requestx", "text/plain"):
        assert not is_macaroon_request(other)


def test_gfal2_and_xrootd_bodies() -> None:
    r = parse_request(b'{"caveats": ["activity:LIST,DOWNLOAD"], "validity": "PT180M"}')
    assert r == MacaroonRequest(activities=frozenset({A.LIST, A.DOWNLOAD}), validity=10800)
    r = parse_request(b'{"caveats": ["activity:DOWNLOAD,UPLOAD,LIST"], "validity": "PT30M"}')
    assert r.activities == frozenset({A.DOWNLOAD, A.UPLOAD, A.LIST}) and r.validity == 1800
    assert parse_request(b"") == MacaroonRequest()
    assert parse_request(b"  \n") == MacaroonRequest()
    assert parse_request(b"{}") == MacaroonRequest()
    assert parse_request(b'{"caveats": null, "other": 1}') == MacaroonRequest()


def test_dcache_caveats() -> None:
    r = parse_request(
        b'{"caveats": ["activity:DOWNLOAD,LIST", "activity:LIST,UPLOAD", "path:/d/x",'
        b' "before:2030-01-01T00:00:00.5Z", "before:2031-01-01T00:00:00Z",'
        b' "ip:10.0.0.0/8, 192.0.2.1"], "validity": "P1DT1H"}'
    )
    assert r.activities == frozenset({A.LIST})
    assert r.paths == (P("/d/x"),)
    assert r.before == parse_instant("2030-01-01T00:00:00.5Z")
    assert r.networks == ("10.0.0.0/8", "192.0.2.1/32")
    assert r.validity == 90000


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'"x"',
        b"[]",
        b"\xff\xfe",
        b'{"caveats": "activity:LIST"}',
        b'{"caveats": [1]}',
        b'{"caveats": ["activity"]}',
        b'{"caveats": ["home:/x"]}',
        b'{"caveats": ["max-upload:10"]}',
        b'{"caveats": ["activity:download"]}',
        b'{"caveats": ["path:x"]}',
        b'{"caveats": ["before:2030-01-01"]}',
        b'{"validity": "PT"}',
        b'{"validity": "P1M"}',
        b'{"validity": NaN}',
        b'{"validity": ["PT1H"]}',
        b"[" * 100000,
    ],
)
def test_bad_bodies(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(body)


def test_activities_for_operations() -> None:
    assert activities_for(frozenset(Op)) == ALL - {A.UPDATE_METADATA}
    read = frozenset({Op.STAT, Op.LIST, Op.READ})
    assert activities_for(read) == {A.READ_METADATA, A.LIST, A.DOWNLOAD}
    create = frozenset({Op.STAT, Op.CREATE, Op.MKDIR, Op.MOVE_OUT})
    assert activities_for(create) == {A.READ_METADATA, A.UPLOAD, A.MANAGE}
    assert activities_for(frozenset({Op.MKDIR})) == frozenset()  # MANAGE needs move too


def test_target_path() -> None:
    assert target_path(P("/d"), ()) == P("/d")
    assert target_path(P("/d"), (P("/d/x/y"), P("/d/x"))) == P("/d/x/y")
    assert target_path(P("/"), (P("/d/gfal2_mkdir.reserved"),)) == P("/d/gfal2_mkdir.reserved")
    with pytest.raises(BadRequest):
        target_path(P("/d"), (P("/e"),))
    with pytest.raises(BadRequest):
        target_path(P("/d"), (P("/d/x"), P("/d/y")))
    with pytest.raises(BadRequest):
        target_path(P("/d"), (P("/dd"),))


def test_intersection_with_rights() -> None:
    reader = token((Permission.READ, "/d"))
    got = b(reader, MacaroonRequest(activities=frozenset({A.DOWNLOAD, A.UPLOAD, A.DELETE})))
    assert got.activities == {A.DOWNLOAD} and got.path == P("/d")
    assert b(reader, MacaroonRequest()).activities == {A.DOWNLOAD, A.LIST, A.READ_METADATA}
    modifier = token((Permission.MODIFY, "/d"))
    everything = b(modifier, MacaroonRequest()).activities
    assert everything == {A.UPLOAD, A.DELETE, A.MANAGE, A.READ_METADATA}
    with pytest.raises(Forbidden):
        b(reader, MacaroonRequest(activities=frozenset({A.UPLOAD})))
    with pytest.raises(Forbidden):
        b(reader, MacaroonRequest(), path="/e")
    with pytest.raises(Forbidden):  # at an ancestor only stat remains
        b(reader, MacaroonRequest(activities=frozenset({A.LIST, A.READ_METADATA})), path="/")
    only_stat = MacaroonRequest(activities=frozenset({A.READ_METADATA}))
    assert b(reader, only_stat, path="/").activities == {A.READ_METADATA}


def test_restrictions_bound_a_macaroon_requester() -> None:
    mac = Principal(
        kind=Kind.MACAROON,
        capabilities=(Grant(Permission.READ, P("/")), Grant(Permission.MODIFY, P("/"))),
        restrictions=(Restriction(frozenset({A.DOWNLOAD}), (P("/d"),)),),
        via=("jwt",),
    )
    assert b(mac, MacaroonRequest()).activities == {A.DOWNLOAD, A.READ_METADATA}
    with pytest.raises(Forbidden):
        b(mac, MacaroonRequest(activities=frozenset({A.UPLOAD})))


def test_expiry_is_the_minimum() -> None:
    reader = token((Permission.READ, "/d"), expires_at=NOW + 3600.7)
    assert b(reader, MacaroonRequest()).expires_at == NOW + 3600
    assert b(reader, MacaroonRequest(validity=60)).expires_at == NOW + 60
    assert b(reader, MacaroonRequest(before=NOW + 30.5)).expires_at == NOW + 30
    assert b(reader, MacaroonRequest(), max_validity=10).expires_at == NOW + 10
    forever = token((Permission.READ, "/d"), expires_at=None)
    assert b(forever, MacaroonRequest()).expires_at == NOW + 86400
    with pytest.raises(BadRequest):
        b(reader, MacaroonRequest(before=NOW - 1))
    with pytest.raises(Forbidden):
        b(token((Permission.READ, "/d"), expires_at=NOW + 0.5), MacaroonRequest())
