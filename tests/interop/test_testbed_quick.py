"""``python -m testbed run --quick`` end to end, as CI runs it, and ``--kill-peer``.

Each test runs the testbed as a subprocess (bounded by a timeout), then checks the exit status,
``results.json``, that ``index.html`` was written, that no credential leaked into the report,
and that every process the testbed started is gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.grid import cmdline
from tests.interop.conftest import ROOT, need

pytestmark = pytest.mark.interop

TIMEOUT = 240
CELL_KEYS = {"id", "src", "dst", "mode", "cred", "size", "ok", "duration", "throughput", "error"}
CELL_KEYS |= {"expected", "reason", "outcome"}
CASE_KEYS = {"case", "title", "peer", "method", "path", "want", "status", "ok", "detail"}
CASE_KEYS |= {"expected", "reason", "outcome"}


def run_testbed(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    for binary in ("gfal-copy", "xrootd", "curl", "voms-proxy-fake"):
        need(binary)
    cmd = [sys.executable, "-m", "testbed", "run", "--quick", "--out", str(out), *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert (out / "results.json").is_file(), r.stdout + r.stderr
    results = json.loads((out / "results.json").read_text())
    html = (out / "index.html").read_text()
    assert "<table" in html
    for external in ("<script", "<link", "src=", "href=", "@import", "url("):
        assert external not in html, f"index.html must be self-contained ({external})"
    for text in (html, (out / "results.json").read_text(), r.stdout, r.stderr):
        assert "eyJ" not in text, "a JWT reached the report or the output"
        assert "MDAx" not in text, "a macaroon reached the report or the output"
    return r, results


def assert_all_stopped(results: dict[str, Any]) -> None:
    names = {p["name"] for p in results["processes"]}
    assert names == {"segate-a", "segate-b", "xrootd", "wsgidav"}
    for p in results["processes"]:
        assert p["pid"] > 0 and p["cmdline"]
        assert cmdline(p["pid"]) != p["cmdline"], f"{p['name']} (pid {p['pid']}) still runs"


def test_quick_run_passes_and_cleans_up(tmp_path: Path) -> None:
    r, results = run_testbed(tmp_path / "report")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert results["quick"] is True and results["exit_status"] == 0
    matrix, conf = results["matrix"], results["conformance"]
    assert len(matrix) >= 15 and len(conf) >= 20
    assert all(set(c) >= CELL_KEYS for c in matrix)
    assert all(set(c) >= CASE_KEYS for c in conf)
    assert {c["mode"] for c in matrix} == {"pull", "push", "streamed"}
    assert {c["cred"] for c in matrix} == {"wlcg", "scitokens", "macaroon", "x509"}
    assert not [c for c in matrix + conf if c["outcome"] == "fail"]
    for c in matrix:
        assert (c["throughput"] is not None) == c["ok"]
        assert c["ok"] or c["error"], c
        assert c["outcome"] != "xfail" or c["reason"], c
    # segate and XRootD side by side on the same cases
    assert {c["peer"] for c in conf} == {"segate-a", "xrootd", "wsgidav"}
    assert all(c["ok"] for c in conf if c["peer"] == "segate-a")
    assert_all_stopped(results)


def test_killing_a_peer_fails_its_cells_and_the_run_completes(tmp_path: Path) -> None:
    after = 4
    r, results = run_testbed(tmp_path / "report", "--kill-peer", f"xrootd:{after}")
    assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-2000:]
    assert any("killed xrootd" in e for e in results["events"])
    matrix = results["matrix"]
    assert len(matrix) >= 15  # the run went on after the kill
    for i, c in enumerate(matrix):
        involved = "xrootd" in (c["src"], c["dst"])
        if i >= after and involved:
            assert not c["ok"] and "xrootd is not running" in c["error"], c
            assert c["outcome"] == "fail"
        else:
            assert c["outcome"] in ("pass", "xfail"), c  # unrelated cells are untouched
    assert any(c["outcome"] == "fail" for c in matrix)
    for c in results["conformance"]:
        if c["peer"] == "xrootd":
            assert not c["ok"] and "not running" in c["detail"]
        else:
            assert c["outcome"] != "fail", c
    assert_all_stopped(results)
