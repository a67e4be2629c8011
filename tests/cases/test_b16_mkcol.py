"""B16 — MKCOL on an existing collection is 405, also under a race.

Right value (token ``storage.modify:/d``): 10 concurrent ``MKCOL /d/x`` → exactly one 201, the
others 405; again → 405; ``MKCOL /d/y/z`` without ``/d/y`` → 409. Never 404/500.
"""

from __future__ import annotations

import asyncio

from tests.cases.conftest import status
from tests.conftest import Gateway


async def test_mkcol_race(gw: Gateway) -> None:
    (gw.root / "d").mkdir()
    h = gw.bearer("storage.modify:/d")
    codes = await asyncio.gather(*(status(gw, "MKCOL", "/d/x", h) for _ in range(10)))
    assert sorted(codes) == [201] + [405] * 9
    assert await status(gw, "MKCOL", "/d/x", h) == 405
    assert await status(gw, "MKCOL", "/d/x/", h) == 405
    assert await status(gw, "MKCOL", "/d/y/z", h) == 409
    (gw.root / "d" / "file").write_bytes(b"1")
    assert await status(gw, "MKCOL", "/d/file", h) == 405  # a file there: also exists
