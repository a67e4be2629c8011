"""B02 — ``..``, percent-encoding and double slashes in scope or request path.

Right value: a scope with a ``..`` segment (raw, ``%2e%2e``, ``%252e%252e``) rejects the token
(401) and never widens access; request paths are normalised once with ``..`` clamped at the root
(``//safe//file.txt`` and ``/../../safe/file.txt`` → 200); ``/safe/%2e%2e/secret/x`` → 400
(a dot-segment hidden by encoding), never ``/secret/x``; malformed escapes → 400, never 500.
The whole kind is fuzzed in tests/fuzz/test_paths_fuzz.py.
"""

from __future__ import annotations

import pytest

from tests.cases.conftest import bearer, statuses
from tests.conftest import Gateway


@pytest.fixture
async def tree(gw: Gateway) -> Gateway:
    for rel, data in {
        "home/user1/mine": b"u1",
        "home/user2/x": b"u2",
        "bar/x": b"bar",
        "foo/bar/x": b"foobar",
        "safe/file.txt": b"safe",
        "secret/x": b"SECRET",
    }.items():
        (gw.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (gw.root / rel).write_bytes(data)
    return gw


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        ("storage.read:/home/user1/..", "/home/user2/x"),
        ("storage.read:/foo/%2e%2e/bar", "/bar/x"),
        ("storage.read:/foo/%252e%252e/bar", "/bar/x"),
        ("storage.read:/foo/%25252e%25252e/bar", "/bar/x"),
        ("storage.read:/foo/%2E%2e/bar", "/bar/x"),
        ("storage.read:/foo/.%2e/bar", "/bar/x"),
        ("storage.read:/home/user1/.. storage.read:/home/user1", "/home/user1/mine"),
    ],
)
async def test_dotdot_scope_rejects_the_token(tree: Gateway, scope: str, target: str) -> None:
    r = await tree.client.get(target, headers=tree.bearer(scope))
    body = await r.read()
    assert r.status == 401, body
    assert b"SECRET" not in body and b"u2" not in body and body != b"bar"


async def test_dotdot_in_a_macaroon_path_caveat_is_refused(
    make_gateway: object, tmp_path: object
) -> None:
    """Caveat paths are decoded once (as segate writes them): a hidden dot-segment is 400; a
    double-encoded one is a literal name ``%2e%2e`` below ``/data`` and never reaches ``/other``."""
    from tests.integration.test_macaroon_endpoint import ask, macgw, minted, status

    gw = await macgw(make_gateway, tmp_path)  # type: ignore[arg-type]
    for path in ("/data/%2e%2e/other", "/data/../other", "/data/./x", "/data/%2E%2E/other"):
        code, _ = await ask(gw, "/data", {"caveats": [f"path:{path}", "activity:DOWNLOAD"]})
        assert code == 400, path
    m = await minted(gw, "/data", {"caveats": ["path:/data/%252e%252e/other", "activity:DOWNLOAD"]})
    assert await status(gw, "GET", "/other/g", m) == 403
    assert await status(gw, "GET", "/data/f", m) == 403


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ("//safe//file.txt", 200),
        ("/../../safe/file.txt", 200),
        ("/safe/./file.txt", 200),
        ("/safe/%2e%2e/secret/x", 400),
        ("/safe/%2E%2E/secret/x", 400),
        ("/safe/.%2e/secret/x", 400),
        ("/safe/%252e%252e/secret/x", 404),  # decoded once: a literal name "%2e%2e" in /safe
        ("/safe/file%", 400),
        ("/safe/file%4", 400),
        ("/safe/file%zz", 400),
        ("/safe/%2fsecret", 400),
        ("/safe/%00", 400),
        ("/safe/%c0%ae%c0%ae/secret/x", 400),  # overlong UTF-8 for '..'
        ("/secret/x", 403),
        ("/safe/../secret/x", 403),
    ],
)
async def test_request_paths(tree: Gateway, target: str, expect: int) -> None:
    tok = tree.token("storage.read:/safe")
    out = await tree.raw(
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {tok}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    assert statuses(out) == [expect], out[:200]
    assert b"SECRET" not in out
    if expect == 200:
        assert out.endswith(b"safe")


async def test_double_slash_and_single_slash_are_one_export(tree: Gateway) -> None:
    h = bearer(tree.token("storage.read://safe"))
    a = await tree.client.get("/safe/file.txt", headers=h)
    assert a.status == 200 and await a.read() == b"safe"
