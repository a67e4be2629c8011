"""B04 — a scoped write token can create the ancestors it needs, and nothing else.

Right value: ``/a`` exists; token ``storage.create:/a/b/c``: PROPFIND Depth 0 ``/a/b`` → 404 (not
403), MKCOL ``/a/b`` and ``/a/b/c`` → 201, PUT ``/a/b/c/file`` → 201, MKCOL ``/a/x`` → 403,
PUT ``/a/b/other`` → 403; token ``storage.read:/a/b/c``: MKCOL ``/a/b2`` → 403. Macaroon
``[path:/a/m/file, activity:UPLOAD]``: MKCOL ``/a/m`` → 201, PUT → 201, MKCOL ``/a/m/file`` → 403
(tests/integration/test_macaroon_endpoint.py::test_b04_upload_macaroon_and_ancestors).
"""

from __future__ import annotations

from tests.cases.conftest import status
from tests.conftest import Gateway


async def test_create_scope_and_its_ancestors(gw: Gateway) -> None:
    (gw.root / "a").mkdir()
    h = gw.bearer("storage.create:/a/b/c")
    depth0 = {**h, "Depth": "0"}
    assert await status(gw, "PROPFIND", "/a/b", depth0) == 404
    assert await status(gw, "PROPFIND", "/a", depth0) == 207  # stat of an ancestor
    assert await status(gw, "MKCOL", "/a/b", h) == 201
    assert await status(gw, "PROPFIND", "/a/b", depth0) == 207
    assert await status(gw, "MKCOL", "/a/b/c", h) == 201
    assert await status(gw, "PUT", "/a/b/c/file", h, data=b"x" * 1024) == 201
    assert await status(gw, "MKCOL", "/a/x", h) == 403
    assert await status(gw, "PUT", "/a/b/other", h, data=b"x") == 403
    assert await status(gw, "MKCOL", "/a/b/c2", h) == 403  # a sibling of the scope path
    assert not (gw.root / "a" / "x").exists() and not (gw.root / "a" / "b" / "other").exists()
    assert (gw.root / "a" / "b" / "c" / "file").stat().st_size == 1024


async def test_ancestor_creation_needs_a_write_scope(gw: Gateway) -> None:
    (gw.root / "a").mkdir()
    h = gw.bearer("storage.read:/a/b/c")
    assert await status(gw, "MKCOL", "/a/b2", h) == 403
    assert await status(gw, "MKCOL", "/a/b", h) == 403  # even an ancestor of the read scope
    assert not (gw.root / "a" / "b").exists()


async def test_put_creates_missing_ancestors_of_a_create_scope(gw: Gateway) -> None:
    """gfal-copy -p without MKCOL: PUT makes the missing parents, each authorised as a mkdir."""
    (gw.root / "a").mkdir()
    h = gw.bearer("storage.create:/a/b/c")
    assert await status(gw, "PUT", "/a/b/c/d/file", h, data=b"1") == 201
    assert await status(gw, "PUT", "/a/q/file", h, data=b"1") == 403
    assert not (gw.root / "a" / "q").exists()
