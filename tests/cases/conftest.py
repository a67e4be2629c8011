"""Helpers shared by the field-report case tests (tests/cases/test_bNN_*.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.issuer import IssuerKeys, mint
from tests.conftest import AUDIENCE, ISSUER, Gateway

RW = "storage.read:/ storage.create:/ storage.modify:/"
KISS = "https://iss.test.invalid"  # a second issuer with several keys (testbed.issuer)
MR = "application/macaroon-request"


class KeysGateway:
    """A gateway trusting the dev issuer and ``KISS`` (static JWKS file, no network)."""

    def __init__(self, gw: Gateway, keys: IssuerKeys) -> None:
        self.gw = gw
        self.keys = keys

    def token(self, scope: str | None = "storage.read:/", **kw: Any) -> str:
        kw.setdefault("aud", AUDIENCE)
        return mint(self.keys, iss=KISS, scope=scope, **kw)


@pytest.fixture
def make_keys_gateway(make_gateway: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    async def factory(
        keys: IssuerKeys | None = None, jwks: dict[str, Any] | None = None, **overrides: Any
    ) -> KeysGateway:
        keys = keys or IssuerKeys()
        jf = tmp_path / f"jwks-{id(keys)}-{len(list(tmp_path.glob('jwks-*')))}.json"
        jf.write_text(json.dumps(jwks if jwks is not None else keys.jwks()))
        dev_jwks = tmp_path / "state" / "issuer-jwks.json"  # make_gateway's dev issuer
        tokens = {
            "issuers": [
                {"issuer": ISSUER, "base_path": "/", "jwks_file": str(dev_jwks)},
                {"issuer": KISS, "base_path": "/", "jwks_file": str(jf)},
            ],
            **overrides.pop("tokens", {}),
        }
        gw: Gateway = await make_gateway(tokens=tokens, **overrides)
        return KeysGateway(gw, keys)

    return factory


async def status(
    gw: Gateway, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> int:
    r = await gw.client.request(method, path, headers=headers or {}, **kw)
    await r.read()
    return r.status


def statuses(raw: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
