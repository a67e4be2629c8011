"""B06 — audience handling (wildcard, lists, host/port forms).

Right value, GW ``gw.test:8443`` with the wildcard disabled: aud (a) random → 401,
(b) ``https://gw.test:8443`` → 404, (c) list containing it → 404, (d) list without it → 401,
(e) the WLCG "any" value → 401 (accepted only when ``accept_any_audience``; segate's default is
true, README config table), (f) absent → 401, (g) bare ``gw.test`` → 404. Every 401 carries
``WWW-Authenticate: Bearer error="invalid_token"``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Gateway

ANY = "https://wlcg.cern.ch/jwt/v1/any"
GWCFG: dict[str, Any] = {
    "server": {"public_url": "https://gw.test:8443"},
    "tokens": {"audiences": [], "accept_any_audience": False},
}


def u() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize(
    ("aud", "expect"),
    [
        (u(), 401),
        ("https://gw.test:8443", 404),
        (["https://gw.test:8443", u()], 404),
        (["https://fake.test:8443", u()], 401),
        (ANY, 401),
        (None, 401),
        ("gw.test", 404),
        ("https://gw.test:8443/", 401),  # exact forms only
        ("GW.TEST", 401),
        ([], 401),
    ],
)
async def test_audiences(make_gateway: Any, aud: Any, expect: int) -> None:
    gw: Gateway = await make_gateway(**GWCFG)
    tok = gw.token("storage.read:/", audience=aud)
    r = await gw.client.get(f"/missing-{u()}", headers={"Authorization": f"Bearer {tok}"})
    assert r.status == expect, await r.text()
    if expect == 401:
        www = r.headers["WWW-Authenticate"]
        assert www.startswith("Bearer ") and 'error="invalid_token"' in www


async def test_wildcard_only_when_enabled(make_gateway: Any) -> None:
    gw: Gateway = await make_gateway(
        server={"public_url": "https://gw.test:8443"}, tokens={"accept_any_audience": True}
    )
    r = await gw.client.get("/missing", headers=gw.bearer("storage.read:/", audience=ANY))
    assert r.status == 404
