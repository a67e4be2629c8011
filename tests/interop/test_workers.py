"""``[server] workers = N``: N processes accept on one port (SO_REUSEPORT) and SIGTERM stops all."""

from __future__ import annotations

import http.server
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.interop


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def test_two_workers_share_the_port(start_segate: Any) -> None:
    se = start_segate({"server": {"workers": 2}}, name="two-workers")
    workers = _children(se.pid)
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = set(re.findall(r"listening on \S+ \(pid (\d+)\)", se.log_text()))
        if len(pids) == 2:
            break
        time.sleep(0.2)
    assert {int(p) for p in pids} == set(workers)
    # each request on a new connection lands on one of them; all are answered
    for _ in range(10):
        r = subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--capath",
                str(se.ca_dir),
                f"{se.url}/",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert r.stdout == "401"  # anonymous, no rule: asks for a credential
    se.stop()
    time.sleep(0.5)
    assert not any(Path(f"/proc/{p}").exists() and _is_alive(p) for p in workers)


def test_staging_is_emptied_once_before_the_workers_start(
    start_segate: Any, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    staging = root / ".segate" / "tmp"
    staging.mkdir(parents=True)
    (staging / "stale-upload").write_bytes(b"x")
    (staging / "stale-copy").mkdir()
    se = start_segate({"server": {"workers": 2}, "storage": {"root": str(root)}}, name="clean-once")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and se.log_text().count("listening on") < 2:
        time.sleep(0.2)
    log = se.log_text()
    assert log.count("listening on") == 2
    assert log.count("stale staging") == 1
    assert "removed 2 stale staging files from an earlier run (before starting 2 workers)" in log
    assert list(staging.iterdir()) == []
    se.stop()


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _SlowSource(http.server.BaseHTTPRequestHandler):
    """A TPC source that takes ~3 s to send 60 kB: transfers overlap for that long."""

    def do_GET(self) -> None:
        piece = b"s" * 2000
        self.send_response(200)
        self.send_header("Content-Length", str(len(piece) * 30))
        self.end_headers()
        for _ in range(30):
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.1)

    def log_message(self, *args: Any) -> None:
        pass


def test_max_active_counts_the_transfers_of_all_workers(
    start_segate: Any, issuer: Any, tmp_path: Path
) -> None:
    """``[tpc] max_active`` bounds the server, not each worker: with two workers and
    max_active = 1, of six COPYs started together on new connections (spread over both
    workers by SO_REUSEPORT) exactly one runs and the others get 503."""
    source = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowSource)
    thread = threading.Thread(target=source.serve_forever, daemon=True)
    thread.start()
    try:
        se = start_segate(
            {
                "server": {"workers": 2},
                "tokens": {"issuers": [{"issuer": issuer.url, "base_path": "/"}]},
                "tpc": {"max_active": 1, "allow_hosts": ["127.0.0.1"]},
            },
            name="two-workers-tpc",
        )
        token = issuer.mint(scope="storage.read:/ storage.create:/ storage.modify:/", aud=se.url)
        src = f"http://127.0.0.1:{source.server_address[1]}/slow"
        procs = [
            subprocess.Popen(
                [
                    "curl",
                    "-sS",
                    "-o",
                    str(tmp_path / f"out{i}"),
                    "-w",
                    "%{http_code}",
                    "--capath",
                    str(se.ca_dir),
                    "-X",
                    "COPY",
                    "-H",
                    f"Authorization: Bearer {token}",
                    "-H",
                    f"Source: {src}",
                    f"{se.url}/copy{i}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(6)
        ]
        codes = sorted(p.communicate(timeout=60)[0] for p in procs)
        assert codes == ["202", "503", "503", "503", "503", "503"], codes
        ran = [i for i in range(6) if (tmp_path / f"out{i}").read_text().count("success:")]
        assert len(ran) == 1
    finally:
        source.shutdown()
        source.server_close()
