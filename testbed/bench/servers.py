"""The two servers under test, started alike: same PKI, same issuer keys, same filesystem.

* One temporary folder under ``/tmp`` holds the test PKI (``testbed.pki``), the issuer's keys
  (``testbed.issuer.IssuerKeys``; its ``jwks.json`` is given to segate as ``jwks_file`` and
  pre-seeded into XRootD's scitokens key cache, so neither fetches anything) and segate's data.
  XRootD's data lives in its own run folder, also under ``/tmp``: the same filesystem.
* segate: ``python -m segate serve --config FILE`` as a subprocess, ``workers`` = cores (the
  issue's target setting), TLS from the test host certificate.
* XRootD: :func:`testbed.xrootd.start_xrootd` (runs as ``nobody`` when started by root).
* Every process is stopped by its PID in :meth:`Bench.close`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed import xrootd
from testbed.issuer import IssuerKeys, mint
from testbed.pki import build_test_pki
from testbed.segate_proc import free_port, stop_pid, tls_answers
from testbed.tomlw import toml_dumps

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://issuer.bench.invalid/wlcg"
AUDIENCE = "segate-bench"
SCOPE = "storage.read:/ storage.create:/ storage.modify:/"
START_TIMEOUT = 30.0


@dataclass
class Server:
    """One running SE: ``kind`` is "segate" or "xrootd"; ``data`` is the folder behind /data."""

    kind: str
    url: str
    pid: int
    data: Path
    stop_fn: object = field(repr=False, default=None)

    def file_url(self, name: str) -> str:
        return f"{self.url}/data/{name}"

    def pids(self) -> list[int]:
        """The server's process and its children (segate's workers): what RSS is summed over."""
        out = [self.pid]
        try:
            kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return out
        return out + [int(k) for k in kids]


class Bench:
    """Two segate and two XRootD SEs plus the token both accept; :meth:`close` stops them."""

    def __init__(self, workers: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="segate-bench-", dir="/tmp"))
        os.chmod(self.tmp, 0o755)
        self.pki = build_test_pki(self.tmp / "pki")
        self.keys = IssuerKeys(self.tmp / "issuer")
        self.workers = workers
        self._procs: list[subprocess.Popen[bytes]] = []
        self._xrds: list[xrootd.XrootdSE] = []
        self.token = mint(
            self.keys, iss=ISSUER, scope=SCOPE, aud=[AUDIENCE, xrootd.AUDIENCE], lifetime=3 * 3600
        )

    # -- segate -----------------------------------------------------------------------------
    def start_segate(self, name: str) -> Server:
        base = self.tmp / name
        data = base / "data"
        (data / "data").mkdir(parents=True)
        port = free_port()
        cfg = {
            "server": {
                "listen": f"127.0.0.1:{port}",
                "cert": str(self.pki.host_cert),
                "key": str(self.pki.host_key),
                "ca_dir": str(self.pki.ca_dir),
                "workers": self.workers,
            },
            "storage": {"root": str(data)},
            "tokens": {
                "audiences": [AUDIENCE],
                "issuers": [{"issuer": ISSUER, "base_path": "/", "jwks_file": str(self.keys_jwks)}],
            },
            "macaroons": {"secret_file": str(base / "macaroon.secret")},
            "tpc": {"allow_hosts": ["127.0.0.1", "localhost", "::1"]},
        }
        conf = base / "segate.toml"
        conf.write_text(toml_dumps(cfg))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(base / "segate.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "segate", "serve", "--config", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=base,
                env=env,
            )
        self._procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if tls_answers(port):
                time.sleep(0.5)  # let every worker bind before load starts
                return Server("segate", f"https://localhost:{port}", proc.pid, data / "data")
            time.sleep(0.1)
        tail = (base / "segate.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"segate {name} did not start:\n{tail}")

    @property
    def keys_jwks(self) -> Path:
        assert self.keys.path is not None
        return self.keys.path / "jwks.json"

    # -- xrootd -----------------------------------------------------------------------------
    def start_xrootd(self) -> Server:
        se = xrootd.start_xrootd(
            host_cert=self.pki.host_cert,
            host_key=self.pki.host_key,
            ca_dir=self.pki.ca_dir,
            issuer=ISSUER,
            jwks=self.keys.jwks(),
        )
        self._xrds.append(se)
        return Server("xrootd", se.url, se.pid, se.data)

    # -- files ------------------------------------------------------------------------------
    def place(self, server: Server, name: str, source: Path) -> None:
        """Put ``source`` into the server's /data folder directly (a copy on the same fs)."""
        dst = server.data / name
        shutil.copyfile(source, dst)
        if server.kind == "xrootd" and os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            os.chown(dst, pw.pw_uid, pw.pw_gid)

    def make_source(self, name: str, size: int) -> Path:
        """A random file of ``size`` bytes in the bench folder (written in 8 MiB pieces)."""
        path = self.tmp / name
        if not path.exists():
            piece = os.urandom(min(size, 8 << 20))
            with open(path, "wb") as fh:
                left = size
                while left > 0:
                    fh.write(piece[: min(left, len(piece))])
                    left -= len(piece)
        return path

    def close(self) -> None:
        for proc in self._procs:
            stop_pid(proc)
        for se in self._xrds:
            se.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
