"""X509 end to end in process: real TLS on 127.0.0.1 (segate.web.tls), the app, real proxies.

Covers issue #4 and field reports B12/B13: the B13 proxy matrix, TLS refusals (expired,
untrusted, revoked - also behind a proxy - and a CRL replaced while running), the credential
precedence matrix (token vs certificate), per-request identity on a kept-alive X509 connection,
limited proxies, TLS session resumption keeping the chain, the access log naming the DN, and
macaroons minted with a proxy (identity, FQAN-bounded rights, lifetime bounded by the AC).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from segate import devpki
from segate.config import settings_from_dict
from segate.devissuer import DevIssuer, ensure_dev_issuer
from segate.web.app import create_app
from segate.web.tls import server_ssl_context
from testbed.pki import FQANS, USER_DN, TestPKI
from tests.conftest import AUDIENCE, ISSUER, base_config
from tests.x509_forge import ac_extension, make_ac, make_proxy

RULES: list[dict[str, Any]] = [
    {"path": "/data/prod", "allow": ["read", "modify"], "who": ["fqan:/testvo/Role=production"]},
    {"path": "/data/dn", "allow": ["read", "modify"], "who": [f"dn:{USER_DN}"]},
    {"path": "/data/vo", "allow": ["read"], "who": ["vo:testvo"]},
    {"path": "/pub", "allow": ["read"], "who": ["anonymous", "any-authenticated"]},
]


@dataclass
class Server:
    url: str
    pki: TestPKI
    issuer: DevIssuer
    root: Path

    def client_ssl(self, cert: Path | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(capath=str(self.pki.ca_dir))
        if cert is not None:
            ctx.load_cert_chain(cert)
        return ctx

    def token(self, scope: str) -> str:
        return self.issuer.mint(scope=scope, audience=AUDIENCE)

    async def call(
        self,
        method: str,
        path: str,
        *,
        cert: Path | None = None,
        token: str | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        return (await self.fetch(method, path, cert=cert, token=token, data=data, headers=headers))[
            0
        ]

    async def fetch(
        self,
        method: str,
        path: str,
        *,
        cert: Path | None = None,
        token: str | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        hdrs = {"Authorization": f"Bearer {token}"} if token else {}
        hdrs.update(headers or {})
        conn = aiohttp.TCPConnector(ssl=self.client_ssl(cert))
        async with (
            aiohttp.ClientSession(connector=conn) as s,
            s.request(method, self.url + path, headers=hdrs, data=data) as r,
        ):
            return r.status, await r.read()


ServerFactory = Callable[..., "asyncio.Future[Server]"]


@pytest.fixture
async def start(grid_pki: TestPKI, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    issuer = ensure_dev_issuer(tmp_path / "issuer", ISSUER)

    async def factory(
        *,
        ca_dir: Path | None = None,
        reload_every: float = 300.0,
        macaroons: bool = False,
        **x509_cfg: Any,
    ) -> Server:
        root = tmp_path / f"root{len(runners)}"
        for sub in ("data/prod", "data/dn", "data/vo", "pub"):
            (root / sub).mkdir(parents=True)
        (root / "data/vo/f").write_bytes(b"vo")
        (root / "pub/f").write_bytes(b"pub")
        cfg = base_config(
            root,
            issuer.jwks_file,
            storage={"create_parents": False},
            x509={"vomsdir": str(grid_pki.vomsdir), **x509_cfg},
            rules=RULES,
        )
        cfg["server"]["ca_dir"] = str(ca_dir or grid_pki.ca_dir)
        if macaroons:
            cfg["macaroons"] = {"secret_file": str(tmp_path / f"macaroon{len(runners)}.key")}
        settings = settings_from_dict(cfg, tmp_path)
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        runners.append(runner)
        ctx = server_ssl_context(
            grid_pki.host_cert,
            grid_pki.host_key,
            ca_dir or grid_pki.ca_dir,
            reload_every=reload_every,
        )
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = runner.addresses[0][1]
        return Server(f"https://127.0.0.1:{port}", grid_pki, issuer, root)

    yield factory
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def srv(start: Callable[..., Any]) -> Server:
    s: Server = await start()
    return s


# -- B13 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("proxy", "prod"),
    [("voms", 201), ("expired_ac", 403), ("rogue_ac", 403), ("plain", 403)],
)
async def test_b13_matrix(
    srv: Server, caplog: pytest.LogCaptureFixture, proxy: str, prod: int
) -> None:
    caplog.set_level(logging.WARNING, logger="segate.auth.x509")
    p = srv.pki.proxies[proxy]
    assert await srv.call("PUT", "/data/prod/f", cert=p, data=b"x") == prod
    assert await srv.call("PUT", "/data/dn/f", cert=p, data=b"x") == 201
    assert (srv.root / "data/dn/f").read_bytes() == b"x"
    assert await srv.call("GET", "/data/vo/f", cert=p) == (200 if prod == 201 else 403)
    warned = [r.getMessage() for r in caplog.records if r.name == "segate.auth.x509"]
    assert bool(warned) is (proxy in ("expired_ac", "rogue_ac")), warned


async def test_user_only_fqan_and_other_vo(srv: Server) -> None:
    assert (
        await srv.call("PUT", "/data/prod/f", cert=srv.pki.proxy_voms_user_only, data=b"1") == 403
    )
    assert await srv.call("GET", "/data/vo/f", cert=srv.pki.proxy_voms_user_only) == 200
    other = srv.pki.proxy_other_user
    assert await srv.call("GET", "/data/vo/f", cert=other) == 403
    assert await srv.call("PUT", "/data/dn/g", cert=other, data=b"1") == 403
    assert await srv.call("GET", "/pub/f", cert=other) == 200


async def test_user_certificate_without_proxy(srv: Server, tmp_path: Path) -> None:
    pem = tmp_path / "user.pem"
    pem.write_bytes(srv.pki.user_cert.read_bytes() + srv.pki.user_key.read_bytes())
    assert await srv.call("PUT", "/data/dn/u", cert=pem, data=b"u") == 201
    assert await srv.call("PUT", "/data/prod/u", cert=pem, data=b"u") == 403


@pytest.mark.parametrize("proxy", ["expired", "untrusted"])
async def test_tls_refuses_expired_and_untrusted(srv: Server, proxy: str) -> None:
    with pytest.raises(aiohttp.ClientError):
        await srv.call("GET", "/pub/f", cert=srv.pki.proxies[proxy])


# -- precedence (issue #4, PROTOCOLS.md §5.5) -----------------------------------------------------
async def test_precedence_matrix(srv: Server) -> None:
    p = srv.pki.proxy_voms
    tok = srv.token("storage.read:/pub storage.create:/tok")
    (srv.root / "tok").mkdir()
    # proxy + valid token: the token alone decides, in both directions
    assert await srv.call("PUT", "/data/prod/a", cert=p, token=tok, data=b"1") == 403
    assert await srv.call("PUT", "/tok/a", cert=p, token=tok, data=b"1") == 201
    # proxy + bad token: 401 although the certificate would be fine
    bad = tok[:-4] + ("AAAA" if not tok.endswith("AAAA") else "BBBB")
    assert await srv.call("PUT", "/data/prod/a", cert=p, token=bad, data=b"1") == 401
    assert await srv.call("GET", "/pub/f", cert=p, token="not-a-token") == 401
    # token alone, proxy alone, nothing
    assert await srv.call("PUT", "/tok/b", token=tok, data=b"1") == 201
    assert await srv.call("PUT", "/data/prod/a", token=tok, data=b"1") == 403
    assert await srv.call("PUT", "/data/prod/a", cert=p, data=b"1") == 201
    assert await srv.call("PUT", "/data/prod/b", data=b"1") == 401
    assert await srv.call("GET", "/pub/f") == 200


async def test_keepalive_connection_identity_per_request(srv: Server) -> None:
    """B12 on an X509 connection: a token request, then the certificate alone again."""
    tok = srv.token("storage.read:/pub")
    conn = aiohttp.TCPConnector(ssl=srv.client_ssl(srv.pki.proxy_plain), limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        statuses = []
        for headers, path in (
            ({}, "/data/dn/k1"),
            ({"Authorization": f"Bearer {tok}"}, "/data/dn/k2"),
            ({}, "/data/dn/k3"),
        ):
            async with s.put(srv.url + path, data=b"k", headers=headers) as r:
                statuses.append(r.status)
        assert len(conn._conns) == 1  # one kept-alive connection for all three
    assert statuses == [201, 403, 201]


# -- limited proxies, resumption, log -------------------------------------------------------------
async def test_limited_proxy_policy(start: Callable[..., Any]) -> None:
    strict: Server = await start(allow_limited_proxies=False)
    assert await strict.call("GET", "/pub/f", cert=strict.pki.proxy_limited) == 401
    assert await strict.call("GET", "/pub/f", cert=strict.pki.proxy_voms) == 200
    lax: Server = await start()
    assert await lax.call("PUT", "/data/prod/l", cert=lax.pki.proxy_limited, data=b"1") == 201


def _raw_get(
    srv: Server, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    host, port = srv.url.removeprefix("https://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host, session=session) as tls,
    ):
        tls.sendall(b"GET /data/vo/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        return data, tls.session, bool(tls.session_reused)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_session_resumption_keeps_the_chain(srv: Server, version: ssl.TLSVersion) -> None:
    """A resumed session has no verified chain; TLS 1.3 tickets are off (tls.py), TLS 1.2
    session IDs resume and the chain remembered for the session is used (credentials.py)."""
    ctx = srv.client_ssl(srv.pki.proxy_voms)
    ctx.minimum_version = ctx.maximum_version = version
    first, session, _ = await asyncio.to_thread(_raw_get, srv, ctx, None)
    second, _, reused = await asyncio.to_thread(_raw_get, srv, ctx, session)
    # /data/vo needs the VO: only the full chain (AC in the proxy) gives it
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200"), second
    assert reused is (version is ssl.TLSVersion.TLSv1_2)


async def test_access_log_names_the_dn(srv: Server, access_lines: Callable[[], list[str]]) -> None:
    assert await srv.call("GET", "/data/vo/f", cert=srv.pki.proxy_voms) == 200
    line = access_lines()[-1]
    assert "auth=x509" in line and f'subject="{USER_DN}"' in line and "status=200" in line


# -- macaroons minted with a proxy (gfal2's TPC route) -------------------------------------------
MACAROON_REQUEST = {"Content-Type": "application/macaroon-request"}


async def test_macaroon_from_a_proxy_carries_its_identity(
    start: Callable[..., Any], grid_pki: TestPKI, tmp_path: Path
) -> None:
    s: Server = await start(macaroons=True)
    body = json.dumps({"caveats": ["activity:UPLOAD,DOWNLOAD"], "validity": "PT1H"}).encode()
    status, raw = await s.fetch(
        "POST", "/data/prod/", cert=grid_pki.proxy_voms, data=body, headers=MACAROON_REQUEST
    )
    assert status == 200, raw
    mac = json.loads(raw)["macaroon"]
    assert await s.call("PUT", "/data/prod/m", token=mac, data=b"m") == 201  # the FQAN rule
    assert await s.call("PUT", "/data/dn/m", token=mac, data=b"m") == 403  # path-bound
    # a proxy whose AC is not believed has no rights there, so nothing to mint
    for name in ("plain", "rogue_ac"):
        status, _ = await s.fetch(
            "POST", "/data/prod/", cert=grid_pki.proxies[name], data=body, headers=MACAROON_REQUEST
        )
        assert status == 403
    status, _ = await s.fetch(
        "POST", "/data/dn/", cert=grid_pki.proxy_limited, data=body, headers=MACAROON_REQUEST
    )
    assert status == 403  # limited proxies never delegate
    # lifetime bounded by the AC (B13): a 2-minute AC in a 12-hour proxy
    voms = x509.load_pem_x509_certificate(grid_pki.voms_cert.read_bytes())
    vkey = serialization.load_pem_private_key(grid_pki.voms_key.read_bytes(), None)
    assert isinstance(vkey, rsa.RSAPrivateKey)
    user = x509.load_pem_x509_certificate(grid_pki.user_cert.read_bytes())
    # ends 2 minutes from now (not from the module's NOW: the suite may reach this later)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    ac = make_ac(user, voms, vkey, fqans=FQANS, not_after=soon)
    user_key = serialization.load_pem_private_key(grid_pki.user_key.read_bytes(), None)
    assert isinstance(user_key, rsa.RSAPrivateKey)
    proxy, pkey = make_proxy(user, user_key, extensions=[ac_extension(ac)])
    short = tmp_path / "short.pem"
    short.write_bytes(
        proxy.public_bytes(serialization.Encoding.PEM)
        + pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        + user.public_bytes(serialization.Encoding.PEM)
    )
    status, raw = await s.fetch(
        "POST", "/data/prod/", cert=short, data=body, headers=MACAROON_REQUEST
    )
    assert status == 200 and json.loads(raw)["expires_in"] <= 120, raw


# -- CRLs -----------------------------------------------------------------------------------------
def _revoking_ca_dir(pki: TestPKI, dest: Path, serial: int) -> Path:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    crl = devpki.make_crl(ca, key, revoked=(serial,))
    dest.mkdir(exist_ok=True)
    for f in pki.ca_dir.iterdir():
        shutil.copy(f, dest / f.name)
    (r0,) = dest.glob("*.r0")
    r0.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return dest


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def test_revoked_user_refused_with_and_without_proxy(
    start: Callable[..., Any], grid_pki: TestPKI, tmp_path: Path
) -> None:
    ca_dir = _revoking_ca_dir(grid_pki, tmp_path / "revoked", _serial(grid_pki.other_user_cert))
    s: Server = await start(ca_dir=ca_dir)
    other = tmp_path / "other.pem"
    other.write_bytes(grid_pki.other_user_cert.read_bytes() + grid_pki.other_user_key.read_bytes())
    for cert in (other, grid_pki.proxy_other_user):
        with pytest.raises(aiohttp.ClientError):
            await s.call("GET", "/pub/f", cert=cert)
    assert await s.call("GET", "/data/vo/f", cert=grid_pki.proxy_voms) == 200  # proxies work


async def test_crl_replaced_while_running(
    start: Callable[..., Any], grid_pki: TestPKI, tmp_path: Path
) -> None:
    ca_dir = tmp_path / "live"
    shutil.copytree(grid_pki.ca_dir, ca_dir)
    s: Server = await start(ca_dir=ca_dir, reload_every=0.05)
    assert await s.call("GET", "/pub/f", cert=grid_pki.proxy_other_user) == 200
    _revoking_ca_dir(grid_pki, ca_dir, _serial(grid_pki.other_user_cert))
    await asyncio.sleep(0.2)
    assert await s.call("GET", "/pub/f", cert=grid_pki.proxy_voms) == 200  # first look: reload
    with pytest.raises(aiohttp.ClientError):
        await s.call("GET", "/pub/f", cert=grid_pki.proxy_other_user)
