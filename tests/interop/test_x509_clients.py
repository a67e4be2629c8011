"""Real grid clients with X509 proxies against the real ``segate serve`` process (issue #4).

The gateway runs with the test PKI of testbed/pki.py (``[server] ca_dir``, host certificate,
``[x509] vomsdir``) via the ``start_segate`` fixture of tests/interop/conftest.py, and trusts a
token issuer whose TLS certificate comes from the same CA. Rules::

    /data/prod    read+modify   fqan:/testvo/Role=production
    /data/dn      read+modify   dn:/DC=test/DC=testbed/OU=Users/CN=Test User
    /data/vo      read          vo:testvo
    /litmus-x509  read+modify   dn:<Test User>          (create_parents = false)

Checked: curl ``--cert P --key P`` with every proxy kind (field report B13: P1 expired AC,
P2 rogue AC, P3 plain, P4 good -> /data/prod 403/403/403/201, /data/dn 201 for all), TLS
refusal of expired and untrusted proxies, the precedence matrix of a proxy and a token (B10,
PROTOCOLS.md §5.5), davix with ``--cert/--key`` and with ``-P grid`` + ``X509_USER_PROXY``,
gfal-copy/gfal-ls with ``X509_USER_PROXY``, and litmus with ``-c user.p12`` (neon sends only
the leaf, so this is the user certificate, authorised by its ``dn:`` rule).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from segate.devpki import DevPKI
from testbed.pki import USER_DN, TestPKI
from tests.interop.conftest import RunningSegate, StartSegate, ThreadedIssuer, need

pytestmark = pytest.mark.interop
TIMEOUT = 90
DN_RULE = f"dn:{USER_DN}"
LITMUS_SUITES = {"basic": 16, "copymove": 13, "props": 30, "http": 3}
_SUMMARY = re.compile(
    r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed\. ([\d.]+)%"
)


@dataclass
class Env:
    se: RunningSegate
    pki: TestPKI
    issuer: ThreadedIssuer
    tmp: Path

    def url(self, path: str, scheme: str = "https") -> str:
        return self.se.url.replace("https", scheme, 1) + path

    def token(self, scope: str) -> str:
        return self.issuer.mint(scope=scope, aud=self.se.url)

    def src(self, data: bytes = b"x509 data\n") -> Path:
        p = self.tmp / "src.bin"
        p.write_bytes(data)
        return p


@pytest.fixture(scope="module")
def env(
    grid_pki: TestPKI, start_segate: StartSegate, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    as_dev = DevPKI(
        ca_cert=grid_pki.ca_cert,
        ca_key=grid_pki.ca_key,
        ca_dir=grid_pki.ca_dir,
        host_cert=grid_pki.host_cert,
        host_key=grid_pki.host_key,
    )
    issuer = ThreadedIssuer(as_dev)  # its TLS certificate is from the CA the gateway trusts
    rw = ["read", "create", "modify"]
    se = start_segate(
        {
            "server": {
                "cert": str(grid_pki.host_cert),
                "key": str(grid_pki.host_key),
                "ca_dir": str(grid_pki.ca_dir),
            },
            "storage": {"create_parents": False, "recursive_delete": True},
            "tokens": {"issuers": [{"issuer": issuer.url, "base_path": "/"}]},
            "x509": {"vomsdir": str(grid_pki.vomsdir)},
            "rules": [
                {"path": "/data/prod", "allow": rw, "who": ["fqan:/testvo/Role=production"]},
                {"path": "/data/dn", "allow": rw, "who": [DN_RULE]},
                {"path": "/data/vo", "allow": ["read"], "who": ["vo:testvo"]},
                {"path": "/litmus-x509", "allow": rw, "who": [DN_RULE]},
            ],
        },
        name="x509",
    )
    for sub in ("data/prod", "data/dn", "data/vo", "tok", "litmus-x509"):
        (se.root / sub).mkdir(parents=True)
    (se.root / "data/vo/f").write_bytes(b"vo file\n")
    try:
        yield Env(se, grid_pki, issuer, tmp_path_factory.mktemp("x509-clients"))
    finally:
        issuer.close()


# -- curl -----------------------------------------------------------------------------------------
def curl(
    env: Env,
    method: str,
    path: str,
    *,
    proxy: Path | None = None,
    token: str | None = None,
    upload: Path | None = None,
) -> tuple[int, int]:
    """(curl exit code, HTTP status; 0 when there was no HTTP answer)."""
    need("curl")
    cmd = ["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}", "--capath", str(env.pki.ca_dir)]
    cmd += ["-X", method]
    if proxy is not None:
        cmd += ["--cert", str(proxy), "--key", str(proxy)]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if upload is not None:
        cmd += ["-T", str(upload)]
    r = subprocess.run(
        [*cmd, env.url(path)], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    return r.returncode, int(r.stdout.strip() or 0)


@pytest.mark.parametrize(
    ("proxy", "prod"),
    [("voms", 201), ("expired_ac", 403), ("rogue_ac", 403), ("plain", 403)],
)
def test_curl_b13_matrix(env: Env, proxy: str, prod: int) -> None:
    p, src = env.pki.proxies[proxy], env.src()
    assert curl(env, "PUT", f"/data/prod/curl-{proxy}", proxy=p, upload=src) == (0, prod)
    assert curl(env, "PUT", f"/data/dn/curl-{proxy}", proxy=p, upload=src) == (0, 201)
    assert (env.se.root / "data/dn" / f"curl-{proxy}").read_bytes() == src.read_bytes()
    assert curl(env, "GET", "/data/vo/f", proxy=p) == (0, 200 if prod == 201 else 403)


def test_curl_b13_reasons_logged(env: Env) -> None:
    for proxy in ("expired_ac", "rogue_ac"):
        curl(env, "GET", "/data/vo/f", proxy=env.pki.proxies[proxy])
    log = env.se.log_text()
    assert f"X509 {USER_DN}: VOMS attributes not accepted: AC for testvo" in log
    assert "AC expired at" in log and "does not match testvo/voms.localhost.lsc" in log


@pytest.mark.parametrize("proxy", ["expired", "untrusted"])
def test_curl_tls_refuses(env: Env, proxy: str) -> None:
    rc, status = curl(env, "GET", "/data/dn/curl-voms", proxy=env.pki.proxies[proxy])
    assert rc != 0 and status == 0


def test_curl_limited_and_other_user(env: Env) -> None:
    src = env.src()
    assert curl(env, "PUT", "/data/prod/limited", proxy=env.pki.proxy_limited, upload=src) == (
        0,
        201,
    )
    other = env.pki.proxy_other_user
    assert curl(env, "PUT", "/data/dn/other", proxy=other, upload=src) == (0, 403)
    assert curl(env, "GET", "/data/vo/f", proxy=other) == (0, 403)


def test_curl_precedence_matrix(env: Env) -> None:
    """B10 / PROTOCOLS.md §5.5: a bearer credential decides when present; else the proxy."""
    p, src = env.pki.proxy_voms, env.src()
    tok = env.token("storage.read:/tok storage.create:/tok")
    bad = tok[:-6] + ("AAAAAA" if not tok.endswith("AAAAAA") else "BBBBBB")
    # proxy + valid token: the token's scopes alone
    assert curl(env, "PUT", "/data/prod/p1", proxy=p, token=tok, upload=src) == (0, 403)
    assert curl(env, "PUT", "/tok/p1", proxy=p, token=tok, upload=src) == (0, 201)
    # proxy + bad token: 401 although the proxy would be allowed
    assert curl(env, "PUT", "/data/prod/p2", proxy=p, token=bad, upload=src) == (0, 401)
    # token alone; proxy alone; nothing
    assert curl(env, "PUT", "/tok/p3", token=tok, upload=src) == (0, 201)
    assert curl(env, "PUT", "/data/prod/p3", token=tok, upload=src) == (0, 403)
    assert curl(env, "PUT", "/data/prod/p4", proxy=p, upload=src) == (0, 201)
    assert curl(env, "PUT", "/data/prod/p5", upload=src) == (0, 401)
    assert curl(env, "GET", "/data/vo/f") == (0, 401)
    assert not (env.se.root / "data/prod/p2").exists()


# -- davix ----------------------------------------------------------------------------------------
def davix(
    env: Env, tool: str, *args: str, proxy: Path, grid_profile: bool = False
) -> subprocess.CompletedProcess[str]:
    need(tool)
    e = {k: v for k, v in os.environ.items() if not k.startswith("X509_")}
    if grid_profile:  # davix's grid profile reads X509_USER_PROXY / X509_CERT_DIR
        e.update(env.pki.env(proxy))
        cmd = [tool, "-P", "grid", *args]
    else:
        cmd = [tool, "--capath", str(env.pki.ca_dir), "--cert", str(proxy), "--key", str(proxy)]
        cmd += args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False, env=e)


@pytest.mark.parametrize("grid_profile", [False, True])
def test_davix_with_proxies(env: Env, grid_profile: bool) -> None:
    good, plain = env.pki.proxy_voms, env.pki.proxy_plain
    src, back = env.src(os.urandom(200_000)), env.tmp / "davix.back"
    name = f"/data/prod/davix-{int(grid_profile)}"
    r = davix(env, "davix-put", str(src), env.url(name), proxy=good, grid_profile=grid_profile)
    assert r.returncode == 0, r.stderr
    assert (env.se.root / name.lstrip("/")).read_bytes() == src.read_bytes()
    r = davix(env, "davix-get", env.url(name), str(back), proxy=good, grid_profile=grid_profile)
    assert r.returncode == 0 and back.read_bytes() == src.read_bytes(), r.stderr
    r = davix(
        env, "davix-put", str(src), env.url(name + "x"), proxy=plain, grid_profile=grid_profile
    )
    assert r.returncode != 0 and "403" in r.stderr
    r = davix(
        env, "davix-get", env.url("/data/vo/f"), str(back), proxy=plain, grid_profile=grid_profile
    )
    assert r.returncode != 0 and "403" in r.stderr
    r = davix(env, "davix-ls", env.url("/data/vo/", "davs"), proxy=good, grid_profile=grid_profile)
    assert r.returncode == 0 and r.stdout.split() == ["f"], r.stderr


# -- gfal2 ----------------------------------------------------------------------------------------
def gfal(
    env: Env, tool: str, *args: str, proxy: Path, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    need(tool)
    e = {k: v for k, v in os.environ.items() if not k.startswith("X509_") and k != "BEARER_TOKEN"}
    e.update(env.pki.env(proxy))
    e["GFAL_PYTHONBIN"] = "/usr/bin/python3"
    if token is not None:
        e["BEARER_TOKEN"] = token
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False, env=e
    )


def test_gfal_copy_and_ls_per_fqan(env: Env) -> None:
    good, plain = env.pki.proxy_voms, env.pki.proxy_plain
    src, back = env.src(os.urandom(300_000)), env.tmp / "gfal.back"
    dst = env.url("/data/prod/gfal.bin", "davs")
    r = gfal(env, "gfal-copy", "-K", "ADLER32", src.as_uri(), dst, proxy=good)
    assert r.returncode == 0, r.stderr
    assert (env.se.root / "data/prod/gfal.bin").read_bytes() == src.read_bytes()
    r = gfal(env, "gfal-copy", "-f", dst, back.as_uri(), proxy=good)
    assert r.returncode == 0 and back.read_bytes() == src.read_bytes(), r.stderr
    r = gfal(env, "gfal-copy", src.as_uri(), dst + ".plain", proxy=plain)
    assert r.returncode != 0 and "403" in r.stderr
    assert not (env.se.root / "data/prod/gfal.bin.plain").exists()
    r = gfal(env, "gfal-ls", env.url("/data/vo/", "davs"), proxy=good)
    assert r.returncode == 0 and r.stdout.split() == ["f"], r.stderr
    r = gfal(env, "gfal-ls", env.url("/data/vo/", "davs"), proxy=plain)
    assert r.returncode != 0 and "403" in r.stderr
    # the DN rule serves every proxy of the user, also one whose AC is broken (B13)
    r = gfal(
        env,
        "gfal-copy",
        src.as_uri(),
        env.url("/data/dn/gfal-rogue", "davs"),
        proxy=env.pki.proxy_rogue_ac,
    )
    assert r.returncode == 0, r.stderr


def test_gfal_proxy_and_token(env: Env) -> None:
    """gfal2 sends the proxy and the token together: the token decides (PROTOCOLS.md §5.5)."""
    src = env.src()
    tok = env.token("storage.create:/tok storage.read:/tok")
    r = gfal(
        env,
        "gfal-copy",
        src.as_uri(),
        env.url("/tok/gfal-tok", "davs"),
        proxy=env.pki.proxy_plain,
        token=tok,
    )
    assert r.returncode == 0, r.stderr
    r = gfal(
        env,
        "gfal-copy",
        src.as_uri(),
        env.url("/data/prod/gfal-tok", "davs"),
        proxy=env.pki.proxy_voms,
        token=tok,
    )
    assert r.returncode != 0 and "403" in r.stderr


# -- litmus ---------------------------------------------------------------------------------------
def test_litmus_protected_area_is_protected(env: Env) -> None:
    assert curl(env, "PUT", "/litmus-x509/anon", upload=env.src()) == (0, 401)
    assert curl(
        env, "PUT", "/litmus-x509/other", proxy=env.pki.proxy_other_user, upload=env.src()
    ) == (0, 403)


@pytest.mark.parametrize("suite", list(LITMUS_SUITES))
def test_litmus_with_user_p12(env: Env, suite: str, tmp_path: Path) -> None:
    """Same expectation as the anonymous run (tests/interop/test_litmus.py): every test passes."""
    need("litmus")
    r = subprocess.run(
        ["litmus", "-c", str(env.pki.user_p12), env.url("/litmus-x509/")],
        env={**os.environ, "TESTS": suite},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = r.stdout + r.stderr
    summaries = _SUMMARY.findall(out)
    assert summaries, f"no litmus summary for {suite}:\n{out}"
    name, run, passed, failed, _pct = summaries[-1]
    failures = [line.strip() for line in out.splitlines() if "FAIL" in line]
    assert name == suite and int(failed) == 0 and run == passed, "\n".join(failures) or out
    assert int(run) >= LITMUS_SUITES[suite], out
    log = env.se.log_text()
    assert f'auth=x509 subject="{USER_DN}"' in log and "target=/litmus-x509/" in log
