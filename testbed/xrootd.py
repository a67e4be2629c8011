"""An XRootD 5.5 HTTPS storage element on loopback, as a peer for third-party-copy tests.

What it is (PEERS.md §3-4 describe the reference set-up this follows):

* ``xrootd`` with XrdHttp on a free loopback port, HTTP-TPC (``libXrdHttpTPC``), macaroons
  (``libXrdMacaroons``, own random secret) and WLCG/SciTokens JWTs (``libXrdAccSciTokens``), then
  an Authfile. TLS from the given host certificate; client certificates verified against the
  given hashed CA directory (``xrd.tlsca certdir``), which XrdTpc's libcurl also uses for its
  outgoing transfers.
* Tokens: scitokens-cpp has no CA option and would fetch the issuer's keys over HTTPS; instead
  its sqlite key cache (``$XDG_CACHE_HOME/scitokens/scitokens_cpp.sqllite``, table
  ``keycache(issuer, keys)``) is pre-seeded with the issuer's JWKS and a far ``next_update``, so
  no fetch happens at all (PEERS.md "TB_TRUST keycache"). Audiences accepted:
  ``https://localhost:<port>``, ``localhost:<port>`` and :data:`AUDIENCE`.
* X.509 identity: the certificate DN given as ``user_dn`` is mapped (grid-mapfile) to ``tbuser``,
  who may do everything below ``/data`` (Authfile). The macaroon activities XRootD mints are
  derived from that identity, never from a bearer token (PEERS.md "Macaroons").
* XRootD refuses to run as root, so when started by root it runs as ``nobody`` through
  ``setpriv``; every file it needs is in a fresh run folder under ``/tmp`` owned by that user
  (a pytest folder under ``/tmp/pytest-of-root`` is not reachable for ``nobody``).
* XRootD 5.5 listens on all addresses (no bind directive); tests only ever talk to it on
  ``localhost``. Started and stopped by PID; the run folder is removed afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.segate_proc import free_port, tls_answers

AUDIENCE = "segate-testbed-xrootd"
START_TIMEOUT = 30.0

CONFIG = """\
all.role server
all.export /
all.sitename segate_tb_{port}
all.adminpath {run}/admin
all.pidpath {run}
oss.localroot {run}/data
xrd.port {xrd_port}
xrd.protocol XrdHttp:{port} libXrdHttp.so
xrd.tls {run}/tls/hostcert.pem {run}/tls/hostkey.pem
xrd.tlsca certdir {run}/certificates
http.gridmap {run}/grid-mapfile
http.header2cgi Authorization authz
http.exthandler xrdtpc libXrdHttpTPC.so
http.exthandler xrdmacaroons libXrdMacaroons.so
macaroons.secretkey {run}/macaroon-secret
ofs.authorize 1
acc.authdb {run}/Authfile
ofs.authlib ++ libXrdAccSciTokens.so config={run}/scitokens.cfg
ofs.authlib ++ libXrdMacaroons.so
xrootd.chksum max 2 adler32 md5
tpc.trace all
macaroons.trace all
scitokens.trace all
"""

SCITOKENS = """\
[Global]
audience = https://localhost:{port}, localhost:{port}, {audience}
onmissing = passthrough

[Issuer segate-test]
issuer = {issuer}
base_path = /
map_subject = False
"""

AUTHFILE = "u tbuser /data a\n"


def xrootd_binary() -> str | None:
    return shutil.which("xrootd")


def seed_key_cache(cache_home: Path, issuer: str, jwks: dict[str, Any]) -> None:
    """Pre-seed scitokens-cpp's key cache so it never fetches the issuer's keys."""
    folder = cache_home / "scitokens"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    far = int(time.time()) + 30 * 86400
    db = sqlite3.connect(folder / "scitokens_cpp.sqllite")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS keycache "
            "(issuer text UNIQUE PRIMARY KEY NOT NULL, keys text NOT NULL)"
        )
        db.execute("DELETE FROM keycache WHERE issuer = ?", (issuer,))
        value = json.dumps({"jwks": jwks, "next_update": far, "expires": far})
        db.execute("INSERT INTO keycache VALUES (?, ?)", (issuer, value))
        db.commit()
    finally:
        db.close()


@dataclass
class XrootdSE:
    port: int
    pid: int
    run: Path
    proc: subprocess.Popen[bytes]
    #: (uid, gid) the server runs as when started by root, else None
    owner: tuple[int, int] | None = None

    def put(self, rel: str, data: bytes) -> Path:
        """Place a file below URL path ``/data`` (folders included), readable by the server."""
        path = self.data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if self.owner is not None:
            p = path
            while p != self.data:
                os.chown(p, *self.owner)
                p = p.parent
        return path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def data(self) -> Path:
        """Local folder behind URL path ``/data``."""
        return self.run / "data" / "data"

    @property
    def log_path(self) -> Path:
        return self.run / "xrootd.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, *, keep: bool = False) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        if not keep:
            shutil.rmtree(self.run, ignore_errors=True)


def start_xrootd(
    *,
    host_cert: Path,
    host_key: Path,
    ca_dir: Path,
    issuer: str,
    jwks: dict[str, Any],
    user_dn: str | None = None,
    account: str = "nobody",
    authfile_extra: str = "",
    vomsdir: Path | None = None,
) -> XrootdSE:
    """Start one SE; returns when it answers TLS. Raises RuntimeError with the log tail.

    ``authfile_extra`` lines go before the default Authfile rule (first match wins).
    ``vomsdir`` turns on VOMS extraction (``libXrdVoms``, PEERS.md §3): then any proxy whose
    AC carries VO ``testvo`` may do everything below ``/data`` (``o testvo``).
    """
    binary = xrootd_binary()
    if binary is None:
        raise RuntimeError("xrootd is not installed (Debian: xrootd-server)")
    run = Path(tempfile.mkdtemp(prefix="segate-xrootd-", dir="/tmp"))
    port, xrd_port = free_port(), free_port()
    for sub in ("admin", "cache", "tls", "data/data", "data/public"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(host_cert, run / "tls" / "hostcert.pem")
    shutil.copy(host_key, run / "tls" / "hostkey.pem")
    os.chmod(run / "tls" / "hostkey.pem", 0o400)
    shutil.copytree(ca_dir, run / "certificates", symlinks=False)
    secret = base64.b64encode(secrets.token_bytes(64)).decode()
    (run / "macaroon-secret").write_text(secret + "\n")
    os.chmod(run / "macaroon-secret", 0o400)
    voms_rule = ""
    if vomsdir is not None:
        shutil.copytree(vomsdir, run / "vomsdir", symlinks=False)
        voms_rule = "o testvo /data a\n"
    (run / "Authfile").write_text(authfile_extra + voms_rule + AUTHFILE)
    (run / "grid-mapfile").write_text(f'"{user_dn}" tbuser\n' if user_dn else "")
    (run / "scitokens.cfg").write_text(
        SCITOKENS.format(port=port, audience=AUDIENCE, issuer=issuer)
    )
    config = CONFIG.format(port=port, xrd_port=xrd_port, run=run)
    if vomsdir is not None:
        config += "http.secxtractor libXrdVoms.so\n"
    (run / "xrootd.cfg").write_text(config)
    seed_key_cache(run / "cache", issuer, jwks)

    cmd = [binary, "-c", str(run / "xrootd.cfg"), "-n", f"se{port}"]
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:  # "Security reasons prohibit running as superuser"
        pw = pwd.getpwnam(account)
        owner = (pw.pw_uid, pw.pw_gid)
        for dirpath, _dirs, files in os.walk(run):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)
        setpriv = shutil.which("setpriv") or "setpriv"
        cmd = [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("X509_USER_PROXY", "BEARER_TOKEN", "X509_USER_CERT", "X509_USER_KEY")
    }
    env.update(
        XDG_CACHE_HOME=str(run / "cache"),
        X509_CERT_DIR=str(run / "certificates"),
        HOME=str(run),
    )
    if vomsdir is not None:
        env["X509_VOMS_DIR"] = str(run / "vomsdir")
    with open(run / "xrootd.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=run
        )
    se = XrootdSE(port=port, pid=proc.pid, run=run, proc=proc, owner=owner)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if "initialization completed" in se.log_text() and tls_answers(port):
            return se
        time.sleep(0.1)
    tail = se.log_text()[-3000:]
    se.stop()
    raise RuntimeError(f"xrootd did not start on port {port}; log tail:\n{tail}")
