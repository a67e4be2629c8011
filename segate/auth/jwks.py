"""Issuer key discovery and the per-issuer key cache: the only network I/O in ``auth``.

Rules (PROTOCOLS.md §1.6 steps 2-4, §1.6 "Key caching"; field report B08):

* Only configured issuers ever reach this module; the caller looks the token's ``iss`` up by
  exact string first, so an untrusted issuer never causes a fetch. ``kid`` and ``iss`` from a
  token are only ever dictionary keys here, never parts of a URL, a path or a query.
* Keys come from ``IssuerConfig.jwks_file`` (a JWKS JSON file, no network) or from discovery:
  ``<iss>/.well-known/openid-configuration`` (trailing ``/`` of ``iss`` removed), falling back to
  the RFC 8414 inserted form ``https://host/.well-known/oauth-authorization-server/<path>``.
  The metadata ``issuer`` must equal ``iss`` exactly and ``jwks_uri`` must be https. All fetches
  use verified TLS with the given SSL context; no plain-http issuer is ever contacted.
* Usable keys: RSA (``RS256``, >= 2048 bits) and EC P-256 (``ES256``); the algorithm comes from the
  JWK (``alg``, else ``kty``/``crv``), never from a token. Other keys are skipped; private
  parameters in a JWK are ignored.
* One fetch at a time per issuer (single flight): concurrent first uses share one fetch, and a
  waiter that gives up does not cancel it for the others. Each fetch (discovery + JWKS) is bounded
  by ``timeout`` as a whole, so a hung issuer fails its own tokens in time and no other issuer
  waits on it.
* Keys older than ``refresh`` are refreshed in the background while the old keys keep serving;
  a failed refresh keeps the last good keys for up to ``max_stale`` seconds. An unknown ``kid``
  triggers at most one refetch per ``min_refetch`` seconds per issuer (a flood of random ``kid``
  values costs at most one fetch per cool-down). A failed first fetch is remembered for
  ``min_refetch`` seconds, so a dead issuer answers at once instead of once per timeout.
* A token without ``kid`` is accepted only if the issuer publishes exactly one key
  (scitokens-cpp PR #55 behaviour).
* Errors say which: :class:`IssuerUnreachable` (discovery/JWKS failed) vs :class:`UnknownKey`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError
from yarl import URL

from segate.config import IssuerConfig
from segate.errors import Unauthenticated

log = logging.getLogger(__name__)

#: metadata and JWKS documents are small; anything bigger is refused
MAX_DOCUMENT_BYTES = 1 << 20
#: keys kept per issuer (a JWKS normally has 1-4)
MAX_KEYS = 64
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyUnavailable(Unauthenticated):
    """No key to verify a token with (a 401; the subclass says why)."""


class IssuerUnreachable(KeyUnavailable):
    """Discovery or the JWKS fetch failed (network, TLS, HTTP status, bad document)."""


class UnknownKey(KeyUnavailable):
    """The issuer's keys were fetched but none matches the token's ``kid``."""


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """A verification key and the one algorithm it may be used with."""

    kid: str | None
    alg: str  # "RS256" or "ES256"
    key: PublicKey


@dataclass(slots=True)
class _IssuerState:
    keys: dict[str, IssuerKey] | None = None
    #: every usable key, including those without a kid (for kid-less tokens)
    all_keys: tuple[IssuerKey, ...] = ()
    fetched_at: float = 0.0
    #: successful fetches so far (tells a waiter whether the fetch it joined succeeded)
    generation: int = 0
    last_attempt: float | None = None
    last_error: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def quote_untrusted(value: object, limit: int = 64) -> str:
    """Quote an untrusted value for a message: ASCII only, control chars escaped, truncated."""
    s = value if isinstance(value, str) else repr(value)
    out = []
    for ch in s[:limit]:
        if " " <= ch <= "~" and ch not in "'\\":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "'" + "".join(out) + ("...'" if len(s) > limit else "'")


def parse_jwks(doc: object) -> tuple[IssuerKey, ...]:
    """The usable signature keys of a JWKS document (RFC 7517 §5). Raise ValueError if malformed."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    out: list[IssuerKey] = []
    for jwk in doc["keys"][:MAX_KEYS]:
        key = _parse_jwk(jwk)
        if key is not None:
            out.append(key)
    return tuple(out)


def _parse_jwk(jwk: object) -> IssuerKey | None:
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    kty, alg = jwk.get("kty"), jwk.get("alg")
    try:
        if kty == "RSA" and alg in (None, "RS256"):
            rkey = RSAAlgorithm.from_jwk({"kty": "RSA", "n": jwk.get("n"), "e": jwk.get("e")})
            if isinstance(rkey, rsa.RSAPublicKey) and rkey.key_size >= MIN_RSA_BITS:
                return IssuerKey(kid, "RS256", rkey)
        elif kty == "EC" and alg in (None, "ES256") and jwk.get("crv") == "P-256":
            pub = {"kty": "EC", "crv": "P-256", "x": jwk.get("x"), "y": jwk.get("y")}
            ekey = ECAlgorithm.from_jwk(pub)
            if isinstance(ekey, ec.EllipticCurvePublicKey):
                return IssuerKey(kid, "ES256", ekey)
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None
    return None


def discovery_urls(iss: str) -> tuple[str, ...]:
    """OIDC appended form first, then the RFC 8414 inserted form (PROTOCOLS.md §1.6 step 2)."""
    base = iss.rstrip("/")
    url = URL(base)
    path = url.path.rstrip("/")
    inserted = url.with_path("/.well-known/oauth-authorization-server" + path, encoded=False)
    return (base + "/.well-known/openid-configuration", str(inserted))


class KeyStore:
    """Per-issuer async key cache; see the module docstring for the rules."""

    def __init__(
        self,
        issuers: tuple[IssuerConfig, ...],
        *,
        ssl_context: ssl.SSLContext | None,
        refresh: float,
        min_refetch: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        max_stale: float = 4 * 86400.0,
    ) -> None:
        self._issuers = {i.issuer: i for i in issuers}
        self._ssl = ssl_context
        self._refresh = refresh
        self._min_refetch = min_refetch
        self._timeout = timeout
        self._clock = clock
        self._max_stale = max(max_stale, refresh)
        self._states: dict[str, _IssuerState] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        tasks = [s.task for s in self._states.values() if s.task is not None and not s.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_key(self, issuer: IssuerConfig, kid: str | None) -> IssuerKey:
        """The key for ``kid`` (or the only key when ``kid`` is None); raise KeyUnavailable."""
        if self._issuers.get(issuer.issuer) != issuer:
            raise KeyUnavailable("issuer not trusted")  # only configured issuers are fetched
        st = self._states.get(issuer.issuer)
        if st is None:
            st = self._states[issuer.issuer] = _IssuerState()
        now = self._clock()
        if st.keys is not None and now - st.fetched_at >= self._max_stale:
            st.keys, st.all_keys = None, ()  # last good keys are too old to trust
        if st.keys is None:
            if not self._may_fetch(st, now) and st.last_error:
                raise IssuerUnreachable(f"issuer unreachable: {st.last_error}")
            await self._fetch(st, issuer, now)
            if st.keys is None:
                raise IssuerUnreachable(f"issuer unreachable: {st.last_error}")
        elif now - st.fetched_at >= self._refresh and self._may_fetch(st, now):
            self._start(st, issuer, now)  # stale-while-revalidate: do not wait for it
        key = self._select(st, kid)
        if key is None and kid is not None and self._may_fetch(st, now):
            # unknown kid: maybe the issuer rotated its keys; one refetch per cool-down
            before = st.generation
            await self._fetch(st, issuer, now)
            if st.generation == before:
                raise IssuerUnreachable(f"issuer unreachable: {st.last_error}")
            key = self._select(st, kid)
        if key is not None:
            return key
        if kid is None:
            n = len(st.all_keys)
            raise UnknownKey(f"token has no key id and the issuer publishes {n} keys")
        raise UnknownKey(f"unknown key id {quote_untrusted(kid)}")

    # -- internals ----------------------------------------------------------------------------
    def _may_fetch(self, st: _IssuerState, now: float) -> bool:
        """A fetch is running (join it), or the last attempt is at least min_refetch old."""
        if st.task is not None and not st.task.done():
            return True
        return st.last_attempt is None or now - st.last_attempt >= self._min_refetch

    @staticmethod
    def _select(st: _IssuerState, kid: str | None) -> IssuerKey | None:
        if kid is None:
            return st.all_keys[0] if len(st.all_keys) == 1 else None
        return None if st.keys is None else st.keys.get(kid)

    def _start(self, st: _IssuerState, issuer: IssuerConfig, now: float) -> asyncio.Task[None]:
        if st.task is None or st.task.done():
            st.last_attempt = now
            st.task = asyncio.create_task(self._refresh_keys(st, issuer))
        return st.task

    async def _fetch(self, st: _IssuerState, issuer: IssuerConfig, now: float) -> None:
        # shield: a request that is cancelled must not cancel the fetch other requests share
        await asyncio.shield(self._start(st, issuer, now))

    async def _refresh_keys(self, st: _IssuerState, issuer: IssuerConfig) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                keys = await self._load(issuer)
        except TimeoutError:
            st.last_error = f"no answer within {self._timeout:g} s"
        except _FetchError as exc:
            st.last_error = str(exc)
        except (aiohttp.ClientError, OSError) as exc:
            st.last_error = _describe(exc)
        except Exception as exc:  # a surprise must fail this issuer's tokens, not the server
            log.exception("issuer %s: key fetch failed", issuer.issuer)
            st.last_error = type(exc).__name__
        else:
            st.keys = {k.kid: k for k in keys if k.kid is not None}
            st.all_keys = keys
            st.fetched_at = self._clock()
            st.generation += 1
            st.last_error = ""
            return
        log.warning("issuer %s: keys not refreshed: %s", issuer.issuer, st.last_error)

    async def _load(self, issuer: IssuerConfig) -> tuple[IssuerKey, ...]:
        if issuer.jwks_file is not None:
            try:
                raw = await asyncio.to_thread(issuer.jwks_file.read_bytes)
            except OSError as exc:
                raise _FetchError(f"cannot read jwks_file ({exc.strerror})") from None
            return _keys_from(_json(raw, "jwks_file"), "jwks_file")
        if not issuer.issuer.startswith("https://"):
            raise _FetchError("issuer URL is not https")
        errors = []
        for url in discovery_urls(issuer.issuer):
            try:
                meta = await self._get_json(url, "discovery")
                if not isinstance(meta, dict):
                    raise _FetchError("discovery: not a JSON object")
                if meta.get("issuer") != issuer.issuer:
                    raise _FetchError("discovery: metadata 'issuer' does not match")
                jwks_uri = meta.get("jwks_uri")
                if not isinstance(jwks_uri, str) or not _is_https(jwks_uri):
                    raise _FetchError("discovery: 'jwks_uri' missing or not https")
            except (_FetchError, aiohttp.ClientResponseError) as exc:
                errors.append(str(exc) if isinstance(exc, _FetchError) else _describe(exc))
                continue
            return _keys_from(await self._get_json(jwks_uri, "jwks"), "jwks")
        raise _FetchError("; ".join(dict.fromkeys(errors)))

    async def _get_json(self, url: str, what: str) -> object:
        if self._session is None or self._session.closed:
            ctx = self._ssl if self._ssl is not None else ssl.create_default_context()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit_per_host=4),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"Accept": "application/json"},
            )
        async with self._session.get(url, max_redirects=3) as resp:
            if resp.url.scheme != "https":
                raise _FetchError(f"{what}: redirected away from https")
            if resp.status != 200:
                raise _FetchError(f"{what}: HTTP {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise _FetchError(f"{what}: document too large")
        return _json(body, what)


class _FetchError(Exception):
    """A fetch failed; the message is safe to show (no untrusted content)."""


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        raise _FetchError(f"{what}: not valid JSON") from None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _keys_from(doc: object, what: str) -> tuple[IssuerKey, ...]:
    try:
        keys = parse_jwks(doc)
    except ValueError as exc:
        raise _FetchError(f"{what}: {exc}") from None
    if not keys:
        raise _FetchError(f"{what}: no usable RS256/ES256 key")
    return keys


def _is_https(url: str) -> bool:
    try:
        u = URL(url)
    except (ValueError, TypeError):
        return False
    return u.scheme == "https" and bool(u.host)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS verification failed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection failed"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects"
    return type(exc).__name__
