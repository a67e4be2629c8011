"""B17 — MOVE: denied rename, directory into itself, authorisation on both ends.

Right value: read-only token → 403; ``storage.modify:/d``: ``/d/a`` → ``/d/a/sub`` → 403 or
409 with the tree intact (segate: 409); onto an existing file with ``Overwrite: F`` → 412; with
``Overwrite: T`` → 204 and the destination replaced; ``storage.modify:/d/a`` moving to ``/d/b``
→ 403 (destination out of scope), source untouched.
Also tests/integration/test_dav_verbs.py::test_move.
"""

from __future__ import annotations

from tests.cases.conftest import status
from tests.conftest import Gateway


async def test_move_cases(gw: Gateway) -> None:
    (gw.root / "d" / "a").mkdir(parents=True)
    (gw.root / "d" / "b").mkdir()
    (gw.root / "d" / "a" / "f").write_bytes(b"AF")
    (gw.root / "d" / "b" / "f").write_bytes(b"BF")
    base = str(gw.client.make_url(""))

    async def move(src: str, dst: str, scope: str, **extra: str) -> int:
        h = {**gw.bearer(scope), "Destination": base + dst, **extra}
        return await status(gw, "MOVE", src, h)

    assert await move("/d/a/f", "/d/a/g", "storage.read:/") == 403
    assert await move("/d/a", "/d/a/sub", "storage.modify:/d") in (403, 409)
    assert await move("/d/a/", "/d/a/sub/", "storage.modify:/d") in (403, 409)
    assert (gw.root / "d" / "a" / "f").read_bytes() == b"AF"
    assert not (gw.root / "d" / "a" / "sub").exists()
    assert await move("/d/a/f", "/d/b/f", "storage.modify:/d", Overwrite="F") == 412
    assert (gw.root / "d" / "b" / "f").read_bytes() == b"BF"
    assert await move("/d/a/f", "/d/b/f", "storage.modify:/d", Overwrite="T") == 204
    assert (gw.root / "d" / "b" / "f").read_bytes() == b"AF"
    (gw.root / "d" / "a" / "f").write_bytes(b"AF2")
    assert await move("/d/a/f", "/d/b/f", "storage.modify:/d/a") == 403
    assert (gw.root / "d" / "a" / "f").read_bytes() == b"AF2"
    assert await move("/d/a/f", "/d/a/f", "storage.modify:/d") == 403  # onto itself
    assert (gw.root / "d" / "a" / "f").read_bytes() == b"AF2"
    for bad in ("Overwrite: x",):
        k, v = bad.split(": ")
        assert await move("/d/a/f", "/d/a/h", "storage.modify:/d", **{k: v}) == 400
    h = {**gw.bearer("storage.modify:/d"), "Destination": "https://elsewhere.test/d/x"}
    assert await status(gw, "MOVE", "/d/a/f", h) in (400, 403, 502)
    h = {**gw.bearer("storage.modify:/d"), "Destination": base + "/d/%2e%2e/x"}
    assert await status(gw, "MOVE", "/d/a/f", h) == 400
    assert (gw.root / "d" / "a" / "f").exists()
