"""B07 — expired tokens never survive in the verified-token cache; time-claim typing.

Right value: a token with ``exp = now+5`` used once per second gets 200 until ``exp`` plus the
documented leeway (``[tokens] leeway``, 60 s) and 401 afterwards although it was cached (cache
entry lives until ``min(exp, verified+300 s)``, never refreshed on a hit); a float ``exp`` is
accepted (truncated); a WLCG token without ``nbf`` is accepted; ``nbf = now+600`` → 401;
``iat = now+30`` is inside the leeway → accepted.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from aiohttp.test_utils import TestClient, TestServer

from segate.config import settings_from_dict
from segate.devissuer import KID, ensure_dev_issuer
from segate.web.app import build_services, create_app
from tests.conftest import AUDIENCE, ISSUER, base_config
from tests.secrets import SecretWatch


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def signed(tmp_path: Path, watch: SecretWatch, **claims: Any) -> str:
    dev = ensure_dev_issuer(tmp_path / "state", ISSUER)
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "u",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
        "wlcg.ver": "1.0",
        "scope": "storage.read:/",
    }
    c.update(claims)
    c = {k: v for k, v in c.items() if v is not None}
    return watch.add(jwt.encode(c, dev._key(), algorithm="ES256", headers={"kid": KID}))


async def test_cached_token_expires(tmp_path: Path, secret_watch: SecretWatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"F")
    dev = ensure_dev_issuer(tmp_path / "state", ISSUER)
    clock = Clock()
    settings = settings_from_dict(base_config(root, dev.jwks_file), tmp_path)
    app = create_app(settings, services=build_services(settings, clock=clock))
    start = clock.t
    tok = signed(tmp_path, secret_watch, exp=int(start) + 5, iat=int(start), nbf=None)
    seen: list[tuple[int, int]] = []
    async with TestClient(TestServer(app)) as client:
        for second in range(0, 80, 1):  # one request per (simulated) second, fresh connections
            clock.t = start + second
            r = await client.get(
                "/f", headers={"Authorization": f"Bearer {tok}", "Connection": "close"}
            )
            seen.append((second, r.status))
    leeway = settings.tokens.leeway
    for second, code in seen:
        # exp is an integer second; ``start`` may be up to 1 s after int(start)
        if second < 5 + leeway - 1:
            assert code == 200, (second, code)
        elif second >= 5 + leeway:
            assert code == 401, (second, code)


async def test_claim_typing(make_gateway: Any, tmp_path: Path, secret_watch: SecretWatch) -> None:
    gw = await make_gateway()
    (gw.root / "f").write_bytes(b"F")
    now = int(time.time())
    cases: list[tuple[dict[str, Any], int]] = [
        ({"exp": now + 600.7}, 200),
        ({"nbf": None}, 200),
        ({"nbf": now + 600}, 401),
        ({"iat": now + 30}, 200),
        ({"iat": now + 3600}, 401),
        ({"exp": str(now + 600)}, 401),
        ({"exp": True}, 401),
        ({"exp": None}, 401),
        ({"exp": now - 3600}, 401),
        ({"nbf": "soon"}, 401),
    ]
    for claims, expect in cases:
        tok = signed(tmp_path, secret_watch, **claims)
        r = await gw.client.get("/f", headers={"Authorization": f"Bearer {tok}"})
        assert r.status == expect, (claims, await r.text())
