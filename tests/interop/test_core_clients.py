"""Real grid clients (curl, davix, gfal2) against the real ``segate serve`` process.

One gateway and one HTTPS token issuer per module. The gateway trusts the issuer through
discovery over verified TLS (the issuer's certificate comes from the dev CA that is also the
gateway's ``[server] ca_dir``). Every token minted here is remembered, and the last test checks
that no token signature ever reached the server log (PROTOCOLS.md §8 item 12).

What is checked (PROTOCOLS.md §6, field reports B14-B20): statuses and contents of PUT, GET,
single and multi-range GET, HEAD + ``Want-Digest``, MKCOL, MOVE, DELETE, PROPFIND Depth 0/1,
PROPPATCH; bearer in the header and in ``?authz=``; davix put/get/ls; gfal-copy both ways,
gfal-ls, gfal-sum, gfal-mkdir -p with a create scope, gfal-rm; bad tokens -> 401 with
``WWW-Authenticate: Bearer error="invalid_token"``; valid tokens without the right -> 403.
"""

from __future__ import annotations

import email.policy
import os
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as ET
import pytest

from testbed.issuer import IssuerKeys, alg_none, mint, tamper
from tests.interop.conftest import RunningSegate, StartSegate, ThreadedIssuer, need

pytestmark = pytest.mark.interop

RW = "storage.read:/ storage.create:/ storage.modify:/"
D = "{DAV:}"
TIMEOUT = 60


@dataclass
class Env:
    se: RunningSegate
    issuer: ThreadedIssuer
    tmp: Path
    tokens: list[str] = field(default_factory=list)

    def token(self, scope: str | None = RW, **kw: Any) -> str:
        kw.setdefault("aud", self.se.url)
        t = self.issuer.mint(scope=scope, **kw)
        self.tokens.append(t)
        return t

    def remember(self, token: str) -> str:
        self.tokens.append(token)
        return token

    def url(self, path: str) -> str:
        return self.se.url + path


@pytest.fixture(scope="module")
def env(
    issuer: ThreadedIssuer, start_segate: StartSegate, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    se = start_segate(
        {"tokens": {"issuers": [{"issuer": issuer.url, "base_path": "/"}]}}, name="core"
    )
    yield Env(se, issuer, tmp_path_factory.mktemp("clients"))


# -- curl ---------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # last response's headers, lower-case names
    body: bytes

    def xml(self) -> Any:
        return ET.fromstring(self.body)


def curl(env: Env, method: str, path: str, *args: str, token: str | None = None) -> Reply:
    need("curl")
    out = env.tmp / "curl.body"
    hdr = env.tmp / "curl.headers"
    cmd = ["curl", "-sS", "--capath", str(env.se.ca_dir), "-X", method, "-o", str(out)]
    cmd += ["-D", str(hdr), "-w", "%{http_code}"]
    if method == "HEAD":
        cmd[cmd.index("-X") : cmd.index("-X") + 2] = ["-I"]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    cmd += [*args, env.url(path)]
    r = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, f"curl failed: {r.stderr.decode(errors='replace')}"
    headers: dict[str, str] = {}
    for block in hdr.read_bytes().decode("latin-1").split("\r\n\r\n"):
        if block.strip().startswith("HTTP/") and not block.strip().startswith("HTTP/1.1 100"):
            headers = {}
            for line in block.strip().split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
    return Reply(int(r.stdout), headers, out.read_bytes() if out.exists() else b"")


def put_file(env: Env, path: str, data: bytes, token: str) -> Reply:
    src = env.tmp / "upload.bin"
    src.write_bytes(data)
    return curl(env, "PUT", path, "--data-binary", f"@{src}", token=token)


def test_curl_put_get_and_overwrite(env: Env) -> None:
    t = env.token()
    data = os.urandom(300_000)
    assert put_file(env, "/curl/a.bin", data, t).status == 201
    assert (env.se.root / "curl" / "a.bin").read_bytes() == data
    r = curl(env, "GET", "/curl/a.bin", token=t)
    assert (r.status, r.body) == (200, data)
    assert put_file(env, "/curl/a.bin", b"short", t).status == 204
    assert curl(env, "GET", "/curl/a.bin", token=t).body == b"short"


def test_curl_ranges(env: Env) -> None:
    t = env.token()
    data = bytes(range(256)) * 40
    assert put_file(env, "/curl/ranges.bin", data, t).status == 201
    r = curl(env, "GET", "/curl/ranges.bin", "-H", "Range: bytes=10-19", token=t)
    assert r.status == 206 and r.body == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
    r = curl(env, "GET", "/curl/ranges.bin", "-H", "Range: bytes=0-9,5000-5099,-5", token=t)
    assert r.status == 206
    ctype = r.headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    raw = f"Content-Type: {ctype}\r\n\r\n".encode() + r.body
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage) and msg.is_multipart()
    parts = [(p["Content-Range"], p.get_content()) for p in msg.iter_parts()]
    n = len(data)
    assert parts == [
        (f"bytes 0-9/{n}", data[0:10]),
        (f"bytes 5000-5099/{n}", data[5000:5100]),
        (f"bytes {n - 5}-{n - 1}/{n}", data[-5:]),
    ]
    r = curl(env, "GET", "/curl/ranges.bin", "-H", f"Range: bytes={n}-", token=t)
    assert r.status == 416 and r.headers["content-range"] == f"bytes */{n}"


def test_curl_head_want_digest_adler32(env: Env) -> None:
    t = env.token()
    for name, data in (("zero4", b"\0" * 4), ("rand", os.urandom(100_000))):
        assert put_file(env, f"/curl/{name}", data, t).status == 201
        r = curl(env, "HEAD", f"/curl/{name}", "-H", "Want-Digest: ADLER32", token=t)
        assert r.status == 200
        assert r.headers["content-length"] == str(len(data))
        assert r.headers["digest"] == f"adler32={zlib.adler32(data):08x}"


def test_curl_mkcol_move_delete(env: Env) -> None:
    t = env.token()
    assert curl(env, "MKCOL", "/curl/dir", token=t).status == 201
    assert curl(env, "MKCOL", "/curl/dir", token=t).status == 405
    assert curl(env, "MKCOL", "/curl/nodir/sub", token=t).status == 409
    assert put_file(env, "/curl/m.txt", b"move me", t).status == 201
    dest = ["-H", f"Destination: {env.url('/curl/dir/moved.txt')}"]
    assert curl(env, "MOVE", "/curl/m.txt", *dest, token=t).status == 201
    assert curl(env, "GET", "/curl/m.txt", token=t).status == 404
    assert curl(env, "GET", "/curl/dir/moved.txt", token=t).body == b"move me"
    assert put_file(env, "/curl/m2.txt", b"second", t).status == 201
    no_over = [*dest, "-H", "Overwrite: F"]
    assert curl(env, "MOVE", "/curl/m2.txt", *no_over, token=t).status == 412
    assert curl(env, "MOVE", "/curl/m2.txt", *dest, token=t).status == 204
    assert curl(env, "GET", "/curl/dir/moved.txt", token=t).body == b"second"
    assert curl(env, "DELETE", "/curl/dir", token=t).status == 409  # not empty, no Depth
    assert curl(env, "DELETE", "/curl/dir/moved.txt", token=t).status == 204
    assert curl(env, "DELETE", "/curl/dir/moved.txt", token=t).status == 404
    assert curl(env, "DELETE", "/curl/dir/", token=t).status == 204
    assert not (env.se.root / "curl" / "dir").exists()


def _propfind(env: Env, path: str, depth: str, token: str) -> list[tuple[str, Any]]:
    r = curl(env, "PROPFIND", path, "-H", f"Depth: {depth}", token=token)
    assert r.status == 207, r.body
    assert r.headers["content-type"].startswith("application/xml")
    return [(resp.findtext(f"{D}href"), resp) for resp in r.xml().findall(f"{D}response")]


def test_curl_propfind_depth_0_and_1(env: Env) -> None:
    t = env.token()
    assert put_file(env, "/curl/pf/one.txt", b"12345", t).status == 201
    assert curl(env, "MKCOL", "/curl/pf/sub", token=t).status == 201
    (only,) = _propfind(env, "/curl/pf/one.txt", "0", t)
    assert only[0] == "/curl/pf/one.txt"
    assert only[1].findtext(f".//{D}getcontentlength") == "5"
    listing = _propfind(env, "/curl/pf/", "1", t)
    assert [h for h, _ in listing] == ["/curl/pf/", "/curl/pf/one.txt", "/curl/pf/sub/"]
    assert listing[0][1].find(f".//{D}resourcetype/{D}collection") is not None
    assert listing[2][1].find(f".//{D}resourcetype/{D}collection") is not None
    assert listing[1][1].find(f".//{D}resourcetype/{D}collection") is None


def test_curl_proppatch_dead_property(env: Env) -> None:
    t = env.token()
    assert put_file(env, "/curl/pp.txt", b"x", t).status == 201
    body = (
        '<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:segate:test">'
        "<D:set><D:prop><Z:colour>blue &amp; green</Z:colour></D:prop></D:set>"
        "</D:propertyupdate>"
    )
    r = curl(env, "PROPPATCH", "/curl/pp.txt", "--data-binary", body, token=t)
    assert r.status == 207 and b"200 OK" in r.body
    query = (
        '<D:propfind xmlns:D="DAV:"><D:prop><Z:colour xmlns:Z="urn:segate:test"/></D:prop>'
        "</D:propfind>"
    )
    r = curl(env, "PROPFIND", "/curl/pp.txt", "-H", "Depth: 0", "--data-binary", query, token=t)
    assert r.status == 207
    assert r.xml().findtext(f".//{D}prop/{{urn:segate:test}}colour") == "blue & green"
    create_only = env.token("storage.read:/ storage.create:/")
    r = curl(env, "PROPPATCH", "/curl/pp.txt", "--data-binary", body, token=create_only)
    assert r.status == 403


def test_curl_token_in_authz_query(env: Env) -> None:
    t = env.token()
    assert put_file(env, "/curl/q.txt", b"query token", t).status == 201
    for value in (t, f"Bearer%20{t}"):
        r = curl(env, "GET", f"/curl/q.txt?authz={value}")
        assert (r.status, r.body) == (200, b"query token")
    assert curl(env, "GET", "/curl/q.txt").status == 401


# -- davix --------------------------------------------------------------------------------------
def davix(env: Env, tool: str, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    need(tool)
    cmd = [tool, "--capath", str(env.se.ca_dir), "-H", f"Authorization: Bearer {token}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_davix_put_get_ls(env: Env) -> None:
    t = env.token()
    data = os.urandom(1 << 20)
    src, back = env.tmp / "davix.src", env.tmp / "davix.back"
    src.write_bytes(data)
    r = davix(env, "davix-put", str(src), env.url("/davix/f.bin"), token=t)
    assert r.returncode == 0, r.stderr
    assert (env.se.root / "davix" / "f.bin").read_bytes() == data
    r = davix(env, "davix-get", env.url("/davix/f.bin"), str(back), token=t)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == data
    r = davix(env, "davix-mkdir", env.url("/davix/sub"), token=t)
    assert r.returncode == 0, r.stderr
    r = davix(env, "davix-ls", env.url("/davix/").replace("https://", "davs://"), token=t)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["f.bin", "sub"]
    r = davix(env, "davix-rm", env.url("/davix/f.bin"), token=t)
    assert r.returncode == 0, r.stderr
    assert not (env.se.root / "davix" / "f.bin").exists()
    r = davix(env, "davix-get", env.url("/davix/f.bin"), str(back), token=t)
    assert r.returncode != 0


# -- gfal2 --------------------------------------------------------------------------------------
def gfal(env: Env, tool: str, *args: str, token: str) -> subprocess.CompletedProcess[str]:
    need(tool)
    e = {
        **os.environ,
        "GFAL_PYTHONBIN": "/usr/bin/python3",
        "X509_CERT_DIR": str(env.se.ca_dir),
        "BEARER_TOKEN": token,
    }
    for var in ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY"):
        e.pop(var, None)
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False, env=e
    )


def davs(env: Env, path: str) -> str:
    return env.url(path).replace("https://", "davs://")


def test_gfal_copy_ls_sum_rm(env: Env) -> None:
    t = env.token()
    data = os.urandom(2_000_000)
    src, back = env.tmp / "gfal.src", env.tmp / "gfal.back"
    src.write_bytes(data)
    r = gfal(env, "gfal-copy", "-K", "ADLER32", src.as_uri(), davs(env, "/gfal/f.bin"), token=t)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (env.se.root / "gfal" / "f.bin").read_bytes() == data
    r = gfal(env, "gfal-copy", "-f", davs(env, "/gfal/f.bin"), back.as_uri(), token=t)
    assert r.returncode == 0, r.stdout + r.stderr
    assert back.read_bytes() == data
    r = gfal(env, "gfal-ls", davs(env, "/gfal/"), token=t)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["f.bin"]
    r = gfal(env, "gfal-sum", davs(env, "/gfal/f.bin"), "ADLER32", token=t)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == f"{zlib.adler32(data):08x}"
    r = gfal(env, "gfal-rm", davs(env, "/gfal/f.bin"), token=t)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (env.se.root / "gfal" / "f.bin").exists()


def test_gfal_mkdir_p_with_create_scope(env: Env) -> None:
    (env.se.root / "gfalmk").mkdir()
    t = env.token("storage.create:/gfalmk/a/b/c")
    r = gfal(env, "gfal-mkdir", "-p", davs(env, "/gfalmk/a/b/c"), token=t)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (env.se.root / "gfalmk" / "a" / "b" / "c").is_dir()
    # the create scope reaches no further: a sibling tree is refused
    r = gfal(env, "gfal-mkdir", "-p", davs(env, "/gfalmk/x/y"), token=t)
    assert r.returncode != 0
    assert not (env.se.root / "gfalmk" / "x").exists()


# -- tokens end to end through the real issuer ---------------------------------------------------
@pytest.fixture(scope="module")
def tokfile(env: Env) -> str:
    path = "/tok/data.txt"
    assert put_file(env, path, b"token data", env.token()).status == 201
    return path


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_good_tokens(env: Env, tokfile: str, alg: str) -> None:
    r = curl(env, "GET", tokfile, token=env.token("storage.read:/tok", alg=alg))
    assert (r.status, r.body) == (200, b"token data")
    fetches = env.issuer.issuer.fetches  # keys came by discovery over TLS, not from a file
    assert fetches["discovery"] >= 1 and fetches["jwks"] >= 1


def _bad_tokens(env: Env) -> dict[str, tuple[str, str]]:
    """name -> (token, a word the 401 message must contain: the rejection had that cause)."""
    now = time.time()
    read = "storage.read:/tok"
    good = env.token(read)
    keys, url = env.issuer.issuer.keys, env.se.url
    return {
        "expired": (env.token(read, now=now - 7200, lifetime=600), "expired"),
        "not yet valid": (env.token(read, extra_claims={"nbf": int(now) + 3600}), "not yet"),
        "wrong audience": (env.token(read, aud="https://elsewhere.example"), "audience"),
        "wrong issuer": (mint(keys, iss="https://127.0.0.1:9/x", scope=read, aud=url), "issuer"),
        # same kids as the real issuer, other keys
        "wrong key": (mint(IssuerKeys(), iss=env.issuer.url, scope=read, aud=url), "signature"),
        "unknown kid": (env.token(read, kid="no-such-kid"), "key"),
        "alg none": (alg_none(good), ""),
        "tampered": (tamper(good, scope="storage.read:/ storage.modify:/"), "signature"),
        "scope without path": (env.token("storage.read"), "path"),
        "dot-dot path": (env.token("storage.read:/tok/../etc"), ".."),
    }


def test_bad_tokens_are_401_invalid_token(env: Env, tokfile: str) -> None:
    bad = _bad_tokens(env)
    for name, (token, cause) in bad.items():
        env.remember(token)
        r = curl(env, "GET", tokfile, token=token)
        assert r.status == 401, f"{name}: {r.status} {r.body!r}"
        assert cause.encode() in r.body.lower(), f"{name}: {r.body!r}"
        challenge = r.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge, name
    assert b"token data" not in r.body


def test_valid_token_without_the_right_is_403(env: Env, tokfile: str) -> None:
    assert curl(env, "GET", tokfile, token=env.token("storage.read:/tok/other")).status == 403
    assert curl(env, "GET", tokfile, token=env.token("storage.read:/tokens")).status == 403
    create = env.token("storage.create:/tok")
    assert put_file(env, tokfile, b"overwrite", create).status == 403
    assert put_file(env, "/tok/new.txt", b"new", create).status == 201
    assert curl(env, "DELETE", "/tok/new.txt", token=create).status == 403
    assert (env.se.root / "tok" / "data.txt").read_bytes() == b"token data"


def test_zz_server_log_never_contains_a_token(env: Env) -> None:
    """Runs last in this module: every token minted above has been sent to the server."""
    log = env.se.log_text()
    assert "method=GET" in log  # the access log is there
    assert env.tokens
    for token in env.tokens:
        header, payload, signature = token.split(".")
        if signature:
            assert signature not in log
        assert f"{header}.{payload}" not in log
