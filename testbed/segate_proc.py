"""Real ``segate serve`` processes on loopback, for the interop tests and the testbed.

* :func:`start_segate_in` writes a TOML config, picks a free loopback port (bind 0, release),
  runs ``python -m segate serve --config FILE`` with stdout/stderr in a log file, and waits until
  the port completes a TLS handshake. :func:`stop_pid` sends SIGTERM to that PID, waits, then
  SIGKILL. Start failures raise :class:`SegateStartError` with the log tail.
* :class:`ThreadedIssuer`: a :class:`testbed.issuer.TestIssuer` on its own event loop in a
  daemon thread, for callers that block (``subprocess.run``) while a gateway fetches discovery
  and JWKS from it.

Loopback only; every process started here is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from testbed.issuer import IssuerKeys, TestIssuer
from testbed.tomlw import deep_merge, toml_dumps

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerPKI(Protocol):
    """What a gateway needs from a PKI (``segate.devpki.DevPKI`` and ``testbed.pki.TestPKI``)."""

    @property
    def host_cert(self) -> Path: ...
    @property
    def host_key(self) -> Path: ...
    @property
    def ca_dir(self) -> Path: ...


class SegateStartError(RuntimeError):
    pass


# -- processes --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_answers(port: int, *, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost"),
        ):
            return True
    except OSError:
        return False


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started (by PID), wait, SIGKILL if it is still there."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)


@dataclass
class RunningSegate:
    url: str  # https://localhost:<port> (no trailing slash)
    port: int
    pid: int
    ca_dir: Path
    root: Path
    log_path: Path
    config_path: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_pid(self.proc)


def start_segate_in(
    workdir: Path, pki: ServerPKI, config: dict[str, Any], *, name: str = "se"
) -> RunningSegate:
    """Start ``segate serve`` with ``config`` (merged over TLS, listen and a storage root)."""
    base = workdir / name
    base.mkdir(parents=True, exist_ok=False)
    root = base / "data"
    defaults: dict[str, Any] = {
        "server": {
            "cert": str(pki.host_cert),
            "key": str(pki.host_key),
            "ca_dir": str(pki.ca_dir),
        },
        "storage": {"root": str(root)},
    }
    cfg = deep_merge(defaults, config)
    root = Path(cfg["storage"]["root"])
    root.mkdir(parents=True, exist_ok=True)
    config_path = base / "segate.toml"
    log_path = base / "segate.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for attempt in range(3):
        port = free_port()
        cfg = deep_merge(cfg, {"server": {"listen": f"127.0.0.1:{port}"}})
        config_path.write_text(toml_dumps(cfg))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "segate", "serve", "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=base,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if tls_answers(port):
                return RunningSegate(
                    url=f"https://localhost:{port}",
                    port=port,
                    pid=proc.pid,
                    ca_dir=pki.ca_dir,
                    root=root,
                    log_path=log_path,
                    config_path=config_path,
                    proc=proc,
                )
            time.sleep(0.05)
        stop_pid(proc)
        log_tail = log_path.read_text(errors="replace")[-3000:]
        if "address already in use" in log_tail.lower() and attempt < 2:
            continue  # lost the race for the port to another process: try another one
        raise SegateStartError(f"segate ({name}) did not start; log:\n{log_tail}")
    raise AssertionError("unreachable")


class ThreadedIssuer:
    """A TestIssuer on its own event loop in a daemon thread; ``mint`` is called directly."""

    def __init__(self, cert: Path, key: Path, *, keys: IssuerKeys | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.issuer = TestIssuer(cert, key, keys=keys)
        try:
            self._call(self.issuer.start())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @property
    def url(self) -> str:
        return self.issuer.url

    def mint(self, **kw: Any) -> str:
        return self.issuer.mint(**kw)

    def rotate(self, alg: str = "RS256") -> str:
        return self.issuer.rotate(alg)  # list append under the GIL; handlers read a snapshot

    def close(self) -> None:
        try:
            self._call(self.issuer.close())
            self._call(asyncio.sleep(0.1))  # let closed transports finish closing
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
