"""A test and development token issuer (NOT secure: for tests, the testbed and ``segate token``).

* :class:`IssuerKeys`: signing keys (RSA kid ``rsa1``, EC P-256 kid ``ec1``), the public JWKS,
  rotation, and persistence to a folder (PEM files 0600, ``keys.json`` index, ``jwks.json``).
* :func:`mint`: WLCG profile tokens (``iss sub iat nbf exp jti wlcg.ver="1.0" aud scope
  [wlcg.groups]``, PROTOCOLS.md §1.1; always ``wlcg.ver`` "1.0", §8 item 5) or SciTokens 2.0
  tokens (``ver="scitoken:2.0"``, §2). Bad tokens for tests: :func:`alg_none`, :func:`hs256`,
  :func:`tamper`, and minting with a fresh ``IssuerKeys()`` (same kids, unknown keys).
* :class:`TestIssuer`: an HTTPS issuer on loopback serving OIDC discovery (appended and RFC 8414
  inserted forms), ``/jwks`` and ``/token``; counts fetches, can delay answers, rotate keys.

Command line (keep it small)::

    python -m testbed.issuer serve --dir D --port P --cert C --key K   # prints its URL
    python -m testbed.issuer mint --dir D --iss URL [--scope S] [--aud A] [--profile P] ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

WLCG_ANY = "https://wlcg.cern.ch/jwt/v1/any"
DEFAULT_SCOPE = {
    "wlcg": "storage.read:/ storage.create:/ storage.modify:/",
    "scitokens": "read:/ write:/",
}
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str  # "RS256" or "ES256"
    key: PrivateKey

    def jwk(self) -> dict[str, Any]:
        pub = self.key.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def _generate(kid: str, alg: str) -> SigningKey:
    if alg == "RS256":
        return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if alg == "ES256":
        return SigningKey(kid, alg, ec.generate_private_key(ec.SECP256R1()))
    raise ValueError(f"unsupported algorithm {alg!r}")


class IssuerKeys:
    """The issuer's keys; the last key of each algorithm is the current one."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.keys: list[SigningKey] = []
        if path is not None and (path / "keys.json").exists():
            self._load(path)
        else:
            self.keys = [_generate("rsa1", "RS256"), _generate("ec1", "ES256")]
            self.save()

    def current(self, alg: str = "RS256") -> SigningKey:
        for k in reversed(self.keys):
            if k.alg == alg:
                return k
        raise KeyError(alg)

    def by_kid(self, kid: str) -> SigningKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def rotate(self, alg: str = "RS256") -> str:
        """Add a fresh key for ``alg`` and make it current; return its kid."""
        prefix = "rsa" if alg == "RS256" else "ec"
        n = 1 + sum(1 for k in self.keys if k.alg == alg)
        while self.by_kid(f"{prefix}{n}") is not None:
            n += 1
        key = _generate(f"{prefix}{n}", alg)
        self.keys.append(key)
        self.save()
        return key.kid

    def save(self) -> None:
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for k in self.keys:
            pem = k.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(self.path / f"{k.kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        index = [{"kid": k.kid, "alg": k.alg} for k in self.keys]
        (self.path / "keys.json").write_text(json.dumps(index, indent=1))
        (self.path / "jwks.json").write_text(json.dumps(self.jwks(), indent=1))

    def _load(self, path: Path) -> None:
        for item in json.loads((path / "keys.json").read_text()):
            pem = (path / f"{item['kid']}.pem").read_bytes()
            key = serialization.load_pem_private_key(pem, None)
            if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise ValueError(f"{item['kid']}: unsupported key type")
            self.keys.append(SigningKey(item["kid"], item["alg"], key))


def encode(header: dict[str, Any], claims: dict[str, Any], key: SigningKey | None) -> str:
    """Compact JWS with exactly this header; signed with ``key`` (empty signature if None)."""
    signing_input = f"{_b64json(header)}.{_b64json(claims)}"
    if key is None:
        return signing_input + "."
    sig = get_default_algorithms()[key.alg].sign(signing_input.encode("ascii"), key.key)
    return f"{signing_input}.{b64url(sig)}"


def mint(
    keys: IssuerKeys,
    *,
    iss: str,
    sub: str = "user",
    scope: str | None = None,
    aud: str | list[str] | None = None,
    lifetime: float = 600,
    profile: str = "wlcg",
    groups: list[str] | None = None,
    alg: str = "RS256",
    kid: str | None = None,
    extra_claims: dict[str, Any] | None = None,
    header_overrides: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """Sign a token. ``aud`` None: the "any" audience of the profile; ``scope`` None: no scope.

    ``kid`` picks the signing key (if it names one) and the header ``kid``; a kid that names no
    key signs with the current ``alg`` key. In ``extra_claims`` and ``header_overrides`` a value
    of None removes the field.
    """
    t = int(time.time() if now is None else now)
    c: dict[str, Any] = {"iss": iss, "sub": sub, "iat": t, "nbf": t, "exp": t + int(lifetime)}
    c["jti"] = str(uuid.uuid4())
    if profile not in ("wlcg", "scitokens"):
        raise ValueError(f"unknown profile {profile!r}")
    if profile == "wlcg":
        c.update({"wlcg.ver": "1.0", "aud": WLCG_ANY if aud is None else aud})
    else:
        c.update({"ver": "scitoken:2.0", "aud": "ANY" if aud is None else aud})
    if scope is not None:
        c["scope"] = scope
    if groups:
        c["wlcg.groups"] = list(groups)
    key = (keys.by_kid(kid) if kid else None) or keys.current(alg)
    header: dict[str, Any] = {"alg": key.alg, "typ": "JWT", "kid": kid or key.kid}
    return encode(_merge(header, header_overrides), _merge(c, extra_claims), key)


def _merge(base: dict[str, Any], changes: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for name, value in (changes or {}).items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    dec = [json.loads(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))) for x in (h, p)]
    return dec[0], dec[1]


def alg_none(token: str, *, signature: str = "") -> str:
    """The same claims with ``alg: none`` and no (or a junk) signature: the classic downgrade."""
    header, claims = _parts(token)
    return encode({**header, "alg": "none"}, claims, None) + signature


def hs256(token: str, secret: bytes) -> str:
    """The same claims HMAC-signed, e.g. keyed with the issuer's public key PEM (key confusion)."""
    header, claims = _parts(token)
    signing_input = f"{_b64json({**header, 'alg': 'HS256'})}.{_b64json(claims)}"
    sig = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def tamper(token: str, **claims: Any) -> str:
    """Change payload claims and keep the original header and signature."""
    h, _, s = token.split(".")
    return f"{h}.{_b64json({**_parts(token)[1], **claims})}.{s}"


class TestIssuer:
    """An HTTPS issuer on 127.0.0.1 (port 0 = a free one). ``async with TestIssuer(c, k) as i``.

    ``fetches`` counts requests per endpoint ("discovery", "rfc8414", "jwks", "token");
    ``delay`` (seconds) holds discovery and JWKS answers; ``metadata_overrides`` changes the
    discovery document (None removes a field); ``serve_oidc=False`` serves only the RFC 8414 form.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        keys: IssuerKeys | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "",
        serve_oidc: bool = True,
    ) -> None:
        self.cert, self.key = cert, key
        self.keys = keys or IssuerKeys()
        self.host, self.port, self.path = host, port, path.rstrip("/")
        self.serve_oidc = serve_oidc
        self.delay = 0.0
        self.metadata_overrides: dict[str, Any] = {}
        self.fetches: collections.Counter[str] = collections.Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    async def __aenter__(self) -> TestIssuer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        app = web.Application()
        p = self.path
        if self.serve_oidc:
            app.router.add_get(p + "/.well-known/openid-configuration", self._doc("discovery"))
        app.router.add_get("/.well-known/oauth-authorization-server" + p, self._doc("rfc8414"))
        app.router.add_get(p + "/jwks", self._doc("jwks"))
        app.router.add_route("*", p + "/token", self._token)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            self.url = f"https://{self.host}:{self.port}{p}"
            await web.SockSite(self._runner, sock, ssl_context=ctx).start()
        except BaseException:
            sock.close()
            await self.close()
            raise

    async def close(self) -> None:
        self._closing.set()  # release delayed handlers at once
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def rotate(self, alg: str = "RS256") -> str:
        return self.keys.rotate(alg)

    def mint(self, **kw: Any) -> str:
        return mint(self.keys, iss=self.url, **kw)

    def _metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "issuer": self.url,
            "jwks_uri": self.url + "/jwks",
            "token_endpoint": self.url + "/token",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "grant_types_supported": ["client_credentials"],
        }
        for k, v in self.metadata_overrides.items():
            if v is None:
                meta.pop(k, None)
            else:
                meta[k] = v
        return meta

    def _doc(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            self.fetches[name] += 1
            if self.delay > 0:  # a slow or hung issuer; close() releases it at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.delay)
            return web.json_response(self.keys.jwks() if name == "jwks" else self._metadata())

        return handler

    async def _token(self, request: web.Request) -> web.Response:
        self.fetches["token"] += 1
        form: dict[str, str] = dict(request.query)
        if request.method == "POST":
            form.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        profile = form.get("profile", "wlcg")
        try:
            lifetime = int(form.get("lifetime", "3600"))
            aud_raw = form.get("aud")
            token = self.mint(
                profile=profile,
                scope=form.get("scope", DEFAULT_SCOPE.get(profile, "")),
                aud=aud_raw.split() if aud_raw and " " in aud_raw else aud_raw,
                sub=form.get("sub", "testuser"),
                lifetime=lifetime,
                alg=form.get("alg", "RS256"),
                groups=[g for g in form.get("groups", "").split(",") if g] or None,
            )
        except (ValueError, KeyError) as exc:
            return web.json_response({"error": "invalid_request", "detail": str(exc)}, status=400)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
        )


# -- command line ---------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> None:
    keys = IssuerKeys(Path(args.dir))
    async with TestIssuer(
        Path(args.cert), Path(args.key), keys=keys, host=args.host, port=args.port
    ) as iss:
        print(iss.url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m testbed.issuer", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the HTTPS issuer; prints its URL")
    s.add_argument("--dir", required=True, help="key folder (created if missing)")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    m = sub.add_parser("mint", help="print a token")
    m.add_argument("--dir", required=True)
    m.add_argument("--iss", required=True)
    m.add_argument("--profile", choices=("wlcg", "scitokens"), default="wlcg")
    m.add_argument("--scope", help="space-separated scopes (default: read/create/modify on /)")
    m.add_argument("--aud", help="audience; several separated by spaces")
    m.add_argument("--sub", default="testuser")
    m.add_argument("--lifetime", type=int, default=3600)
    m.add_argument("--alg", choices=("RS256", "ES256"), default="RS256")
    m.add_argument("--groups", default="", help="comma-separated wlcg.groups")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        asyncio.run(_serve(args))
        return 0
    aud = args.aud.split() if args.aud and " " in args.aud else args.aud
    token = mint(
        IssuerKeys(Path(args.dir)),
        iss=args.iss,
        profile=args.profile,
        scope=args.scope if args.scope is not None else DEFAULT_SCOPE[args.profile],
        aud=aud,
        sub=args.sub,
        lifetime=args.lifetime,
        alg=args.alg,
        groups=[g for g in args.groups.split(",") if g] or None,
    )
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
