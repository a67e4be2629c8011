"""Issuer discovery and the key cache against a real HTTPS TestIssuer on loopback.

Field report B08 (rotation, random kids, thundering herd, hung issuers, untrusted issuers) and
PROTOCOLS.md §1.6 (discovery forms, metadata issuer, https-only, verified TLS).
"""

from __future__ import annotations

import asyncio
import ssl
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from segate.auth.chain import Credentials
from segate.auth.jwks import IssuerUnreachable, KeyStore, UnknownKey
from segate.auth.jwt import JwtAuthenticator
from segate.auth.principal import Grant, Permission, Principal
from segate.config import IssuerConfig, TokensConfig
from segate.devpki import DevPKI, ensure_dev_pki
from segate.errors import Unauthenticated
from segate.paths import LogicalPath
from testbed.issuer import IssuerKeys, TestIssuer, alg_none, hs256, mint, tamper

AUD = "https://gw.test:8443"
CREDS = Credentials()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def ctx(pki: DevPKI) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_cert))


@pytest.fixture
async def iss(pki: DevPKI) -> AsyncIterator[TestIssuer]:
    async with TestIssuer(pki.host_cert, pki.host_key) as i:
        yield i


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Gate:
    """A KeyStore + JwtAuthenticator trusting the given issuers."""

    def __init__(self, issuers: list[IssuerConfig], ctx: ssl.SSLContext | None, **kw: Any) -> None:
        self.mono = Mono()
        self.store = KeyStore(
            tuple(issuers),
            ssl_context=ctx,
            refresh=kw.pop("refresh", 3600.0),
            min_refetch=kw.pop("min_refetch", 60.0),
            timeout=kw.pop("timeout", 5.0),
            clock=self.mono,
        )
        tokens = TokensConfig(issuers=tuple(issuers), **kw)
        self.auth = JwtAuthenticator(tokens, self.store, server_audiences=(AUD,))

    async def ok(self, token: str) -> Principal:
        return await self.auth.authenticate(token, CREDS)

    async def bad(self, token: str, reason: str) -> Unauthenticated:
        with pytest.raises(Unauthenticated) as ei:
            await self.auth.authenticate(token, CREDS)
        assert reason in ei.value.message, ei.value.message
        assert not token or token not in ei.value.message
        return ei.value


@pytest.fixture
async def gate(iss: TestIssuer, ctx: ssl.SSLContext) -> AsyncIterator[Gate]:
    g = Gate([IssuerConfig(iss.url, base_paths=(LogicalPath.from_plain("/vo"),))], ctx)
    yield g
    await g.store.close()


def tok(iss: TestIssuer, **kw: Any) -> str:
    kw.setdefault("aud", AUD)
    kw.setdefault("scope", "storage.read:/")
    kw.setdefault("sub", uuid.uuid4().hex)  # distinct tokens: no verified-token cache hits
    return iss.mint(**kw)


async def test_discovery_then_cached_keys(iss: TestIssuer, gate: Gate) -> None:
    p = await gate.ok(tok(iss))
    assert p.capabilities == (Grant(Permission.READ, LogicalPath.from_plain("/vo")),)
    await gate.ok(tok(iss, alg="ES256"))
    assert iss.fetches == {"discovery": 1, "jwks": 1}


async def test_rfc8414_fallback_for_issuer_with_path(pki: DevPKI, ctx: ssl.SSLContext) -> None:
    async with TestIssuer(pki.host_cert, pki.host_key, path="/realm", serve_oidc=False) as iss:
        g = Gate([IssuerConfig(iss.url)], ctx)
        await g.ok(tok(iss))
        assert iss.fetches == {"rfc8414": 1, "jwks": 1}
        await g.store.close()


async def test_metadata_must_name_the_issuer_and_https_jwks(iss: TestIssuer, gate: Gate) -> None:
    iss.metadata_overrides = {"issuer": iss.url + "/"}
    e = await gate.bad(tok(iss), "issuer unreachable: discovery: metadata 'issuer' does not")
    assert isinstance(e, IssuerUnreachable)
    g2 = Gate([IssuerConfig(iss.url)], gate.store._ssl, min_refetch=0)
    iss.metadata_overrides = {"jwks_uri": iss.url.replace("https", "http") + "/jwks"}
    await g2.bad(tok(iss), "'jwks_uri' missing or not https")
    assert iss.fetches["jwks"] == 0
    await g2.store.close()


async def test_tls_must_verify(iss: TestIssuer) -> None:
    g = Gate([IssuerConfig(iss.url)], None)  # system CAs do not know the dev CA
    e = await g.bad(tok(iss), "issuer unreachable: TLS verification failed")
    assert not isinstance(e, UnknownKey)
    await g.store.close()


async def test_rotation_refetches_once_after_cool_down(iss: TestIssuer, gate: Gate) -> None:
    await gate.ok(tok(iss))
    kid = iss.rotate()
    gate.mono.t += 10  # inside the 60 s cool-down: no refetch yet
    await gate.bad(tok(iss, kid=kid), f"unknown key id '{kid}'")
    assert iss.fetches["jwks"] == 1
    gate.mono.t += 60
    await gate.ok(tok(iss, kid=kid))
    await gate.ok(tok(iss, kid=kid))
    await gate.ok(tok(iss))  # the old key is still published
    assert iss.fetches["jwks"] == 2


async def test_random_kids_cost_at_most_one_fetch(iss: TestIssuer, gate: Gate) -> None:
    tokens = [tok(iss, kid=uuid.uuid4().hex) for _ in range(100)]
    results = await asyncio.gather(*(gate.ok(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, UnknownKey) for r in results)
    for t in tokens[:10]:
        await gate.bad(t, "unknown key id")
    assert iss.fetches["jwks"] <= 2 and iss.fetches["discovery"] <= 2


async def test_concurrent_first_use_single_fetch(iss: TestIssuer, gate: Gate) -> None:
    iss.delay = 0.2
    results = await asyncio.gather(*(gate.ok(tok(iss)) for _ in range(20)))
    assert len(results) == 20
    assert iss.fetches == {"discovery": 1, "jwks": 1}


async def test_hung_issuer_fails_in_time_others_unaffected(
    iss: TestIssuer, pki: DevPKI, ctx: ssl.SSLContext
) -> None:
    async with TestIssuer(pki.host_cert, pki.host_key) as slow:
        slow.delay = 600
        g = Gate([IssuerConfig(slow.url), IssuerConfig(iss.url)], ctx, timeout=0.5)

        async def timed(token: str) -> tuple[float, object]:
            t0 = time.monotonic()
            try:
                return time.monotonic() - t0, await g.ok(token)
            except Unauthenticated as exc:
                return time.monotonic() - t0, exc

        (t_slow, r_slow), (t_fast, r_fast) = await asyncio.gather(timed(tok(slow)), timed(tok(iss)))
        assert isinstance(r_slow, IssuerUnreachable)
        assert "issuer unreachable: no answer within 0.5 s" in r_slow.message
        assert t_slow < 2.0
        assert isinstance(r_fast, Principal) and t_fast < 0.5
        # a dead issuer answers at once during the cool-down, without another fetch
        t0 = time.monotonic()
        await g.bad(tok(slow), "issuer unreachable")
        assert time.monotonic() - t0 < 0.1 and slow.fetches["discovery"] == 1
        await g.store.close()


async def test_last_good_keys_survive_failed_refresh(iss: TestIssuer, ctx: ssl.SSLContext) -> None:
    g = Gate([IssuerConfig(iss.url)], ctx, timeout=0.3, refresh=600)
    await g.ok(tok(iss))
    iss.delay = 600
    g.mono.t += 601  # stale: refreshed in the background, old keys keep serving
    t0 = time.monotonic()
    await g.ok(tok(iss))
    assert time.monotonic() - t0 < 0.2
    await asyncio.sleep(0.5)  # the refresh has timed out by now
    await g.ok(tok(iss))
    assert iss.fetches["discovery"] == 2
    # an unknown kid while the issuer is down: say so, not "unknown key id" (dCache#7553)
    g.mono.t += 61
    await g.bad(tok(iss, kid="new"), "issuer unreachable: no answer within 0.3 s")
    await g.ok(tok(iss))
    await g.store.close()


async def test_untrusted_issuer_and_garbage_cause_no_fetch(
    iss: TestIssuer, pki: DevPKI, ctx: ssl.SSLContext
) -> None:
    async with TestIssuer(pki.host_cert, pki.host_key) as other:
        g = Gate([IssuerConfig(iss.url)], ctx)
        await g.bad(tok(other), "issuer not trusted")
        for junk in ("[invalid]", "", "a.b.c", tok(iss)[:30]):
            await g.bad(junk, "malformed")
        assert sum(other.fetches.values()) == 0 and sum(iss.fetches.values()) == 0
        await g.store.close()


async def test_bad_tokens_through_discovery(iss: TestIssuer, gate: Gate) -> None:
    good = tok(iss)
    pem = iss.keys.current().jwk()["n"].encode()
    cases = {
        tok(iss, now=time.time() - 7200): "token expired",
        tok(iss, extra_claims={"nbf": time.time() + 3600}): "token not yet valid",
        tok(iss, aud="https://other.test"): "not accepted",
        mint(IssuerKeys(), iss=iss.url, aud=AUD, scope="storage.read:/"): "signature verif",
        tok(iss, kid="zz"): "unknown key id 'zz'",
        alg_none(good): "algorithm 'none' not allowed",
        hs256(good, pem): "algorithm 'HS256' not allowed",
        tamper(good, sub="root"): "signature verification failed",
        tok(iss, scope="storage.read"): "has no path",
        tok(iss, scope="storage.read:/a/%252e%252e/b"): "rejected",
    }
    for token, reason in cases.items():
        await gate.bad(token, reason)


async def test_token_endpoint(iss: TestIssuer, gate: Gate, ctx: ssl.SSLContext) -> None:
    form = {"scope": "storage.create:/up", "aud": AUD, "sub": "svc", "alg": "ES256"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.post(iss.url + "/token", data=form) as r:
            body = await r.json()
        async with s.get(iss.url + "/token", params={"lifetime": "x"}) as r:
            assert r.status == 400
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    p = await gate.ok(body["access_token"])
    assert p.subject == "svc"
    assert p.capabilities == (Grant(Permission.CREATE, LogicalPath.from_plain("/vo/up")),)


def test_keys_persist_with_private_permissions(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    k = IssuerKeys(d)
    k.rotate("ES256")
    again = IssuerKeys(d)
    assert again.jwks() == k.jwks()
    assert [x.kid for x in again.keys] == ["rsa1", "ec1", "ec2"]
    for pem in d.glob("*.pem"):
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600


async def test_command_line_serve_and_mint(
    tmp_path: Path, pki: DevPKI, ctx: ssl.SSLContext
) -> None:
    d = str(tmp_path / "iss")
    cmd = [sys.executable, "-m", "testbed.issuer", "serve", "--dir", d, "--port", "0"]
    cmd += ["--cert", str(pki.host_cert), "--key", str(pki.host_key)]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert url.startswith("https://127.0.0.1:")
        mint_cmd = [sys.executable, "-m", "testbed.issuer", "mint", "--dir", d, "--iss", url]
        mint_cmd += ["--scope", "storage.read:/x", "--aud", AUD]
        m = await asyncio.create_subprocess_exec(
            *mint_cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(m.communicate(), 20)
        g = Gate([IssuerConfig(url)], ctx)
        p = await g.ok(out.decode().strip())
        assert p.capabilities == (Grant(Permission.READ, LogicalPath.from_plain("/x")),)
        await g.store.close()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
