"""``python -m testbed run [--quick] [--out DIR] [--kill-peer NAME:AFTER_CELLS]``

Builds the grid (testbed/grid.py), runs the copy matrix (testbed/matrix.py) and the conformance
cases (testbed/conformance.py), stops every process it started, and writes ``results.json`` and
``index.html`` to ``--out`` (default ``testbed/report/``, never committed).

Exit status: 0 when every result is as expected (testbed/expected.toml), 1 when something
expected to pass failed, 2 when the grid could not be built, 130 when interrupted (the grid is
stopped and a partial report written in every case). ``--kill-peer xrootd:5`` SIGKILLs that peer
after 5 matrix cells, to show that its cells fail and the run still completes and cleans up.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from testbed import conformance, report
from testbed.expected import Expected
from testbed.grid import Grid
from testbed.matrix import PEERS, MatrixRunner, applicable, full_cells, quick_cells

DEFAULT_OUT = Path(__file__).with_name("report")


class Interrupted(Exception):
    pass


#: while the grid is being built a signal only sets ``pending``: raising in the middle of a
#: start-up could leave a just-spawned process that is not tracked yet
_signals: dict[str, Any] = {"defer": True, "pending": None}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _signals["defer"]:
        _signals["pending"] = name
        return
    raise Interrupted(name)


def _stop_deferring() -> None:
    _signals["defer"] = False
    if _signals["pending"]:
        raise Interrupted(_signals["pending"])


def log(msg: str) -> None:
    print(f"[testbed {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    expected = Expected.load(Path(args.expected))
    kill: tuple[str, int] | None = None
    if args.kill_peer:
        name, _, after = args.kill_peer.partition(":")
        if name not in PEERS or not after.isdigit():
            log(f"--kill-peer wants NAME:AFTER_CELLS with NAME in {', '.join(PEERS)}")
            return 2
        kill = (name, int(after))
    out = Path(args.out).resolve()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    t0 = time.monotonic()
    results: dict[str, Any] = {"started": started, "quick": args.quick, "matrix": []}
    results.update(conformance=[], conformance_peers=[], peers=[], processes=[], events=[])
    status = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    with tempfile.TemporaryDirectory(prefix="segate-testbed-") as tmp:
        grid = Grid(Path(tmp))
        try:
            log("starting PKI, issuer, segate-a, segate-b, xrootd, wsgidav")
            try:
                grid.start()
            finally:
                _stop_deferring()
            results["peers"] = [
                {"name": p.name, "kind": p.kind, "url": p.url, "pid": p.pid}
                for p in grid.peers.values()
            ]
            for p in grid.peers.values():
                log(f"  {p.name:9} {p.url} pid {p.pid}")
            cells = [c for c in (quick_cells() if args.quick else full_cells())]
            cells = [c for c in cells if applicable(grid.peers, c)]
            runner = MatrixRunner(grid, log=log)
            runner.prepare(cells)
            log(f"matrix: {len(cells)} cells")
            for i, cell in enumerate(cells):
                if kill and i == kill[1]:
                    grid.kill(kill[0])
                    log(f"killed {kill[0]} after {i} cells (--kill-peer)")
                res = runner.run(cell).as_dict()
                expected.judge_cell(res)
                results["matrix"].append(res)
                tail = "" if res["ok"] else f"  {res['error'][:150]}"
                n = f"{i + 1:3}/{len(cells)}"
                log(f"  {n} {res['outcome']:5} {cell.id} {res['duration']}s{tail}")
            names = ["segate-a", "xrootd", "wsgidav"]
            results["conformance_peers"] = names
            log("conformance")
            for r in conformance.run_all(grid, quick=args.quick, peers=names):
                item = r.as_dict()
                expected.judge_case(item)
                results["conformance"].append(item)
            status = 1 if _unexpected(results) else 0
        except Interrupted as exc:
            log(f"interrupted by {exc}; stopping the grid")
            results["events"].append(f"interrupted by {exc}")
            status = 130
        except Exception:
            log("testbed error:\n" + traceback.format_exc())
            results["events"].append("testbed error: " + traceback.format_exc(limit=3))
            status = 2
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let teardown finish
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            grid.stop()
            results["processes"] = grid.processes
            results["events"] = grid.events + results["events"]
            log("grid stopped")
    results["duration"] = round(time.monotonic() - t0, 1)
    results["exit_status"] = status
    report.write(out, results)
    m, c = report.counts(results["matrix"]), report.counts(results["conformance"])
    log(f"matrix {m}; conformance {c}")
    log(f"report: {out / 'index.html'} ({results['duration']:.0f} s), exit status {status}")
    return status


def _unexpected(results: dict[str, Any]) -> bool:
    return any(it["outcome"] == "fail" for it in results["matrix"] + results["conformance"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="build the grid, run matrix + conformance, write the report")
    r.add_argument("--quick", action="store_true", help="a small subset (1 KiB, ~1 min)")
    r.add_argument("--out", default=str(DEFAULT_OUT), help="report folder (default %(default)s)")
    r.add_argument("--kill-peer", metavar="NAME:AFTER_CELLS", help="SIGKILL a peer mid-run")
    r.add_argument("--expected", default=str(Path(__file__).with_name("expected.toml")))
    args = ap.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
