"""Real processes on loopback for interop tests: the gateway (``segate serve``) and an issuer.

* :func:`start_segate` (fixture ``start_segate``) writes a TOML config, picks a free loopback
  port (bind 0, release), takes TLS from ``segate.devpki.ensure_dev_pki``, runs
  ``python -m segate serve --config FILE`` with stdout/stderr in a log file, and waits until
  the port completes a TLS handshake. Teardown sends SIGTERM to that PID, waits, then SIGKILL.
* ``issuer``: a :class:`testbed.issuer.TestIssuer` over HTTPS on 127.0.0.1, running on its own
  event loop in a thread, because the tests block in ``subprocess.run`` while the gateway
  fetches discovery and JWKS from it. Its certificate comes from the same dev CA the gateway
  has as ``[server] ca_dir``, which outbound TLS trusts.
* :func:`need` fails (never skips) when a client binary is missing: ``testbed/test-all.sh``
  installs them all.

Loopback only; every process started here is stopped by PID; keys are generated at test time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from segate.devpki import DevPKI, ensure_dev_pki
from testbed.issuer import TestIssuer

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# -- a minimal TOML writer (tomllib only reads) ----------------------------------------------
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str | Path):
        return _toml_str(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(x, dict) for x in v)


def _toml_table(data: dict[str, Any], prefix: tuple[str, ...], out: list[str]) -> None:
    for k, v in data.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in data.items():
        name = (*prefix, k)
        dotted = ".".join(_toml_key(p) for p in name)
        if isinstance(v, dict):
            out.append(f"\n[{dotted}]")
            _toml_table(v, name, out)
        elif _is_table_array(v):
            for item in v:
                out.append(f"\n[[{dotted}]]")
                _toml_table(item, name, out)


def toml_dumps(data: dict[str, Any]) -> str:
    """TOML for nested dicts, lists of dicts (``[[a.b]]``) and scalars / scalar lists."""
    out: list[str] = []
    _toml_table(data, (), out)
    return "\n".join(out).lstrip("\n") + "\n"


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# -- processes --------------------------------------------------------------------------------
def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is not installed; run `bash testbed/test-all.sh` (it installs curl, "
            "davix, gfal2 and litmus), or apt-get install the package providing it",
            pytrace=False,
        )
    return path


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
    workdir: Path, pki: DevPKI, config: dict[str, Any], *, name: str = "se"
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
        pytest.fail(f"segate ({name}) did not start; log:\n{log_tail}", pytrace=False)
    raise AssertionError("unreachable")


StartSegate = Callable[..., RunningSegate]


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(tmp_path_factory.mktemp("devpki"))


@pytest.fixture(scope="module")
def start_segate(
    tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI
) -> Iterator[StartSegate]:
    """``start_segate(config, name="se") -> RunningSegate``; all are stopped after the module."""
    workdir = tmp_path_factory.mktemp("segate")
    running: list[RunningSegate] = []

    def start(config: dict[str, Any], *, name: str = "se") -> RunningSegate:
        se = start_segate_in(workdir, dev_pki, config, name=name)
        running.append(se)
        return se

    yield start
    for se in running:
        se.stop()


class ThreadedIssuer:
    """A TestIssuer on its own event loop in a daemon thread; ``mint`` is called directly."""

    def __init__(self, pki: DevPKI) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.issuer = TestIssuer(pki.host_cert, pki.host_key)
        self._call(self.issuer.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @property
    def url(self) -> str:
        return self.issuer.url

    def mint(self, **kw: Any) -> str:
        return self.issuer.mint(**kw)

    def close(self) -> None:
        try:
            self._call(self.issuer.close())
            self._call(asyncio.sleep(0.1))  # let closed transports finish closing
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def issuer(dev_pki: DevPKI) -> Iterator[ThreadedIssuer]:
    iss = ThreadedIssuer(dev_pki)
    try:
        yield iss
    finally:
        iss.close()
