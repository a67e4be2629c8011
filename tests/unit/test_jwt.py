"""JWT verification offline: the real KeyStore with static jwks_file keys, an injected clock.

Field reports B02 (scope paths), B05 (capability vs identity), B06 (audience), B07 (time claims,
cache), B08 (kid handling, hostile input); PROTOCOLS.md §1, §2.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from segate.auth.chain import Credentials
from segate.auth.jwks import IssuerKey, KeyStore
from segate.auth.jwt import (
    CACHE_MAX_AGE,
    STR_KEY_MAX_CHARS,
    JwtAuthenticator,
    default_audiences,
    grants_from_scopes,
)
from segate.auth.principal import Grant, Kind, Permission
from segate.config import WLCG_ANY_AUDIENCE, IssuerConfig, TokensConfig
from segate.errors import Unauthenticated
from segate.paths import LogicalPath
from testbed.issuer import IssuerKeys, alg_none, hs256, mint, tamper

ISS = "https://iss.test"
SCI = "https://sci.test/realm"
AUD = "https://gw.test:8443"
NOW = 1_800_000_000.0
CREDS = Credentials()
P = LogicalPath.from_plain


@pytest.fixture(scope="module")
def keys() -> IssuerKeys:
    return IssuerKeys()


@pytest.fixture(scope="module")
def foreign() -> IssuerKeys:
    """Same kids as ``keys``, different key material: tokens 'signed with the wrong key'."""
    return IssuerKeys()


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CountingKeyStore(KeyStore):
    calls = 0

    async def get_key(self, issuer: IssuerConfig, kid: str | None) -> IssuerKey:
        self.calls += 1
        return await super().get_key(issuer, kid)


class Env:
    def __init__(self, tmp: Path, keys: IssuerKeys, **tokens_kw: Any) -> None:
        self.clock = Clock()
        self.keys = keys
        jwks = tmp / "jwks.json"
        jwks.write_text(json.dumps(keys.jwks()))
        issuers = tokens_kw.pop(
            "issuers",
            (
                IssuerConfig(ISS, jwks_file=jwks),
                IssuerConfig(SCI, base_paths=(P("/sci"),), profile="scitokens", jwks_file=jwks),
            ),
        )
        self.tokens = TokensConfig(issuers=issuers, **tokens_kw)
        self.store = CountingKeyStore(
            issuers, ssl_context=None, refresh=3600, min_refetch=60, timeout=5
        )
        self.auth = JwtAuthenticator(
            self.tokens,
            self.store,
            server_audiences=default_audiences("gw.test", 8443, ()),
            clock=self.clock,
        )

    def mint(self, **kw: Any) -> str:
        kw.setdefault("iss", ISS)
        kw.setdefault("aud", AUD)
        kw.setdefault("now", self.clock.t)
        return mint(kw.pop("signer", self.keys), **kw)

    async def ok(self, token: str) -> Any:
        return await self.auth.authenticate(token, CREDS)

    async def bad(self, token: str, reason: str) -> str:
        with pytest.raises(Unauthenticated) as ei:
            await self.auth.authenticate(token, CREDS)
        msg = ei.value.message
        assert reason in msg, msg
        assert token not in msg and len(msg) < 200 and msg.isprintable() and msg.isascii()
        return msg


@pytest.fixture
async def env(tmp_path: Path, keys: IssuerKeys) -> AsyncIterator[Env]:
    e = Env(tmp_path, keys)
    yield e
    await e.store.close()


# -- good tokens ----------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_valid_token_gives_capability_principal(env: Env, alg: str) -> None:
    tok = env.mint(alg=alg, sub="abc", scope="openid storage.read:/a storage.modify:/b/")
    p = await env.ok(tok)
    assert p.kind is Kind.JWT and p.subject == "abc" and p.issuer == ISS
    assert p.capabilities == (
        Grant(Permission.READ, P("/a")),
        Grant(Permission.MODIFY, P("/b"), dir_only=True),
    )
    assert p.expires_at == NOW + 600
    assert env.auth.recognises(tok)


async def test_typ_at_jwt_and_missing_nbf_accepted(env: Env) -> None:
    tok = env.mint(scope="storage.read:/", header_overrides={"typ": "at+jwt"})
    await env.ok(tok)
    await env.ok(env.mint(scope="storage.read:/", extra_claims={"nbf": None}))  # B07
    await env.ok(env.mint(scope="storage.read:/", header_overrides={"typ": None}))
    await env.bad(env.mint(header_overrides={"typ": "id+jwt"}), "token type 'id+jwt'")
    await env.bad(env.mint(header_overrides={"crit": ["exp"]}), "critical header")


async def test_float_exp_accepted_and_truncated(env: Env) -> None:
    p = await env.ok(env.mint(extra_claims={"exp": NOW + 600.7}))
    assert p.expires_at == NOW + 600


# -- time claims (B07) ----------------------------------------------------------------------
async def test_expired_not_yet_valid_iat_future(env: Env) -> None:
    await env.bad(env.mint(now=NOW - 1000, lifetime=100), "token expired")
    await env.ok(env.mint(extra_claims={"exp": NOW - 30}))  # within leeway 60
    await env.bad(env.mint(extra_claims={"exp": NOW - 60}), "token expired")  # at exp + leeway
    await env.bad(env.mint(extra_claims={"nbf": NOW + 600}), "token not yet valid")
    await env.ok(env.mint(extra_claims={"nbf": NOW + 30}))
    await env.ok(env.mint(extra_claims={"iat": NOW + 30}))  # slightly in the future
    await env.bad(env.mint(extra_claims={"iat": NOW + 600}), "issued in the future")
    await env.bad(env.mint(extra_claims={"exp": None}), "no expiry")
    await env.bad(env.mint(extra_claims={"exp": "soon"}), "malformed 'exp'")
    await env.bad(env.mint(extra_claims={"exp": True}), "malformed 'exp'")
    await env.bad(env.mint(extra_claims={"exp": 10**400}), "malformed 'exp'")


# -- audience (B06) -------------------------------------------------------------------------
def test_default_audiences() -> None:
    assert default_audiences("gw.test", 8443, ()) == ("https://gw.test:8443", "gw.test")
    assert default_audiences("gw.test", 443, ("lb.test", "alt.test:9000")) == (
        "https://gw.test:443",
        "https://gw.test",
        "gw.test",
        "https://lb.test:443",
        "https://lb.test",
        "lb.test",
        "https://alt.test:9000",
        "alt.test",
    )
    assert default_audiences("::1", 8443, ()) == ("https://[::1]:8443", "::1")


async def test_audience_forms(env: Env) -> None:
    await env.ok(env.mint(aud=AUD))
    await env.ok(env.mint(aud="gw.test"))  # (g) bare host
    await env.ok(env.mint(aud=["https://x.test", AUD]))  # (c)
    await env.bad(env.mint(aud="3f1c-uuid"), "audience '3f1c-uuid' not accepted")  # (a)
    await env.bad(env.mint(aud=["https://fake.test:8443", "u"]), "not accepted")  # (d)
    await env.bad(env.mint(aud="https://gw.test"), "not accepted")  # wrong port form
    await env.bad(env.mint(extra_claims={"aud": None}), "token has no audience")  # (f)
    await env.bad(env.mint(aud=[]), "token has no audience")
    await env.bad(env.mint(aud=[AUD, 7]), "malformed audience")


async def test_any_audience_switch(tmp_path: Path, keys: IssuerKeys) -> None:
    on = Env(tmp_path, keys, accept_any_audience=True)
    off = Env(tmp_path, keys, accept_any_audience=False)
    tok = on.mint(aud=WLCG_ANY_AUDIENCE)
    await on.ok(tok)
    await off.bad(tok, "not accepted")  # (e) wildcard disabled
    # the issuer's own setting wins over the global one
    jwks = tmp_path / "jwks.json"
    per_issuer = Env(
        tmp_path,
        keys,
        accept_any_audience=False,
        issuers=(IssuerConfig(ISS, jwks_file=jwks, accept_any_audience=True),),
    )
    await per_issuer.ok(tok)
    # SciTokens "ANY": only for SciTokens 2.0 tokens
    sci = on.mint(iss=SCI, profile="scitokens", aud="ANY", scope="read:/")
    await on.ok(sci)
    await off.bad(sci, "not accepted")
    await on.bad(on.mint(aud="ANY"), "not accepted")  # a WLCG token
    for s in (on, off, per_issuer):
        await s.store.close()


# -- issuer, key and algorithm (B08) --------------------------------------------------------
async def test_untrusted_issuer_never_touches_keys(env: Env) -> None:
    await env.bad(env.mint(iss="https://evil.test"), "issuer not trusted: 'https://evil.test'")
    await env.bad(env.mint(iss=ISS + "/"), "issuer not trusted")  # trailing slash matters
    await env.bad(env.mint(extra_claims={"iss": None}), "token has no issuer")
    assert env.store.calls == 0


async def test_wrong_key_unknown_kid_alg_mismatch(env: Env, foreign: IssuerKeys) -> None:
    await env.bad(env.mint(signer=foreign), "signature verification failed")
    await env.bad(env.mint(signer=foreign, alg="ES256"), "signature verification failed")
    await env.bad(env.mint(kid="nope"), "unknown key id 'nope'")
    await env.bad(env.mint(header_overrides={"kid": 5}), "malformed key id")
    # header says RS256 but names the EC key
    await env.bad(env.mint(header_overrides={"kid": "ec1"}), "does not match key 'ec1'")


async def test_alg_none_hs256_tampered(env: Env, keys: IssuerKeys) -> None:
    good = env.mint(scope="storage.read:/a")
    await env.bad(alg_none(good), "algorithm 'none' not allowed")
    await env.bad(alg_none(good, signature="AAAA"), "algorithm 'none' not allowed")
    pem = (
        keys.current()
        .key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    await env.bad(hs256(good, pem), "algorithm 'HS256' not allowed")
    await env.bad(tamper(good, scope="storage.modify:/"), "signature verification failed")
    await env.bad(tamper(good, exp=NOW + 10**6), "signature verification failed")
    await env.bad(env.mint(header_overrides={"alg": "RS512"}), "algorithm 'RS512' not allowed")


async def test_no_kid_needs_exactly_one_key(tmp_path: Path, keys: IssuerKeys) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"keys": [keys.current("ES256").jwk()]}))
    e = Env(tmp_path, keys, issuers=(IssuerConfig(ISS, jwks_file=one),))
    await e.ok(e.mint(alg="ES256", header_overrides={"kid": None}))
    await e.store.close()
    two = Env(tmp_path, keys)
    await two.bad(two.mint(header_overrides={"kid": None}), "no key id and the issuer publishes 2")
    await two.store.close()


async def test_hostile_kid_and_iss_are_bounded_and_escaped(env: Env) -> None:
    msg = await env.bad(env.mint(kid="x' OR '1'='1\n\x00"), "unknown key id")
    assert "\n" not in msg and "\\x00" in msg
    msg = await env.bad(env.mint(iss="https://e\"v'il\r\n" + "A" * 4096), "issuer not trusted")
    assert len(msg) < 120
    # the store still serves the good keys
    await env.ok(env.mint())


async def test_keystore_errors_name_the_cause(tmp_path: Path, keys: IssuerKeys) -> None:
    cfg = IssuerConfig(ISS, jwks_file=tmp_path / "missing.json")
    e = Env(tmp_path, keys, issuers=(cfg,))
    await e.bad(e.mint(), "issuer unreachable: cannot read jwks_file")
    await e.store.close()
    plain = IssuerConfig("http://localhost:1")
    store = KeyStore((plain,), ssl_context=None, refresh=1, min_refetch=0, timeout=1)
    with pytest.raises(Unauthenticated, match="not https"):
        await store.get_key(plain, "k")
    with pytest.raises(Unauthenticated, match="issuer not trusted"):
        await store.get_key(IssuerConfig("https://other.test"), "k")
    await store.close()


async def test_rotated_jwks_file_is_reread_after_cool_down(tmp_path: Path) -> None:
    keys = IssuerKeys()
    e = Env(tmp_path, keys)
    mono = Clock(0.0)
    e.store = CountingKeyStore(
        e.tokens.issuers, ssl_context=None, refresh=3600, min_refetch=60, timeout=5, clock=mono
    )
    e.auth = JwtAuthenticator(e.tokens, e.store, server_audiences=(AUD,), clock=e.clock)
    await e.ok(e.mint())
    kid = keys.rotate()
    (tmp_path / "jwks.json").write_text(json.dumps(keys.jwks()))
    await e.bad(e.mint(kid=kid), "unknown key id")  # inside the cool-down
    mono.t = 61
    await e.ok(e.mint(kid=kid))
    await e.store.close()


# -- malformed input -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("[invalid]", "not a compact JWS"),
        ("a.b", "not a compact JWS"),
        ("a.b.c.d.e", "JWE"),
        ("eyJhbGciOiJSUzI1NiJ9.!!!.c2ln", "payload is not base64url JSON"),
        ("eyJhbGciOiJSUzI1NiJ9.WzFd.c2ln", "payload is not a JSON object"),
        ("x" * 40000, "too large"),
    ],
)
async def test_malformed_tokens(env: Env, token: str, reason: str) -> None:
    await env.bad(token, reason)
    assert env.store.calls == 0


async def test_truncated_token(env: Env) -> None:
    tok = env.mint()
    assert not env.auth.recognises(tok[: tok.rindex(".")])
    await env.bad(tok[:-10], "signature verification failed")


async def test_recognises_shape_only(env: Env) -> None:
    assert not env.auth.recognises("")
    assert not env.auth.recognises("MDAxY2xvY2F0aW9uIHNlZ2F0ZQ")  # macaroon-like
    assert not env.auth.recognises("e30.e30.c2ln")  # header {} has no alg
    assert not env.auth.recognises("a..c")
    assert env.auth.recognises("eyJhbGciOiJub25lIn0.e30.c2ln")


# -- scopes (B02, B05) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "scope",
    [
        "storage.read",
        "storage.read:",
        "storage.modify:relative/path",
        "storage.read:/home/user1/..",
        "storage.read:/foo/%2e%2e/bar",
        "storage.read:/foo/%252e%252e/bar",
        "storage.read:/foo/%2E%2E",
        "storage.poll",
        "read",
        "write:/a/../b",
    ],
)
async def test_bad_storage_scope_rejects_whole_token(env: Env, scope: str) -> None:
    msg = await env.bad(env.mint(scope=f"storage.read:/ok {scope}"), "scope '")
    assert scope.split(":")[0] in msg


async def test_base_path_joining(tmp_path: Path, keys: IssuerKeys) -> None:
    jwks = tmp_path / "jwks.json"
    cfg = IssuerConfig(ISS, base_paths=(P("/wlcg"), P("/alt")), jwks_file=jwks)
    e = Env(tmp_path, keys, issuers=(cfg,))
    p = await e.ok(e.mint(scope="storage.read:/ storage.create:/x/y/"))
    assert p.capabilities == (
        Grant(Permission.READ, P("/wlcg")),
        Grant(Permission.READ, P("/alt")),
        Grant(Permission.CREATE, P("/wlcg/x/y"), dir_only=True),
        Grant(Permission.CREATE, P("/alt/x/y"), dir_only=True),
    )
    assert all(not g.path.is_root for g in p.capabilities)
    await e.store.close()


async def test_identity_and_poll_only_tokens(env: Env) -> None:
    p = await env.ok(env.mint(scope="openid wlcg.groups", groups=["/vo", "/vo/prod"]))
    assert p.capabilities is None and p.groups == ("/vo", "/vo/prod")
    p = await env.ok(env.mint(extra_claims={"wlcg.groups": ["/vo", 3, None, {"a": 1}]}))
    assert p.capabilities is None and p.groups == ("/vo",)  # no scope claim at all
    p = await env.ok(env.mint(scope="storage.poll:/ compute.read offline_access"))
    assert p.capabilities == ()
    p = await env.ok(env.mint(scope="storage.stage:/tape"))
    assert p.capabilities == (Grant(Permission.STAGE, P("/tape")),)


async def test_scitokens_vocabulary_and_scp(env: Env) -> None:
    base = {"iss": SCI, "profile": "scitokens"}
    p = await env.ok(env.mint(**base, scope="read:/data write:/out queue"))
    assert p.capabilities == (
        Grant(Permission.READ, P("/sci/data")),
        Grant(Permission.MODIFY, P("/sci/out")),
    )
    p = await env.ok(env.mint(**base, extra_claims={"scp": ["read:/a", "storage.create:/b"]}))
    assert p.capabilities == (
        Grant(Permission.READ, P("/sci/a")),
        Grant(Permission.CREATE, P("/sci/b")),
    )
    p = await env.ok(env.mint(**base, extra_claims={"scp": "write:/w"}))
    assert p.capabilities == (Grant(Permission.MODIFY, P("/sci/w")),)
    # both vocabularies from a WLCG issuer too
    p = await env.ok(env.mint(scope="read:/r"))
    assert p.capabilities == (Grant(Permission.READ, P("/r")),)
    await env.bad(env.mint(extra_claims={"scope": 5}), "malformed scope claim")


async def test_versions(env: Env) -> None:
    await env.ok(env.mint(extra_claims={"wlcg.ver": "1.3"}))
    for bad in ("2.0", "1", "1.0\n", 1.0, "v1.0"):
        await env.bad(env.mint(extra_claims={"wlcg.ver": bad}), "unsupported wlcg.ver")
    await env.bad(env.mint(extra_claims={"wlcg.ver": None}), "token has no wlcg.ver")
    sci = {"iss": SCI, "profile": "scitokens", "scope": "read:/"}
    for ok in ("scitokens:2.0", "scitokens:1.0", None):
        await env.ok(env.mint(**sci, extra_claims={"ver": ok}))
    await env.bad(env.mint(**sci, extra_claims={"ver": "scitoken:3.0"}), "unsupported SciTokens")
    await env.bad(env.mint(extra_claims={"sub": None}), "token has no subject")


# -- verified-token cache (B07) -------------------------------------------------------------
async def test_cache_hit_skips_verification_and_is_fast(env: Env) -> None:
    tok = env.mint(scope="storage.read:/")
    first = await env.ok(tok)
    calls = env.store.calls
    t0 = time.perf_counter()
    for _ in range(1000):
        assert await env.ok(tok) is first
    assert (time.perf_counter() - t0) / 1000 < 200e-6
    assert env.store.calls == calls


async def test_cached_token_rejected_after_exp(tmp_path: Path, keys: IssuerKeys) -> None:
    e = Env(tmp_path, keys, leeway=0)
    tok = e.mint(scope="storage.read:/", lifetime=5)
    for _ in range(5):
        await e.ok(tok)
        e.clock.t += 1
    assert e.store.calls == 1
    await e.bad(tok, "token expired")  # now == exp
    await e.store.close()


async def test_cache_entry_not_extended_by_hits(env: Env) -> None:
    tok = env.mint(lifetime=10_000)
    await env.ok(tok)
    for _ in range(30):  # a hit every 10 s for 300 s must not keep the entry alive
        env.clock.t += 10
        await env.ok(tok)
    assert env.store.calls == 2  # re-verified once the 300 s cache age was reached


async def test_failures_not_cached_and_cache_bounded(tmp_path: Path, keys: IssuerKeys) -> None:
    e = Env(tmp_path, keys, cache_size=2)
    bad = e.mint(aud="nobody")
    await e.bad(bad, "not accepted")
    await e.bad(bad, "not accepted")
    assert e.store.calls == 2
    toks = [e.mint(sub=f"u{i}") for i in range(3)]
    for t in toks:
        await e.ok(t)
    await e.ok(toks[2])
    assert e.store.calls == 5
    await e.ok(toks[0])  # evicted
    assert e.store.calls == 6
    off = Env(tmp_path, keys, cache_size=0)
    await off.ok(toks[0])
    await off.ok(toks[0])
    assert off.store.calls == 2
    await e.store.close()
    await off.store.close()


async def test_cache_keyed_by_token_and_long_tokens_by_digest(env: Env) -> None:
    """A cached token is recognised and answered before any parsing; one longer than
    STR_KEY_MAX_CHARS is cached under its sha256 instead, with the same behaviour."""
    short = env.mint(scope="storage.read:/")
    long = env.mint(scope="storage.read:/", extra_claims={"pad": "x" * (STR_KEY_MAX_CHARS * 2)})
    assert len(short) <= STR_KEY_MAX_CHARS < len(long)
    for tok in (short, long):
        first = await env.ok(tok)
        calls = env.store.calls
        assert env.auth.recognises(tok)
        assert await env.ok(tok) is first
        assert await env.ok((tok + " ")[:-1]) is first  # an equal string, not the same object
        assert env.store.calls == calls
        # a cached token is only recognised as itself: a changed one is parsed from scratch
        assert not env.auth.recognises(tok + ".x") and not env.auth.recognises(" " + tok)
    assert set(map(type, env.auth._cache)) == {str, bytes}
    env.clock.t += CACHE_MAX_AGE  # an expired entry: verified again, same answer
    again = await env.ok(short)
    assert again is not first and again.subject == first.subject
    assert env.store.calls == calls + 1


# -- property: the scope parser never widens (B02) ------------------------------------------
_GOOD = st.sampled_from(["a", "b", "x%41", "%7e", "", "."])
_BAD = st.sampled_from(["..", "%2e%2e", "%252e%252e", "%25252e%25252e", "%2F", "%", "%4", "a\x00"])
_SEG = st.one_of(_GOOD, _GOOD, _GOOD, _GOOD, _BAD)
_PATH = st.one_of(*[st.lists(_SEG, max_size=5).map(lambda s: "/" + "/".join(s))] * 3, st.text())
_STORAGE = ["storage.read", "storage.create", "storage.modify", "storage.stage", "storage.poll"]
_NAME = st.sampled_from([*_STORAGE, "storage.x", "read", "write", "openid", "compute.read"])
_SCOPE = st.builds(
    lambda n, sep, p: n + sep + p, _NAME, st.sampled_from([":", ":", ":", "", "::"]), _PATH
)


@settings(max_examples=400, deadline=None)
@given(
    scopes=st.lists(st.one_of(_SCOPE, _SCOPE, _SCOPE, st.text(max_size=30)), max_size=4),
    base=st.sampled_from(["/", "/wlcg", "/a/b"]),
)
def test_scope_parser_never_escapes_base(scopes: list[str], base: str) -> None:
    bp = P(base)
    try:
        grants = grants_from_scopes(scopes, (bp,))
    except Unauthenticated:
        return
    for g in grants or ():
        assert g.path.is_within(bp)
        assert ".." not in g.path.segments
