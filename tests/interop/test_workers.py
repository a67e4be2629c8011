"""``[server] workers = N``: N processes accept on one port (SO_REUSEPORT) and SIGTERM stops all."""

from __future__ import annotations

import re
import subprocess
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


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
