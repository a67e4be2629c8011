"""B08 — JWKS rotation, unknown/absent ``kid``, hostile ``kid``/``iss``, slow issuers.

Right value: (1) rotation → one refetch then 200; (2) random kids → 401 with at most a couple of
fetches; (5) concurrent first use → one fetch; (6) a hung issuer fails in bounded time, other
issuers unaffected — covered against a real HTTPS issuer in
tests/integration/test_jwks_discovery.py (test_rotation_refetches_once_after_cool_down,
test_random_kids_cost_at_most_one_fetch, test_concurrent_first_use_single_fetch,
test_hung_issuer_fails_in_time_others_unaffected, test_untrusted_issuer_and_garbage_cause_no_fetch)
and through the gateway in tests/faults/test_issuer_faults.py. Here, through the gateway:
(3) token without ``kid`` and a JWKS of exactly one key → 200, of two keys → 401 (scitokens-cpp
behaviour, README); (4) hostile ``kid``/``iss`` → 401, other keys unaffected, the log line
bounded and escaped; (6) ``[invalid]``, empty and truncated tokens → 401 at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from testbed.issuer import IssuerKeys
from tests.cases.conftest import bearer, status

LONG_ISS = 'https://evil.test/"\n\r' + "A" * 4096


async def test_token_without_kid(make_keys_gateway: Any) -> None:
    keys = IssuerKeys()
    one = await make_keys_gateway(keys, jwks={"keys": [keys.current("RS256").jwk()]})
    (one.gw.root / "f").write_bytes(b"F")
    tok = one.token(header_overrides={"kid": None})
    assert await status(one.gw, "GET", "/f", bearer(tok)) == 200
    two = await make_keys_gateway(keys)  # rsa1 and ec1 published
    (two.gw.root / "f").write_bytes(b"F")
    assert await status(two.gw, "GET", "/f", bearer(tok)) == 401


async def test_hostile_kid_and_iss(
    make_keys_gateway: Any, access_lines: Callable[[], list[str]]
) -> None:
    k = await make_keys_gateway()
    gw = k.gw
    (gw.root / "f").write_bytes(b"F")
    hostile = [
        k.token(kid="x' OR '1'='1"),
        k.token(header_overrides={"kid": "../../etc/passwd\n\x00"}),
        k.token(header_overrides={"kid": {"$ne": 1}}),
        k.token(header_overrides={"kid": "k" * 5000}),
        k.token(extra_claims={"iss": LONG_ISS}),
        k.token(extra_claims={"iss": ["a", "b"]}),
    ]
    for tok in hostile:
        r = await gw.client.get("/f", headers=bearer(tok))
        assert r.status in (401, 400), r.status
        assert len(await r.read()) < 1024
    assert await status(gw, "GET", "/f", bearer(k.token())) == 200  # keys unaffected
    assert await status(gw, "GET", "/f", gw.bearer("storage.read:/")) == 200
    for line in access_lines():
        assert "\n" not in line and "\r" not in line and len(line) < 2000, line[:300]


async def test_malformed_tokens_rejected_at_once(make_keys_gateway: Any) -> None:
    k = await make_keys_gateway()
    good = k.token()
    for tok in ("[invalid]", "", "a.b", good[: len(good) // 2], good + "x", "e30.e30.", "...."):
        r = await k.gw.client.get("/f", headers={"Authorization": f"Bearer {tok}"})
        assert r.status == 401, (tok[:20], r.status)
