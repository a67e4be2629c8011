"""Verify WLCG and SciTokens JWT bearer tokens; turn their scopes into grants.

Rules (PROTOCOLS.md §1.1-1.6, §2, §8; field reports B02, B05, B06, B07, B08):

* Order (§1.6): compact JWS with three parts (JWE refused) -> ``iss`` from the *unverified*
  payload, looked up by exact string among the configured issuers (unknown: 401, no network)
  -> ``alg`` in {RS256, ES256} (never ``none``/``HS*``) -> key by ``kid`` from the KeyStore,
  whose type must match ``alg`` -> signature -> claims -> scopes.
* Time (B07): ``exp`` required, a JSON number (a float is truncated); rejected at or after
  ``exp + leeway``. ``nbf`` optional (rejected before ``nbf - leeway``); ``iat`` more than
  ``leeway`` in the future is rejected. ``tokens.leeway`` applies to all three.
* Audience (§1.2, B06): ``aud`` required, a string or a list; accepted if any value is in the
  configured audiences or the server's own (see :func:`default_audiences`: URL and bare host
  forms). ``https://wlcg.cern.ch/jwt/v1/any`` (and ``ANY`` for SciTokens 2.0 tokens) only if
  ``accept_any_audience`` is on (the issuer's setting wins over the global one).
* Versions: ``wlcg.ver`` must be ``1.x`` (unknown major rejected, §1.1); SciTokens ``ver`` absent,
  ``scitoken:2.0``, ``scitokens:2.0`` or ``scitokens:1.0`` (§2). A token with neither claim from a
  ``wlcg`` issuer is rejected. Header ``typ`` absent, ``JWT``, ``at+jwt`` or ``application/at+jwt``;
  any ``crit`` header is refused (we understand no extensions, RFC 7515 §4.1.11).
* Scopes (§1.3, §2, B02, B05): ``scope`` (string), else ``scp`` (list or string). WLCG
  ``storage.{read,create,modify,stage,poll}:<path>`` and SciTokens ``read:``/``write:`` are both
  accepted from every issuer; ``write`` grants modify. Every ``storage.*`` (and ``read``/``write``)
  scope needs an absolute, strictly parsed path (:func:`segate.paths.parse_scope_path`), else the
  whole token is rejected. Grants are absolute: each issuer base path joined with the scope path.
  Any ``storage.*`` scope (even ``poll``, or an unknown ``storage.<op>``) makes the token a
  capability token (``capabilities`` is a tuple, maybe empty); with none it is an identity
  token (``capabilities is None``), judged by site rules on ``wlcg.groups`` (§1.5).
* Verified tokens are cached until ``min(exp, verified + 300 s)``; a hit never extends that
  (B07), and failures are never cached. The key is the token itself (up to
  :data:`STR_KEY_MAX_CHARS`; a longer one by its sha256), so a request with a cached token is
  recognised and answered by one dict lookup, before any parsing.
* Every failure is :class:`segate.errors.Unauthenticated` with a short one-line reason. Untrusted
  values in reasons are truncated and escaped; the token itself never appears in one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from segate.auth.chain import Credentials
from segate.auth.jwks import IssuerKey, KeyStore
from segate.auth.jwks import quote_untrusted as q
from segate.auth.principal import Grant, Kind, Permission, Principal
from segate.config import WLCG_ANY_AUDIENCE, IssuerConfig, TokensConfig
from segate.errors import Unauthenticated
from segate.paths import LogicalPath, PathError, parse_scope_path

ALLOWED_ALGORITHMS = ("RS256", "ES256")
SCITOKENS_ANY_AUDIENCE = "ANY"
#: a cached verification is re-done at least this often (key revocation, config reload)
CACHE_MAX_AGE = 300.0
#: bigger bearer tokens are refused before any parsing (XRootD CGI tokens stay far below)
MAX_TOKEN_BYTES = 32 * 1024
#: cache keys: the token string itself up to this length (a WLCG token is ~1 KiB), else its
#: sha256, so the cache holds at most ``cache_size`` * this many characters of tokens
STR_KEY_MAX_CHARS = 4096

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_WLCG_VER = re.compile(r"1\.[0-9]+")
_SCITOKENS_VERS = frozenset({"scitoken:2.0", "scitokens:2.0", "scitokens:1.0"})
_SCITOKENS_2 = frozenset({"scitoken:2.0", "scitokens:2.0"})
_TYPES = frozenset({"JWT", "at+jwt", "application/at+jwt"})
_STORAGE_PERMISSIONS = {
    "read": Permission.READ,
    "create": Permission.CREATE,
    "modify": Permission.MODIFY,
    "stage": Permission.STAGE,
    "poll": None,  # locality queries: nothing we serve, but still a capability statement
}
_SCITOKENS_PERMISSIONS = {"read": Permission.READ, "write": Permission.MODIFY}
_ALGORITHMS: dict[str, Algorithm] = {a: get_default_algorithms()[a] for a in ALLOWED_ALGORITHMS}


def default_audiences(host: str, port: int, aliases: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The audiences that name this server (PROTOCOLS.md §1.2 recommendation, B06).

    For the listen host and every alias: ``https://h:port``, ``https://h`` when the port is 443,
    and the bare host name (Rucio's form). An alias may carry its own ``:port``.
    """
    out: list[str] = []
    for name in (host, *aliases):
        h, p = name, port
        head, sep, tail = name.rpartition(":")
        if sep and tail.isdigit() and head and (head.startswith("[") or ":" not in head):
            h, p = head, int(tail)
        bare = h[1:-1] if h.startswith("[") and h.endswith("]") else h
        url_host = f"[{bare}]" if ":" in bare else bare
        out.append(f"https://{url_host}:{p}")
        if p == 443:
            out.append(f"https://{url_host}")
        out.append(bare)
    return tuple(dict.fromkeys(out))


def grants_from_scopes(
    scopes: Iterable[str], base_paths: tuple[LogicalPath, ...]
) -> tuple[Grant, ...] | None:
    """Storage grants of a token's scopes, absolute (below ``base_paths``), or None if none.

    None: no storage scope at all (identity token). Raise Unauthenticated for a storage scope
    without a path or with a path that parse_scope_path refuses: the whole token is bad (§1.3).
    """
    grants: list[Grant] = []
    capability = False
    for scope in scopes:
        name, sep, raw = scope.partition(":")
        if name.startswith("storage."):
            perm = _STORAGE_PERMISSIONS.get(name[len("storage.") :])
        elif name in _SCITOKENS_PERMISSIONS:
            perm = _SCITOKENS_PERMISSIONS[name]
        else:
            continue  # openid, offline_access, wlcg.groups, compute.*, condor:/READ, ...
        capability = True
        if not sep or not raw:
            raise Unauthenticated(f"scope {q(scope)} has no path")
        try:
            path, dir_only = parse_scope_path(raw)
        except PathError as exc:
            raise Unauthenticated(f"scope {q(scope)} rejected: {exc}") from None
        if perm is None:
            continue
        grants.extend(Grant(perm, base.join(path), dir_only) for base in base_paths)
    return tuple(dict.fromkeys(grants)) if capability else None


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: Principal
    until: float


class JwtAuthenticator:
    """The BearerAuthenticator for JWTs (see the module docstring for the rules)."""

    name = "jwt"

    def __init__(
        self,
        tokens: TokensConfig,
        keys: KeyStore,
        *,
        server_audiences: tuple[str, ...],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens
        self._keys = keys
        self._issuers = {i.issuer: i for i in tokens.issuers}
        self._audiences = frozenset((*tokens.audiences, *server_audiences))
        self._clock = clock
        self._cache: OrderedDict[str | bytes, _Cached] = OrderedDict()

    def recognises(self, token: str) -> bool:
        if len(token) <= STR_KEY_MAX_CHARS and token in self._cache:
            return True  # verified before, so it has the shape below (a pure test of the token)
        parts = token.split(".")
        if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
            return False
        try:
            header = _decode_json(parts[0])
        except Unauthenticated:
            return False
        return "alg" in header

    async def authenticate(self, token: str, creds: Credentials) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large")
        if len(token) <= STR_KEY_MAX_CHARS:
            key: str | bytes = token
        else:
            key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._cache.get(key)
        if hit is not None:
            if self._clock() < hit.until:
                self._cache.move_to_end(key)
                return hit.principal
            del self._cache[key]
        try:
            principal, until = await self._verify(token)
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
            # a claim or header of a type no check above expected: the token is malformed (401),
            # never a 500 (issue #8 fuzzing found ``"ver": []``); the type names the gap
            raise Unauthenticated(f"malformed token ({type(exc).__name__})") from None
        if self._tokens.cache_size > 0:
            self._cache[key] = _Cached(principal, until)
            while len(self._cache) > self._tokens.cache_size:
                self._cache.popitem(last=False)
        return principal

    # -- verification -------------------------------------------------------------------------
    async def _verify(self, token: str) -> tuple[Principal, float]:
        parts = token.split(".")
        if len(parts) == 5:
            raise Unauthenticated("encrypted tokens (JWE) are not supported")
        if len(parts) != 3:
            raise Unauthenticated("malformed token: not a compact JWS")
        header = _decode_json(parts[0], "header")
        claims = _decode_json(parts[1], "payload")
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise Unauthenticated("token has no issuer")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise Unauthenticated(f"issuer not trusted: {q(iss)}")
        key = await self._key(header, issuer)
        try:
            signature = _b64decode(parts[2])
        except ValueError:
            raise Unauthenticated("malformed token: bad signature encoding") from None
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not signature or not _ALGORITHMS[key.alg].verify(signed, key.key, signature):
            raise Unauthenticated("signature verification failed")
        return self._principal(claims, issuer)

    async def _key(self, header: dict[str, Any], issuer: IssuerConfig) -> IssuerKey:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise Unauthenticated(f"algorithm {q(alg)} not allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ not in _TYPES):
            raise Unauthenticated(f"token type {q(typ)} not accepted")
        if "crit" in header:
            raise Unauthenticated("critical header parameters are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("malformed key id")
        key = await self._keys.get_key(issuer, kid)
        if key.alg != alg:
            raise Unauthenticated(f"algorithm {alg} does not match key {q(kid)} ({key.alg})")
        return key

    def _principal(self, c: dict[str, Any], issuer: IssuerConfig) -> tuple[Principal, float]:
        now = self._clock()
        leeway = float(self._tokens.leeway)
        raw_exp = _number(c, "exp")
        if raw_exp is None:
            raise Unauthenticated("token has no expiry")
        exp = float(math.floor(raw_exp))  # B07: a float exp is fine, truncated
        if now >= exp + leeway:
            raise Unauthenticated("token expired")
        nbf = _number(c, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise Unauthenticated("token not yet valid")
        iat = _number(c, "iat")
        if iat is not None and iat > now + leeway:
            raise Unauthenticated("token issued in the future")
        scitokens2 = self._check_version(c, issuer)
        self._check_audience(c, issuer, scitokens2)
        sub = c.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("token has no subject")
        groups = c.get("wlcg.groups")
        if not isinstance(groups, list):
            groups = []
        principal = Principal(
            kind=Kind.JWT,
            subject=sub,
            issuer=issuer.issuer,
            groups=tuple(g for g in groups if isinstance(g, str)),
            capabilities=grants_from_scopes(_scopes(c), issuer.base_paths),
            expires_at=exp,
        )
        return principal, min(exp, now + CACHE_MAX_AGE)

    @staticmethod
    def _check_version(c: dict[str, Any], issuer: IssuerConfig) -> bool:
        """Validate wlcg.ver / ver; return True for a SciTokens 2.0 token."""
        if "wlcg.ver" in c:
            wv = c["wlcg.ver"]
            if not isinstance(wv, str) or not _WLCG_VER.fullmatch(wv):
                raise Unauthenticated(f"unsupported wlcg.ver {q(wv)}")
        if "ver" in c:
            v = c["ver"]
            if not isinstance(v, str) or v not in _SCITOKENS_VERS:  # a list is unhashable
                raise Unauthenticated(f"unsupported SciTokens ver {q(v)}")
            return v in _SCITOKENS_2
        if "wlcg.ver" not in c and issuer.profile == "wlcg":
            raise Unauthenticated("token has no wlcg.ver")
        return False

    def _check_audience(self, c: dict[str, Any], issuer: IssuerConfig, scitokens2: bool) -> None:
        aud = c.get("aud")
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not auds:
            raise Unauthenticated("token has no audience")
        if not all(isinstance(a, str) for a in auds):
            raise Unauthenticated("malformed audience")
        if any(a in self._audiences for a in auds):
            return
        any_ok = issuer.accept_any_audience
        if any_ok is None:
            any_ok = self._tokens.accept_any_audience
        if any_ok and (
            WLCG_ANY_AUDIENCE in auds or (scitokens2 and SCITOKENS_ANY_AUDIENCE in auds)
        ):
            return
        raise Unauthenticated(f"audience {q(' '.join(auds))} not accepted")


def _b64decode(part: str) -> bytes:
    if not _B64URL.fullmatch(part):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


def _decode_json(part: str, what: str = "header") -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(part), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Unauthenticated(f"malformed token: {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise Unauthenticated(f"malformed token: {what} is not a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON numbers


def _number(c: dict[str, Any], name: str) -> float | None:
    """An optional NumericDate claim (int or float); None when absent."""
    v = c.get(name)
    if v is None:
        return None
    try:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(name)
        return float(v)
    except (ValueError, OverflowError):
        raise Unauthenticated(f"malformed '{name}' claim") from None


def _scopes(c: dict[str, Any]) -> list[str]:
    raw = c.get("scope")
    if raw is None:
        raw = c.get("scp")  # older SciTokens (PROTOCOLS.md §2)
    if raw is None:
        return []
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return [t for s in raw for t in s.split()]
    raise Unauthenticated("malformed scope claim")
