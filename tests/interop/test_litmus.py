"""litmus 0.13 (the neon WebDAV conformance suite) against the real ``segate serve`` process.

litmus cannot send an Authorization header (PEERS.md §5), so it runs anonymously under
``/litmus``, which a site rule makes readable and writable for anonymous clients. The config
follows RFC 4918 where grid defaults differ: ``create_parents = false`` (PUT/MKCOL/COPY without
a parent is 409, §9.7.1) and ``recursive_delete = true`` (DELETE of a collection removes the
tree, §9.6.1; neon sends no Depth header). Every suite must report 100 %: warnings are fine,
failures are not. For comparison XRootD 5.5 scored basic 12/16, copymove 7/13, props 9/14.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import RunningSegate, StartSegate, need

pytestmark = pytest.mark.interop

#: tests each suite runs when nothing is skipped (litmus 0.13; http skips expect100 over TLS)
SUITES = {"basic": 16, "copymove": 13, "props": 30, "http": 3}
_SUMMARY = re.compile(
    r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed\. ([\d.]+)%"
)


@pytest.fixture(scope="module")
def litmus_se(start_segate: StartSegate) -> RunningSegate:
    se = start_segate(
        {
            "storage": {"create_parents": False, "recursive_delete": True},
            "rules": [
                {"path": "/litmus", "allow": ["read", "create", "modify"], "who": ["anonymous"]}
            ],
        },
        name="litmus",
    )
    (se.root / "litmus").mkdir()
    return se


@pytest.mark.parametrize("suite", list(SUITES))
def test_litmus_suite_passes(litmus_se: RunningSegate, suite: str, tmp_path: Path) -> None:
    need("litmus")
    r = subprocess.run(
        ["litmus", f"{litmus_se.url}/litmus/"],
        env={**os.environ, "TESTS": suite},
        cwd=tmp_path,  # litmus writes debug.log and child.log here
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = r.stdout + r.stderr
    failures = [line.strip() for line in out.splitlines() if "FAIL" in line]
    summaries = _SUMMARY.findall(out)
    assert summaries, f"no litmus summary for {suite}:\n{out}"
    name, run, passed, failed, _pct = summaries[-1]
    assert name == suite
    assert int(failed) == 0 and run == passed, "\n".join(failures) or out
    assert int(run) >= SUITES[suite], f"litmus {suite} ran only {run} tests:\n{out}"
    assert r.returncode == 0, out
