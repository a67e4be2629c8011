"""B05 — tokens with no storage scope, or only ``storage.stage``.

Right value (no group rules configured): identity tokens A (``openid wlcg.groups``) and C (no
``scope`` claim) → GET 403, PUT 403; B ``storage.stage:/`` → GET 200 (segate's default
``[tokens] stage_implies_read = true``, README "How requests are judged"), PUT 403. The denial
reason in the access log names the rule kind: ``no rule allows`` (identity, ``[[rules]]``)
vs ``no token scope allows`` (capability).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.cases.conftest import status
from tests.conftest import Gateway

KIB = b"k" * 1024


async def test_identity_and_stage_tokens(
    gw: Gateway, access_lines: Callable[[], list[str]]
) -> None:
    (gw.root / "d").mkdir()
    (gw.root / "d" / "f").write_bytes(b"F")
    a = gw.bearer("openid wlcg.groups", groups=["/vo"])
    b = gw.bearer("storage.stage:/")
    c = gw.bearer(None)
    for h in (a, c):
        assert await status(gw, "GET", "/d/f", h) == 403
        assert await status(gw, "PUT", "/d/g", h, data=KIB) == 403
    assert await status(gw, "GET", "/d/f", b) == 200
    assert await status(gw, "PUT", "/d/g", b, data=KIB) == 403
    assert not (gw.root / "d" / "g").exists()
    lines = [ln for ln in access_lines() if "status=403" in ln]
    assert len(lines) == 5
    # identity tokens: "no rule allows" ([[rules]]); capability: "no token scope allows"
    assert all("no rule allows jwt" in ln for ln in lines[:4]), lines
    assert "no token scope allows create" in lines[-1]


async def test_stage_implies_read_can_be_turned_off(make_gateway: Any) -> None:
    gw: Gateway = await make_gateway(tokens={"stage_implies_read": False})
    (gw.root / "f").write_bytes(b"F")
    assert await status(gw, "GET", "/f", gw.bearer("storage.stage:/")) == 403
    assert await status(gw, "HEAD", "/f", gw.bearer("storage.stage:/")) == 200  # stat only


async def test_identity_token_is_judged_by_explicit_group_rules(make_gateway: Any) -> None:
    rules = [{"path": "/d", "allow": ["read"], "who": ["group:/vo"]}]
    gw: Gateway = await make_gateway(rules=rules)
    (gw.root / "d").mkdir()
    (gw.root / "d" / "f").write_bytes(b"F")
    h = gw.bearer("openid wlcg.groups", groups=["/vo"])
    assert await status(gw, "GET", "/d/f", h) == 200
    assert await status(gw, "PUT", "/d/g", h, data=KIB) == 403
    assert await status(gw, "GET", "/d/f", gw.bearer(None)) == 403  # no group: default deny
