"""Bring a small grid up on loopback and take it down again, every process tracked by PID.

One :class:`Grid` holds: the test PKI (:func:`testbed.pki.build_test_pki`: CA directory with
CRL, host and user certificates, a VOMS proxy), the token issuer (:class:`TestIssuer` on its own
thread, RS256 + ES256, WLCG and SciTokens profiles), two gateways ``segate-a`` / ``segate-b``
(``segate serve`` subprocesses), an XRootD 5.5 SE (:mod:`testbed.xrootd`) and a plain WebDAV
server (:mod:`testbed.webdav_peer`, the "legacy" peer). All trust the same CA and issuer; all
serve their storage below URL path ``/data``.

:meth:`Grid.stop` is idempotent and stops every process it started, by PID, after checking that
the PID still runs the command line it started (a recycled PID is left alone). The caller runs
it in ``finally``; ``python -m testbed`` also turns SIGTERM into that path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import segate_proc, xrootd
from testbed.issuer import IssuerKeys, mint
from testbed.pki import USER_DN, TestPKI, build_test_pki

#: one audience every SE in the testbed accepts (XRootD's is fixed by testbed/xrootd.py)
AUDIENCE = xrootd.AUDIENCE
GROUP = "/testvo"
#: kids of the issuer's first keys: tokens are pinned to them, so a key rotation (a
#: conformance case) never changes what the matrix uses
KIDS = {"RS256": "rsa1", "ES256": "ec1"}


@dataclass
class Peer:
    """One storage element; URL path ``/data/<rel>`` is the local file ``data/<rel>``."""

    name: str
    kind: str  # "segate" | "xrootd" | "wsgidav"
    url: str  # https://localhost:<port>
    data: Path
    proc: subprocess.Popen[bytes]
    marker: str  # a string the process's command line must contain before we signal it
    log_path: Path
    owner: tuple[int, int] | None = None
    stopper: Any = None  # object with .stop() for peers that clean up after themselves

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def mints_macaroons(self) -> bool:
        return self.kind in ("segate", "xrootd")

    @property
    def takes_x509(self) -> bool:
        return self.kind in ("segate", "xrootd")

    @property
    def does_tpc(self) -> bool:
        return self.kind in ("segate", "xrootd")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def put(self, rel: str, data: bytes) -> Path:
        path = self.data / rel
        self.mkdirs(str(Path(rel).parent))
        path.write_bytes(data)
        if self.owner is not None:
            os.chown(path, *self.owner)
        return path

    def mkdirs(self, rel: str) -> None:
        p = self.data
        for part in Path(rel).parts:
            p = p / part
            p.mkdir(exist_ok=True)
            if self.owner is not None:
                os.chown(p, *self.owner)

    def local(self, url_path: str) -> Path:
        assert url_path.startswith("/data/"), url_path
        return self.data / url_path[len("/data/") :]


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def signal_if_ours(pid: int, marker: str, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if its command line still contains ``marker``."""
    if marker not in cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    return True


@dataclass
class Grid:
    workdir: Path
    pki: TestPKI | None = None
    issuer: segate_proc.ThreadedIssuer | None = None
    peers: dict[str, Peer] = field(default_factory=dict)
    #: every process started: name, pid, command line (kept after they stop, for the report)
    processes: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    # -- bring-up -------------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.pki = build_test_pki(self.workdir / "pki")
        self.issuer = segate_proc.ThreadedIssuer(
            self.pki.host_cert, self.pki.host_key, keys=IssuerKeys()
        )
        jwks_file = self.workdir / "issuer-jwks.json"  # public keys only
        jwks_file.write_text(json.dumps(self.issuer.issuer.keys.jwks()))
        for name in ("segate-a", "segate-b"):
            self._start_segate(name)
        self._start_xrootd()
        self._start_wsgidav(jwks_file)
        self.events.append(f"grid up in {time.monotonic() - t0:.1f} s")

    def _track(self, peer: Peer) -> None:
        self.peers[peer.name] = peer
        self.processes.append({"name": peer.name, "pid": peer.pid, "cmdline": cmdline(peer.pid)})

    def _start_segate(self, name: str) -> None:
        assert self.pki is not None and self.issuer is not None
        base = self.workdir / "peers"
        root = base / name / "root"
        config: dict[str, Any] = {
            "storage": {"root": str(root)},
            "tokens": {
                "audiences": [AUDIENCE],
                "issuers": [{"issuer": self.issuer.url, "base_path": "/"}],
                # one refetch per second on an unknown kid, so the key-rotation case is quick
                "jwks_min_refetch": 1,
                "jwks_timeout": 5,
            },
            "rules": [
                {"path": "/data/groups", "allow": ["read"], "who": [f"group:{GROUP}"]},
                {"path": "/data", "allow": ["read", "create", "modify"], "who": ["vo:testvo"]},
            ],
            "macaroons": {"secret_file": str(base / name / "macaroon.secret")},
            "x509": {"vomsdir": str(self.pki.vomsdir)},
            "tpc": {
                "allow_hosts": ["127.0.0.1", "localhost", "::1"],
                "marker_interval": 1.0,
                "connect_timeout": 10,
                "idle_timeout": 30,
            },
        }
        se = segate_proc.start_segate_in(base, self.pki, config, name=name)
        (root / "data").mkdir(parents=True, exist_ok=True)
        self._track(
            Peer(name, "segate", se.url, root / "data", se.proc, str(se.config_path), se.log_path)
        )

    def _start_xrootd(self) -> None:
        assert self.pki is not None and self.issuer is not None
        # the group rule of PEERS.md §3 ("/data/groups: any token whose wlcg.groups contains
        # /testvo"), and VOMS extraction so X509 cells are judged by the proxy's VO
        se = xrootd.start_xrootd(
            host_cert=self.pki.host_cert,
            host_key=self.pki.host_key,
            ca_dir=self.pki.ca_dir,
            issuer=self.issuer.url,
            jwks=self.issuer.issuer.keys.jwks(),
            user_dn=USER_DN,
            authfile_extra=f"g {GROUP} /data/groups r\n",
            vomsdir=self.pki.vomsdir,
        )
        owner = getattr(se, "owner", None)
        peer = Peer("xrootd", "xrootd", se.url, se.data, se.proc, str(se.run), se.log_path, owner)
        peer.stopper = se
        self._track(peer)

    def _start_wsgidav(self, jwks_file: Path) -> None:
        assert self.pki is not None and self.issuer is not None
        base = self.workdir / "peers" / "wsgidav"
        (base / "root" / "data").mkdir(parents=True, exist_ok=True)
        log_path = base / "wsgidav.log"
        for _attempt in range(3):
            port = segate_proc.free_port()
            cmd = [sys.executable, "-m", "testbed.webdav_peer", "--root", str(base / "root")]
            cmd += ["--port", str(port), "--cert", str(self.pki.host_cert)]
            cmd += ["--key", str(self.pki.host_key), "--jwks", str(jwks_file)]
            cmd += ["--issuer", self.issuer.url]
            env = {**os.environ, "PYTHONPATH": str(segate_proc.ROOT), "PYTHONUNBUFFERED": "1"}
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            deadline = time.monotonic() + segate_proc.START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if segate_proc.tls_answers(port):
                    url = f"https://localhost:{port}"
                    marker = "testbed.webdav_peer"
                    data = base / "root" / "data"
                    self._track(Peer("wsgidav", "wsgidav", url, data, proc, marker, log_path))
                    return
                time.sleep(0.05)
            segate_proc.stop_pid(proc)
        raise RuntimeError(f"wsgidav did not start; log:\n{log_path.read_text()[-2000:]}")

    # -- credentials ------------------------------------------------------------------------
    def token(
        self,
        scope: str | None = "storage.read:/data storage.create:/data storage.modify:/data",
        *,
        profile: str = "wlcg",
        alg: str = "RS256",
        **kw: Any,
    ) -> str:
        assert self.issuer is not None
        kw.setdefault("aud", AUDIENCE)
        kw.setdefault("kid", KIDS[alg])
        kw.setdefault("lifetime", 1800)
        return self.issuer.mint(scope=scope, profile=profile, alg=alg, **kw)

    def foreign_token(self, **kw: Any) -> str:
        """Same claims shape, but signed by keys nobody trusts; ``iss`` as given."""
        kw.setdefault("aud", AUDIENCE)
        kw.setdefault("scope", "storage.read:/data")
        return mint(IssuerKeys(), **kw)

    def client_env(self, *, token: str | None = None, proxy: bool = False) -> dict[str, str]:
        assert self.pki is not None
        drop = ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "BEARER_TOKEN")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(GFAL_PYTHONBIN="/usr/bin/python3", X509_CERT_DIR=str(self.pki.ca_dir))
        env["X509_VOMS_DIR"] = str(self.pki.vomsdir)
        env["HOME"] = str(self.workdir)  # gfal2/davix/voms write dot files there
        if token is not None:
            env["BEARER_TOKEN"] = token
        if proxy:
            env["X509_USER_PROXY"] = str(self.pki.proxy_voms)
        return env

    # -- teardown ---------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """Simulate a crash: SIGKILL the peer (after checking its command line)."""
        peer = self.peers[name]
        if signal_if_ours(peer.pid, peer.marker, signal.SIGKILL):
            with contextlib.suppress(subprocess.TimeoutExpired):
                peer.proc.wait(10)
            self.events.append(f"killed {name} (pid {peer.pid}) with SIGKILL")

    def stop(self) -> None:
        for peer in reversed(list(self.peers.values())):
            try:
                if peer.alive():
                    signal_if_ours(peer.pid, peer.marker, signal.SIGTERM)
                    try:
                        peer.proc.wait(segate_proc.STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        signal_if_ours(peer.pid, peer.marker, signal.SIGKILL)
                        peer.proc.wait(segate_proc.STOP_TIMEOUT)
                if peer.stopper is not None:  # XRootD: removes its run folder under /tmp
                    keep = self.workdir / "peers" / f"{peer.name}.log"
                    with contextlib.suppress(OSError):
                        keep.write_bytes(peer.log_path.read_bytes())
                    peer.stopper.stop()
            except Exception as exc:  # keep stopping the others
                self.events.append(f"stopping {peer.name}: {exc!r}")
        if self.issuer is not None:
            with contextlib.suppress(Exception):
                self.issuer.close()
            self.issuer = None
