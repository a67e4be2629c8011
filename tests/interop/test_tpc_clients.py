"""HTTP third-party copy with real clients and a real XRootD peer, all on loopback.

Two ``segate serve`` processes (``start_segate``) and one XRootD 5.5 SE (testbed/xrootd.py,
HTTP-TPC + macaroons + SciTokens, keys pre-seeded in its cache) trust one dev CA and one token
issuer. Shown here (PROTOCOLS.md §4, PEERS.md §4):

* curl ``COPY``: 202, perf markers, ``success: Created`` / ``failure: ...``, pre-202 errors.
* ``gfal-copy --copy-mode pull`` and ``push`` between the two gateways, with one WLCG token
  whose audience both accept (``BEARER_TOKEN``), fallback to other modes switched off.
* gfal-copy pull and push between segate and XRootD in both directions and both roles (segate
  active: it pulls from / pushes to XRootD; XRootD active: it pulls from / pushes to segate).
* Macaroons from the passive SE, per endpoint through the gfal2 Python API (gfal2 has no
  per-endpoint token option): an XRootD macaroon (minted for an X.509 identity) used by segate
  as the active party, and a segate macaroon used by XRootD as the active party.

Every copy ends with the file contents and ``gfal-sum ADLER32`` of both ends compared. A test
skips only when a binary it needs is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from segate.devissuer import DevIssuer, ensure_dev_issuer
from segate.devpki import DevPKI, issue_cert, write_cert, write_key
from testbed import xrootd
from testbed.matrix import GFAL2_MODE, GFAL2_SCRIPT
from tests.interop.conftest import RunningSegate, StartSegate

pytestmark = pytest.mark.interop

ISSUER = "https://issuer.test.invalid/tpc"
AUDIENCE = "segate-tpc-interop"
RW = "storage.read:/ storage.create:/ storage.modify:/"
TIMEOUT = 120
GFAL_PYTHON = "/usr/bin/python3"
MARKER = re.compile(
    r"Perf Marker\nTimestamp: \d+\nStripe Index: 0\nStripe Bytes Transferred: \d+\n"
    r"Total Stripe Count: 1\n(RemoteConnections: tcp:[^\n]+\n)?End\n"
)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (testbed/test-all.sh installs it)")
    return path


@dataclass
class Env:
    a: RunningSegate
    b: RunningSegate
    issuer: DevIssuer
    pki: DevPKI
    tmp: Path
    secrets: list[str] = field(default_factory=list)

    def token(self, scope: str = RW) -> str:
        t = self.issuer.mint(scope=scope, audience=[AUDIENCE, xrootd.AUDIENCE])
        self.secrets.append(t)
        return t

    def client_env(self, token: str | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "BEARER_TOKEN")
        }
        env.update(GFAL_PYTHONBIN=GFAL_PYTHON, X509_CERT_DIR=str(self.pki.ca_dir))
        if token is not None:
            env["BEARER_TOKEN"] = token
        return env

    def assert_no_secret_in_logs(self) -> None:
        for se in (self.a, self.b):
            text = se.log_text()
            assert not [s for s in self.secrets if s in text], f"a token reached {se.log_path}"


def segate_config(issuer: DevIssuer, tmp: Path, name: str) -> dict[str, object]:
    return {
        "tokens": {
            "audiences": [AUDIENCE],
            "issuers": [{"issuer": ISSUER, "base_path": "/", "jwks_file": str(issuer.jwks_file)}],
        },
        "macaroons": {"secret_file": str(tmp / f"{name}-macaroon.secret")},
        "tpc": {"allow_hosts": ["127.0.0.1", "localhost", "::1"], "marker_interval": 1.0},
    }


@pytest.fixture(scope="module")
def env(
    start_segate: StartSegate, dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("tpc-clients")
    issuer = ensure_dev_issuer(tmp / "issuer", ISSUER)
    a = start_segate(segate_config(issuer, tmp, "a"), name="tpc-a")
    b = start_segate(segate_config(issuer, tmp, "b"), name="tpc-b")
    e = Env(a, b, issuer, dev_pki, tmp)
    yield e
    e.assert_no_secret_in_logs()


def put_file(root: Path, rel: str, size: int, data: bytes | None = None) -> bytes:
    data = os.urandom(size) if data is None else data
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def run(
    cmd: list[str], env: dict[str, str], timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def gfal_copy(e: Env, mode: str, src: str, dst: str, token: str) -> None:
    cmd = [
        binary("gfal-copy"),
        "-f",
        "-K",
        "ADLER32",
        "--copy-mode",
        mode,
        "-D",
        "HTTP PLUGIN:ENABLE_FALLBACK_TPC_COPY=false",
        src,
        dst,
    ]
    r = run(cmd, e.client_env(token))
    assert r.returncode == 0, f"gfal-copy {mode} failed:\n{r.stdout}\n{r.stderr}"


def gfal_sum(e: Env, url: str, token: str) -> str:
    r = run([binary("gfal-sum"), url, "ADLER32"], e.client_env(token))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


def assert_same(
    e: Env, token: str, src_url: str, dst_url: str, data: bytes, dst_file: Path
) -> None:
    assert dst_file.read_bytes() == data
    assert gfal_sum(e, src_url, token) == gfal_sum(e, dst_url, token) == adler(data)


def copies_in_log(se: RunningSegate, mode: str) -> int:
    return se.log_text().count(f'reason="tpc {mode}: success"')


# -- curl ---------------------------------------------------------------------------------------
def curl_copy(e: Env, url: str, headers: dict[str, str]) -> tuple[int, str]:
    cmd = [binary("curl"), "-sS", "--capath", str(e.pki.ca_dir), "-X", "COPY", "-D", "-", url]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    r = run(cmd, e.client_env())
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), body


def test_curl_copy_shows_202_markers_and_final_line(env: Env) -> None:
    data = put_file(env.a.root, "curl/src.bin", 2_000_000)
    tok = env.token()
    h = {
        "Authorization": f"Bearer {tok}",
        "Source": f"{env.a.url}/curl/src.bin",
        "TransferHeaderAuthorization": f"Bearer {tok}",
        "Credential": "none",
    }
    status, body = curl_copy(env, f"{env.b.url}/curl/dst.bin", h)
    assert status == 202
    markers = MARKER.findall(body)
    assert markers and body.startswith("Perf Marker\n")
    assert MARKER.sub("", body) == "success: Created\n"
    assert (env.b.root / "curl" / "dst.bin").read_bytes() == data
    # failures: one final line after the 202; bad requests before it
    h["Source"] = f"{env.a.url}/curl/missing.bin"
    status, body = curl_copy(env, f"{env.b.url}/curl/none.bin", h)
    assert status == 202 and MARKER.sub("", body).startswith("failure: remote side failed")
    assert "404" in body and not (env.b.root / "curl" / "none.bin").exists()
    status, _ = curl_copy(env, f"{env.b.url}/curl/x", {**h, "Credential": "gridsite"})
    assert status == 400
    status, _ = curl_copy(env, f"{env.b.url}/curl/dst.bin", {**h, "Overwrite": "F"})
    assert status == 412
    assert "Traceback" not in env.b.log_text() and "internal error" not in env.b.log_text()


# -- gfal-copy between two gateways -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["pull", "push"])
def test_gfal_copy_between_two_gateways(env: Env, mode: str) -> None:
    data = put_file(env.a.root, f"gfal/{mode}.bin", 3_000_000)
    tok = env.token()
    src, dst = f"davs://localhost:{env.a.port}/gfal/{mode}.bin", f"{env.b.url}/gfal/{mode}-copy.bin"
    active = env.b if mode == "pull" else env.a
    before = copies_in_log(active, mode)
    gfal_copy(env, mode, src, dst, tok)
    assert copies_in_log(active, mode) == before + 1
    assert_same(env, tok, src, dst, data, env.b.root / "gfal" / f"{mode}-copy.bin")


# -- XRootD ------------------------------------------------------------------------------------
@dataclass
class XEnv:
    e: Env
    x: xrootd.XrootdSE
    user_cert: Path
    user_key: Path


USER_DN = "/DC=test/DC=segate/OU=Users/CN=TPC Test User"


def make_user_cert(env: Env) -> tuple[Path, Path]:
    """A client certificate from the dev CA; XRootD maps its DN to ``tbuser``."""
    ca = x509.load_pem_x509_certificate(env.pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(env.pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    dn = (("DC", "test"), ("DC", "segate"), ("OU", "Users"), ("CN", "TPC Test User"))
    cert, key = issue_cert(ca, ca_key, dn, server=False, client=True)
    cert_path, key_path = env.tmp / "user-cert.pem", env.tmp / "user-key.pem"
    write_cert(cert_path, cert)
    write_key(key_path, key)
    return cert_path, key_path


@pytest.fixture(scope="module")
def xenv(env: Env) -> Iterator[XEnv]:
    binary("xrootd")
    user_cert, user_key = make_user_cert(env)
    jwks = json.loads(env.issuer.jwks_file.read_text())
    se = xrootd.start_xrootd(
        host_cert=env.pki.host_cert,
        host_key=env.pki.host_key,
        ca_dir=env.pki.ca_dir,
        issuer=ISSUER,
        jwks=jwks,
        user_dn=USER_DN,
    )
    try:
        yield XEnv(env, se, user_cert, user_key)
    finally:
        se.stop(keep=False)


def xrootd_transfers(x: xrootd.XrootdSE, name: str) -> int:
    """Transfers XrdTpc itself ran (as the active party) whose local or remote names ``name``."""
    return sum(
        1 for line in x.log_text().splitlines() if "event=TRANSFER_SUCCESS" in line and name in line
    )


CASES = [
    # (mode, source side, destination side): the active party is the destination for pull
    ("pull", "xrootd", "segate"),  # segate active, pulls from XRootD
    ("push", "segate", "xrootd"),  # segate active, pushes to XRootD
    ("pull", "segate", "xrootd"),  # XRootD active, pulls from segate
    ("push", "xrootd", "segate"),  # XRootD active, pushes to segate
]


@pytest.mark.parametrize(("mode", "src_side", "dst_side"), CASES)
def test_gfal_copy_segate_and_xrootd(xenv: XEnv, mode: str, src_side: str, dst_side: str) -> None:
    e, x = xenv.e, xenv.x
    name = f"{mode}-{src_side}-to-{dst_side}"
    base = {"segate": (e.a.url, e.a.root), "xrootd": (x.url + "/data", x.data)}
    src_url, src_root = base[src_side]
    dst_url, dst_root = base[dst_side]
    data = os.urandom(5_000_000)
    if src_side == "xrootd":
        x.put(f"x/{name}.src", data)
    else:
        put_file(src_root, f"x/{name}.src", 0, data)
    tok = e.token()
    segate_active = (mode == "pull") == (dst_side == "segate")
    before = copies_in_log(e.a, mode)
    gfal_copy(e, mode, f"{src_url}/x/{name}.src", f"{dst_url}/x/{name}.dst", tok)
    assert copies_in_log(e.a, mode) == before + (1 if segate_active else 0)
    assert xrootd_transfers(x, name) == (0 if segate_active else 1)
    dst = dst_root / "x" / f"{name}.dst"
    assert_same(e, tok, f"{src_url}/x/{name}.src", f"{dst_url}/x/{name}.dst", data, dst)


def test_curl_multistream_pull_from_xrootd_with_verification(xenv: XEnv) -> None:
    """Ranged GETs (16 MiB blocks) against XRootD, its adler32 checked before commit."""
    e, x = xenv.e, xenv.x
    data = os.urandom(40_000_000)
    x.put("ms/big.bin", data)
    tok = e.token()
    h = {
        "Authorization": f"Bearer {tok}",
        "Source": f"{x.url}/data/ms/big.bin",
        "TransferHeaderAuthorization": f"Bearer {tok}",
        "X-Number-Of-Streams": "4",
        "RequireChecksumVerification": "true",
    }
    status, body = curl_copy(e, f"{e.a.url}/ms/big.bin", h)
    assert status == 202 and MARKER.sub("", body) == "success: Created\n", body
    assert (e.a.root / "ms" / "big.bin").read_bytes() == data
    assert re.search(
        r"tpc pull \S+/ms/big\.bin success: Created: 40000000 bytes .* 3 stream", e.a.log_text()
    )


# -- macaroons from the passive SE (gfal2 Python API, one credential per endpoint) ---------------
# the per-endpoint gfal2 copy script is the testbed's (testbed/matrix.py)


def gfal2_copy(e: Env, mode: str, src: str, dst: str, creds: dict[str, str]) -> None:
    binary("gfal-copy")
    if not Path(GFAL_PYTHON).exists():
        pytest.skip(f"{GFAL_PYTHON} (with python3-gfal2) is not installed")
    cfg = {"mode": GFAL2_MODE[mode], "src": src, "dst": dst, "creds": creds, "timeout": 120}
    r = subprocess.run(
        [GFAL_PYTHON, "-c", GFAL2_SCRIPT],
        input=json.dumps(cfg),
        env=e.client_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, f"gfal2 {mode} failed:\n{r.stdout}\n{r.stderr}"


def xrootd_macaroon(xe: XEnv, path: str) -> str:
    """A macaroon minted by XRootD for the X.509 identity (PEERS.md: tokens are ignored here)."""
    body = '{"caveats": ["activity:DOWNLOAD,UPLOAD,LIST,DELETE,MANAGE"], "validity": "PT30M"}'
    cmd = [binary("curl"), "-sS", "--fail", "--capath", str(xe.e.pki.ca_dir)]
    cmd += ["--cert", str(xe.user_cert), "--key", str(xe.user_key), "-X", "POST"]
    cmd += ["-H", "Content-Type: application/macaroon-request", "--data", body]
    r = run([*cmd, f"{xe.x.url}{path}"], xe.e.client_env())
    assert r.returncode == 0, r.stderr
    mac = str(json.loads(r.stdout)["macaroon"])
    xe.e.secrets.append(mac)
    return mac


def segate_macaroon(e: Env, se: RunningSegate, path: str) -> str | None:
    body = '{"caveats": ["activity:DOWNLOAD,UPLOAD,LIST,DELETE,MANAGE"], "validity": "PT30M"}'
    cmd = [
        binary("curl"),
        "-sS",
        "--capath",
        str(e.pki.ca_dir),
        "-X",
        "POST",
        "-w",
        "\n%{http_code}",
    ]
    cmd += ["-H", f"Authorization: Bearer {e.token()}"]
    cmd += ["-H", "Content-Type: application/macaroon-request", "--data", body, f"{se.url}{path}"]
    r = run(cmd, e.client_env())
    text, _, code = r.stdout.rpartition("\n")
    if code.strip() in ("405", "501"):
        return None
    assert code.strip() == "200", r.stdout
    mac = str(json.loads(text)["macaroon"])
    e.secrets.append(mac)
    return mac


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_segate_active_with_an_xrootd_macaroon(xenv: XEnv, mode: str) -> None:
    e, x = xenv.e, xenv.x
    data = put_file(e.a.root, f"mac/{mode}.bin", 2_000_000)
    if mode == "pull":  # segate pulls from XRootD
        x.put("mac/src.bin", data)
        src, dst = f"{x.url}/data/mac/src.bin", f"{e.a.url}/mac/pulled.bin"
        local = e.a.root / "mac" / "pulled.bin"
    else:  # segate pushes to XRootD
        src, dst = f"{e.a.url}/mac/{mode}.bin", f"{x.url}/data/mac/pushed.bin"
        local = x.data / "mac" / "pushed.bin"
    mac = xrootd_macaroon(xenv, "/data/mac/")
    creds = {f"{x.url}/": mac, f"{e.a.url}/": e.token()}
    before = copies_in_log(e.a, mode)
    gfal2_copy(e, mode, src, dst, creds)
    assert copies_in_log(e.a, mode) == before + 1
    assert local.read_bytes() == data


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_xrootd_active_with_a_segate_macaroon(xenv: XEnv, mode: str) -> None:
    e, x = xenv.e, xenv.x
    mac = segate_macaroon(e, e.a, "/smac/")
    if mac is None:
        pytest.skip("segate's macaroon endpoint is not enabled yet ([macaroons] secret_file)")
    data = os.urandom(2_000_000)
    if mode == "pull":  # XRootD pulls from segate
        put_file(e.a.root, "smac/src.bin", 0, data)
        src, dst = f"{e.a.url}/smac/src.bin", f"{x.url}/data/smac/pulled.bin"
        local = x.data / "smac" / "pulled.bin"
    else:  # XRootD pushes to segate
        x.put("smac/src.bin", data)
        src, dst = f"{x.url}/data/smac/src.bin", f"{e.a.url}/smac/pushed.bin"
        local = e.a.root / "smac" / "pushed.bin"
    creds = {f"{x.url}/": e.token(), f"{e.a.url}/": mac}
    gfal2_copy(e, mode, src, dst, creds)
    assert local.read_bytes() == data
    assert xrootd_transfers(x, f"/smac/{'src' if mode == 'pull' else 'pushed'}.bin") == 1
    method = "GET" if mode == "pull" else "PUT"
    seen = re.compile(rf"method={method} target=/smac/\S+ status=20\d .*auth=macaroon")
    assert seen.search(e.a.log_text()), "XRootD used the segate macaroon"
