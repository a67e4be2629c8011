"""One access-log line per request, in text or JSON, with the fields admins need and no secret."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def test_json_access_log_fields(make_gateway: Any, access_lines: Any) -> None:
    gw = await make_gateway(server={"log_format": "json"})
    tok = gw.token("storage.read:/ storage.create:/")
    r = await gw.client.put("/a.txt", data=b"hello", headers={"Authorization": f"Bearer {tok}"})
    assert r.status == 201
    r = await gw.client.get(f"/a.txt?authz={tok}")
    assert r.status == 200 and await r.read() == b"hello"
    r = await gw.client.get("/elsewhere", headers=gw.bearer("storage.read:/mine"))
    assert r.status == 403
    await asyncio.sleep(0.1)
    records = [json.loads(line) for line in access_lines()]
    assert [x["status"] for x in records] == [201, 200, 403]
    for rec in records:
        for key in ("method", "target", "status", "bytes", "dur_ms", "auth", "subject", "reason"):
            assert key in rec
        assert rec["auth"] == "jwt"
    assert records[1]["bytes"] == 5
    assert records[1]["target"] == "/a.txt?authz=REDACTED"
    assert "no token scope allows read on /elsewhere" in records[2]["reason"]
    assert all(tok.rsplit(".", 1)[1] not in line for line in access_lines())
