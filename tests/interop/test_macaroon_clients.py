"""Macaroons with real clients against the real ``segate serve`` process (PROTOCOLS.md §3).

curl mints (POST ``application/macaroon-request`` with the exact bodies gfal2 sends, PEERS.md
"Macaroons") and uses them in the header and in ``?authz=``; davix-get/davix-put/davix-ls use
them as ``Authorization: Bearer``. The gateway runs two workers that create the secret at the
same first start, and a second gateway shares the secret file: every process accepts every
macaroon. ``segate macaroon --config`` mints with the same secret. gfal-token (gfal2's own
macaroon request, made with its X509 proxy) gets a macaroon for the VOMS identity, which curl
then uses alone; limited proxies and identities without rights get 403. No macaroon ever
reaches the server log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymacaroons import Macaroon

from segate.auth.macaroon_caveats import MintedFor
from segate.auth.macaroons import looks_like_macaroon
from segate.devissuer import DevIssuer, ensure_dev_issuer
from testbed.pki import TestPKI
from tests.interop.conftest import ROOT, RunningSegate, StartSegate, need

pytestmark = pytest.mark.interop

ISSUER = "https://issuer.test.invalid/macaroons"
AUDIENCE = "https://se.test.invalid"  # both gateways accept it (their ports differ)
MR = "application/macaroon-request"
RW = "storage.read:/ storage.create:/ storage.modify:/"
GFAL_READ = '{"caveats": ["activity:LIST,DOWNLOAD"], "validity": "PT180M"}'
GFAL_WRITE = '{"caveats": ["activity:LIST,DOWNLOAD,MANAGE,UPLOAD,DELETE"], "validity": "PT130M"}'
TIMEOUT = 60


@dataclass
class Env:
    se: RunningSegate
    twin: RunningSegate
    issuer: DevIssuer
    tmp: Path
    secrets: list[str] = field(default_factory=list)

    def token(self, scope: str = RW) -> str:
        t = self.issuer.mint(scope=scope, audience=AUDIENCE)
        self.secrets.append(t)
        return t


@pytest.fixture(scope="module")
def env(start_segate: StartSegate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("macaroon-clients")
    issuer = ensure_dev_issuer(tmp / "issuer", ISSUER)
    shared_root = tmp / "data"
    cfg: dict[str, Any] = {
        "server": {"workers": 2},
        "storage": {"root": str(shared_root)},
        "tokens": {
            "audiences": [AUDIENCE],
            "issuers": [{"issuer": ISSUER, "jwks_file": str(issuer.jwks_file)}],
        },
        "macaroons": {"secret_file": str(tmp / "macaroon-secret")},
    }
    se = start_segate(cfg, name="mac")
    twin = start_segate({**cfg, "server": {"workers": 1}}, name="mac-twin")
    (shared_root / "data").mkdir()
    (shared_root / "data" / "f").write_bytes(b"hello from segate\n")
    (shared_root / "other").mkdir()
    (shared_root / "other" / "g").write_bytes(b"other\n")
    env = Env(se, twin, issuer, tmp)
    yield env
    # B09 / PROTOCOLS.md §8 item 12: no credential in the logs, ever
    for running in (se, twin):
        log = running.log_text()
        assert "access" in log or "method=" in log
        for secret in env.secrets:
            assert secret[-24:] not in log


def curl(
    env: Env, method: str, url: str, *args: str, bearer: str | None = None
) -> tuple[int, bytes]:
    need("curl")
    out = env.tmp / "curl.out"
    out.unlink(missing_ok=True)
    cmd = ["curl", "-sS", "--capath", str(env.se.ca_dir), "-X", method, "-o", str(out)]
    cmd += ["-w", "%{http_code}", *args]
    if bearer is not None:
        cmd += ["-H", f"Authorization: Bearer {bearer}"]
    r = subprocess.run([*cmd, url], capture_output=True, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return int(r.stdout), out.read_bytes() if out.exists() else b""


def request_macaroon(env: Env, url: str, body: str, token: str) -> dict[str, Any]:
    status, raw = curl(
        env, "POST", url, "-H", f"Content-Type: {MR}", "--data-binary", body, bearer=token
    )
    assert status == 200, raw
    answer: dict[str, Any] = json.loads(raw)
    env.secrets.append(answer["macaroon"])
    return answer


def run_davix(env: Env, tool: str, *args: str, bearer: str | None = None) -> tuple[int, bytes]:
    need(tool)
    cmd = [tool, "--capath", str(env.se.ca_dir)]
    if bearer is not None:
        cmd += ["-H", f"Authorization: Bearer {bearer}"]
    r = subprocess.run([*cmd, *args], capture_output=True, timeout=TIMEOUT, check=False)
    return r.returncode, r.stdout


def test_curl_mints_and_uses(env: Env) -> None:
    url = env.se.url
    answer = request_macaroon(env, f"{url}/data/f", GFAL_READ, env.token())
    m = answer["macaroon"]
    assert 3500 < answer["expires_in"] <= 3600  # the token's own lifetime caps PT180M
    assert answer["uri"]["target"] == f"{url}/data/f"
    assert answer["uri"]["targetWithMacaroon"] == f"{url}/data/f?authz={m}"
    assert answer["uri"]["base"] == f"{url}/"
    assert curl(env, "GET", f"{url}/data/f", bearer=m) == (200, b"hello from segate\n")
    assert curl(env, "GET", answer["uri"]["targetWithMacaroon"]) == (200, b"hello from segate\n")
    assert curl(env, "GET", f"{url}/other/g", bearer=m)[0] == 403
    assert curl(env, "PUT", f"{url}/data/f", "--data-binary", "x", bearer=m)[0] == 403
    assert curl(env, "DELETE", f"{url}/data/f", bearer=m)[0] == 403
    assert curl(env, "PROPFIND", f"{url}/data/f", "-H", "Depth: 0", bearer=m)[0] == 207
    tampered = m[:-2] + ("AA" if not m.endswith("AA") else "BB")
    assert curl(env, "GET", f"{url}/data/f", bearer=tampered)[0] == 401
    # requests that are not macaroon requests, or not allowed
    status, body = curl(env, "POST", f"{url}/data/f", "--data-binary", GFAL_READ, bearer=m)
    assert status == 405 and b"hello" not in body
    assert curl(env, "POST", f"{url}/data/f", "-H", f"Content-Type: {MR}")[0] == 401
    status, body = curl(
        env, "POST", f"{url}/data", "-H", f"Content-Type: {MR}", "--data-binary",
        '{"validity": "P1Y"}', bearer=env.token(),
    )  # fmt: skip
    assert status == 400 and b"years and months" in body


def test_davix_with_a_write_macaroon(env: Env) -> None:
    url = env.se.url
    m = request_macaroon(env, f"{url}/data/in", GFAL_WRITE, env.token())["macaroon"]
    src = env.tmp / "upload.txt"
    src.write_bytes(b"davix upload\n")
    rc, _ = run_davix(env, "davix-put", str(src), f"{url}/data/in/file.txt", bearer=m)
    assert rc == 0
    assert (env.se.root / "data" / "in" / "file.txt").read_bytes() == b"davix upload\n"
    rc, out = run_davix(env, "davix-get", f"{url}/data/in/file.txt", bearer=m)
    assert rc == 0 and out == b"davix upload\n"
    rc, out = run_davix(env, "davix-get", f"{url}/data/in/file.txt?authz={m}")
    assert rc == 0 and out == b"davix upload\n"
    rc, out = run_davix(env, "davix-ls", f"{url}/data/in/", bearer=m)
    assert rc == 0 and out.split() == [b"file.txt"]
    rc, _ = run_davix(env, "davix-put", str(src), f"{url}/other/file.txt", bearer=m)
    assert rc != 0 and not (env.se.root / "other" / "file.txt").exists()
    rc, _ = run_davix(env, "davix-get", f"{url}/data/f", bearer=m)
    assert rc != 0  # outside data/in


def test_workers_and_twin_share_the_secret(env: Env) -> None:
    token = env.token("storage.read:/data")
    minted = []
    for i in range(6):  # separate connections: SO_REUSEPORT spreads them over both workers
        host = env.se if i % 2 == 0 else env.twin
        minted.append(request_macaroon(env, f"{host.url}/data", GFAL_READ, token)["macaroon"])
    for m in minted:
        for host in (env.se, env.twin, env.se, env.se):
            assert curl(env, "GET", f"{host.url}/data/f", bearer=m)[0] == 200


def test_admin_cli_macaroon(env: Env) -> None:
    cmd = [sys.executable, "-m", "segate", "macaroon", "--config", str(env.se.config_path)]
    cmd += ["--path", "/data", "--activity", "DOWNLOAD", "--validity", "PT5M"]
    r = subprocess.run(
        cmd,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    m = r.stdout.decode().strip()
    env.secrets.append(m)
    assert curl(env, "GET", f"{env.twin.url}/data/f", bearer=m)[0] == 200
    assert curl(env, "GET", f"{env.se.url}/other/g", bearer=m)[0] == 403
    assert curl(env, "PUT", f"{env.se.url}/data/cli", "--data-binary", "x", bearer=m)[0] == 403


# -- gfal2 asks with its X509 proxy (PEERS.md "Macaroons") ----------------------------------
@dataclass
class GridEnv:
    se: RunningSegate
    pki: TestPKI
    tmp: Path


@pytest.fixture(scope="module")
def grid(
    start_segate: StartSegate, grid_pki: TestPKI, tmp_path_factory: pytest.TempPathFactory
) -> GridEnv:
    tmp = tmp_path_factory.mktemp("macaroon-grid")
    cfg: dict[str, Any] = {
        "server": {
            "cert": str(grid_pki.host_cert),
            "key": str(grid_pki.host_key),
            "ca_dir": str(grid_pki.ca_dir),
        },
        "storage": {"root": str(tmp / "data")},
        "x509": {"vomsdir": str(grid_pki.vomsdir)},
        "rules": [{"path": "/data", "allow": ["read", "modify"], "who": ["fqan:/testvo"]}],
        "macaroons": {"secret_file": str(tmp / "macaroon-secret")},
    }
    se = start_segate(cfg, name="mac-grid")
    (se.root / "data").mkdir()
    (se.root / "data" / "f").write_bytes(b"grid data\n")
    return GridEnv(se, grid_pki, tmp)


def gfal_token(g: GridEnv, proxy: Path, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    need("gfal-token")
    genv = {**os.environ, **g.pki.env(proxy), "GFAL_PYTHONBIN": "/usr/bin/python3"}
    return subprocess.run(
        ["gfal-token", *args, url],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env=genv,
    )


def grid_curl(g: GridEnv, method: str, path: str, m: str, *args: str) -> tuple[int, bytes]:
    out = g.tmp / "curl.out"
    out.unlink(missing_ok=True)
    cmd = ["curl", "-sS", "--capath", str(g.pki.ca_dir), "-X", method, "-o", str(out)]
    cmd += ["-w", "%{http_code}", "-H", f"Authorization: Bearer {m}", *args, g.se.url + path]
    r = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return int(r.stdout), out.read_bytes() if out.exists() else b""


def test_gfal_token_with_a_voms_proxy(grid: GridEnv) -> None:
    r = gfal_token(grid, grid.pki.proxy_voms, f"{grid.se.url}/data/f")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    m = r.stdout.decode().strip().splitlines()[-1]
    assert looks_like_macaroon(m)
    cavs = [c.caveat_id for c in Macaroon.deserialize(m).caveats]
    assert "path:/data/f" in cavs and "activity:DOWNLOAD,LIST" in cavs
    assert MintedFor.decode(cavs[0][3:]).kind == "x509"
    # used without any certificate: the macaroon alone speaks, for the VOMS identity
    assert grid_curl(grid, "GET", "/data/f", m) == (200, b"grid data\n")
    assert grid_curl(grid, "PUT", "/data/f", m, "--data-binary", "x")[0] == 403
    w = gfal_token(grid, grid.pki.proxy_voms, f"{grid.se.url}/data/new", "-w", "--validity", "20")
    assert w.returncode == 0, w.stderr.decode(errors="replace")
    wm = w.stdout.decode().strip().splitlines()[-1]
    assert grid_curl(grid, "PUT", "/data/new", wm, "--data-binary", "up")[0] == 201
    assert grid_curl(grid, "PUT", "/data/other", wm, "--data-binary", "up")[0] == 403
    log = grid.se.log_text()
    assert m[-24:] not in log and wm[-24:] not in log


def test_gfal_token_refused_without_rights(grid: GridEnv) -> None:
    url = f"{grid.se.url}/data/f"
    limited = gfal_token(grid, grid.pki.proxy_limited, url)
    assert limited.returncode != 0 and b"HTTP 403" in limited.stderr + limited.stdout
    other_vo = gfal_token(grid, grid.pki.proxy_other_user, url)
    assert other_vo.returncode != 0 and b"HTTP 403" in other_vo.stderr + other_vo.stdout
