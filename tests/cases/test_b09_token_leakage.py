"""B09 — tokens in the query string; no token in logs, error bodies or ``Location``.

Right value: query tokens (``authz=Bearer%20<T>``, ``access_token=<T>``) are honoured (segate's
default ``[tokens] allow_query_token = true``; false → they are ignored) and removed before path
resolution: the file created is ``/d/f``; MOVE with a query token works; the token's signature
never appears in any log line, error body, ``WWW-Authenticate`` or ``Location`` header (checked
for every test by the autouse ``secret_watch`` fixture, tests/secrets.py, and explicitly here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from tests.cases.conftest import status
from tests.conftest import Gateway
from tests.secrets import SecretWatch

KIB = b"k" * 1024


async def test_query_tokens_and_no_leak(
    gw: Gateway, access_lines: Callable[[], list[str]], secret_watch: SecretWatch
) -> None:
    (gw.root / "d").mkdir()
    t = gw.token("storage.modify:/d storage.read:/d")
    t2 = gw.token("storage.read:/")
    assert await status(gw, "PUT", f"/d/f?authz=Bearer%20{t}", data=KIB) == 201
    assert sorted(p.name for p in (gw.root / "d").iterdir()) == ["f"]
    r = await gw.client.get(f"/d/f?access_token={t}")
    assert r.status == 200 and await r.read() == KIB
    h = {"Authorization": f"Bearer {t}", "TransferHeaderAuthorization": f"Bearer {t2}"}
    assert await status(gw, "GET", "/d/f", h) == 200
    r = await gw.client.get(f"/other/x?access_token={t}")  # refused with the token in the URL
    assert r.status == 403 and t not in await r.text()
    r = await gw.client.get(f"/d/f?authz={t[:-3]}xyz")  # a broken token: 401 body
    body = await r.text()
    assert r.status == 401 and t.rsplit(".", 1)[1][:-3] not in body
    assert t[:-3] not in r.headers.get("WWW-Authenticate", "")
    base = str(gw.client.make_url(""))
    r = await gw.client.request(
        "MOVE", f"/d/f?access_token={t}", headers={"Destination": f"{base}/d/g"}
    )
    assert r.status == 201
    assert sorted(p.name for p in (gw.root / "d").iterdir()) == ["g"]
    lines = access_lines()
    assert len(lines) >= 6 and any("access_token=REDACTED" in ln for ln in lines)
    secret_watch.assert_clean()  # also after the test; explicit here for the case


async def test_query_tokens_can_be_disabled(make_gateway: Any) -> None:
    gw: Gateway = await make_gateway(tokens={"allow_query_token": False})
    (gw.root / "f").write_bytes(b"F")
    t = gw.token("storage.read:/")
    assert await status(gw, "GET", f"/f?access_token={t}") == 401  # anonymous: no rule
    assert await status(gw, "GET", f"/f?authz={t}") == 401


def test_the_watch_catches_a_leak() -> None:
    """The session-wide check is not vacuous: a logged signature fails it."""
    with SecretWatch() as w:
        w.add("aaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbb.cccccccccccccccccccccc")
        logging.getLogger("segate").info("oops cccccccccccccccccccccc")
    with pytest.raises(AssertionError, match="leaked"):
        w.assert_clean()
