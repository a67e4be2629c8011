"""The command line end to end: ``segate check-config`` and ``segate serve`` with no config.

``check-config`` names every problem by its key and says OK for a good file. ``serve`` without
``--config`` uses the embedded default (``SEGATE_STATE``/``SEGATE_DATA`` point into a temporary
folder here); it listens on the fixed port 8443, so that test is skipped when 8443 is taken.
A token from ``segate token`` then works with curl.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segate.devpki import DevPKI
from testbed.tomlw import toml_dumps
from tests.interop.conftest import ROOT, need, stop_pid, tls_answers

pytestmark = pytest.mark.interop

DEFAULT_PORT = 8443


def segate(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "segate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd,
    )
    return r.returncode, r.stdout + r.stderr


def test_toml_writer_round_trips() -> None:
    import tomllib

    data = {
        "a": 1,
        "s": 'q"uo\\te\n\tü\x01',
        "f": 1.5,
        "b": False,
        "l": ["x", "y"],
        "t": {"k": "v", "arr": [{"p": "/x"}, {"p": "/y", "who": ["anonymous"]}]},
        "rules": [{"path": "/litmus", "allow": ["read"]}],
        "odd key": {"x.y": 2},
    }
    assert tomllib.loads(toml_dumps(data)) == data


def test_check_config_names_each_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        toml_dumps(
            {
                "server": {"listen": "nohost", "workers": 0},
                "storage": {"create_parents": "yes"},
                "tokens": {"issuers": [{"issuer": "http://example.org", "profile": "x"}]},
                "rules": [{"path": "relative", "allow": ["write"], "who": ["nobody"]}],
                "bogus": {"x": 1},
            }
        )
    )
    code, out = segate("check-config", str(bad))
    assert code == 1, out
    for key in (
        "server.listen:",
        "server.workers:",
        "storage.root: is required",
        "storage.create_parents:",
        "tokens.issuers[0].issuer:",
        "tokens.issuers[0].profile:",
        "rules[0].path:",
        "rules[0].allow:",
        "rules[0].who:",
        "bogus: unknown key",
    ):
        assert key in out, f"{key!r} missing from:\n{out}"
    assert "problem(s) in" in out


def test_check_config_missing_files_and_ok(tmp_path: Path, dev_pki: DevPKI) -> None:
    cfg = {
        "server": {"listen": "127.0.0.1:9443", "cert": str(tmp_path / "nope.pem")},
        "storage": {"root": str(tmp_path / "data")},
    }
    cfg["server"]["key"] = str(dev_pki.host_key)
    path = tmp_path / "segate.toml"
    path.write_text(toml_dumps(cfg))
    code, out = segate("check-config", str(path))
    assert code == 1 and "server.cert:" in out and "does not exist" in out, out
    cfg["server"].update(cert=str(dev_pki.host_cert), ca_dir=str(dev_pki.ca_dir))
    path.write_text(toml_dumps(cfg))
    code, out = segate("check-config", str(path))
    assert code == 0, out
    assert f"{path}: OK" in out and '"listen": "127.0.0.1:9443"' in out


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_serve_embedded_default_with_segate_token(tmp_path: Path) -> None:
    need("curl")
    if _port_busy(DEFAULT_PORT):
        pytest.skip(f"port {DEFAULT_PORT} is in use; the embedded default needs it")
    state, data = tmp_path / "state", tmp_path / "data"
    env = {"SEGATE_STATE": str(state), "SEGATE_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "segate", "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        )
    try:
        deadline = time.monotonic() + 30
        while not tls_answers(DEFAULT_PORT) and proc.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert proc.poll() is None, log_path.read_text()
        code, token = segate("token", "--scope", "storage.read:/ storage.create:/", env=env)
        assert code == 0, token
        token = token.strip()
        assert token.count(".") == 2
        base = ["curl", "-sS", "--cacert", str(state / "ca.pem")]
        auth = ["-H", f"Authorization: Bearer {token}"]
        url = f"https://localhost:{DEFAULT_PORT}/hello.txt"
        src = tmp_path / "hello.txt"
        src.write_bytes(b"hello segate\n")
        put = subprocess.run(
            [*base, *auth, "-T", str(src), "-w", "%{http_code}", "-o", "/dev/null", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert put.stdout == "201", put.stdout + put.stderr
        assert (data / "hello.txt").read_bytes() == b"hello segate\n"
        get = subprocess.run([*base, *auth, url], capture_output=True, timeout=30, check=False)
        assert get.stdout == b"hello segate\n", get.stderr
        anon = subprocess.run(
            [*base, "-w", "%{http_code}", "-o", "/dev/null", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert anon.stdout == "401"
        banner = log_path.read_text()
        assert "embedded default config" in banner and token not in banner
    finally:
        stop_pid(proc)
    assert proc.returncode is not None


def test_serve_on_a_taken_port_is_one_clear_line(tmp_path: Path, dev_pki: DevPKI) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = {
            "server": {
                "listen": f"127.0.0.1:{port}",
                "cert": str(dev_pki.host_cert),
                "key": str(dev_pki.host_key),
            },
            "storage": {"root": str(tmp_path / "data")},
        }
        path = tmp_path / "segate.toml"
        path.write_text(toml_dumps(cfg))
        code, out = segate("serve", "--config", str(path))
    assert code == 2, out
    assert f"error: cannot listen on 127.0.0.1:{port}: address already in use" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_a_root_that_cannot_be_prepared_is_one_clear_line(
    tmp_path: Path, dev_pki: DevPKI, workers: int
) -> None:
    """A tester's root that is a file (or immutable) gave a Python traceback at start."""
    (tmp_path / "data").write_bytes(b"not a folder")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "cert": str(dev_pki.host_cert),
            "key": str(dev_pki.host_key),
            "workers": workers,
        },
        "storage": {"root": str(tmp_path / "data")},
    }
    path = tmp_path / "segate.toml"
    path.write_text(toml_dumps(cfg))
    code, out = segate("serve", "--config", str(path))
    assert code == 2, out
    assert "error: cannot prepare the storage root" in out
    assert "a path component is not a folder" in out
    assert "Traceback" not in out


def test_token_without_dev_state_warns(tmp_path: Path) -> None:
    state = tmp_path / "nostate"
    code, out = segate("token", env={"SEGATE_STATE": str(state)})
    assert code == 0, out
    assert "warning:" in out and str(state) in out and "SEGATE_STATE" in out
    code, out = segate("token", env={"SEGATE_STATE": str(state)})  # the state exists now
    assert code == 0 and "warning" not in out, out


def test_check_config_loads_cert_and_key(tmp_path: Path, dev_pki: DevPKI) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(dev_pki.host_key.read_bytes())
    unreadable.chmod(0)
    cfg = {
        "server": {"listen": "127.0.0.1:9443", "cert": str(dev_pki.host_cert), "key": str(other)},
        "storage": {"root": str(tmp_path / "data")},
    }
    path = tmp_path / "segate.toml"
    path.write_text(toml_dumps(cfg))
    code, out = segate("check-config", str(path))
    assert code == 1 and "server.key:" in out and "does not match" in out, out
    cfg["server"].update(cert=str(garbage), key=str(dev_pki.host_key))
    path.write_text(toml_dumps(cfg))
    code, out = segate("check-config", str(path))
    assert code == 1 and "cannot load" in out, out
    if os.geteuid() != 0:  # root reads any file
        cfg["server"].update(cert=str(dev_pki.host_cert), key=str(unreadable))
        path.write_text(toml_dumps(cfg))
        code, out = segate("check-config", str(path))
        assert code == 1 and "cannot be read" in out, out
