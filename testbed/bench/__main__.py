"""``python -m testbed.bench [--quick] [--rounds N] [--out DIR]``: segate against XRootD.

Both servers run at the same time on loopback with the same TLS certificate, CA, token issuer
and filesystem (servers.py); every round measures each figure on both, the order alternating
per round so neither always gets the warmer cache. Memory and token costs are measured once.
Results go to ``DIR/results.json``, ``DIR/bench.png`` and ``DIR/summary.txt`` (printed too).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.bench import measures as me
from testbed.bench.report import Results
from testbed.bench.servers import Bench

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MiB = 1 << 20


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int
    size: int  # bytes of the big file (GET, PUT, TPC)
    load_secs: int  # each ab / wrk run
    conc: int  # connections for small requests
    mem_n: int  # concurrent downloads for the RSS figure
    mem_size: int


FULL = Plan("full", 5, 1024 * MiB, 10, 64, 50, 256 * MiB)
QUICK = Plan("quick", 1, 256 * MiB, 3, 64, 50, 16 * MiB)


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{os.cpu_count()} cores {cpu}, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def xrootd_version() -> str:
    try:
        res = subprocess.run(["xrootd", "-v"], capture_output=True, text=True, timeout=10)
        return (res.stdout + res.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def run(plan: Plan, out: Path, workers: int) -> Results:
    res = Results()
    res.context.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine(),
        python=platform.python_version(),
        xrootd_version=xrootd_version(),
        mode=plan.mode,
        rounds=plan.rounds,
        file_mib=plan.size // MiB,
        workers=workers,
        connections=plan.conc,
    )
    bench = Bench(workers)
    try:
        seg = [bench.start_segate("segate-a"), bench.start_segate("segate-b")]
        xrd = [bench.start_xrootd(), bench.start_xrootd()]
        big = bench.make_source("big.bin", plan.size)
        small = bench.make_source("small.bin", 1024)
        mem = bench.make_source("mem.bin", plan.mem_size)
        one = bench.make_source("one.bin", MiB)
        for srv in (*seg, *xrd):
            for name, src in (("big.bin", big), ("small.bin", small)):
                bench.place(srv, name, src)
        for srv in (seg[0], xrd[0]):
            bench.place(srv, "mem.bin", mem)
            bench.place(srv, "one.bin", one)
        res.context["openssl_aes_gcm_mbps"] = me.openssl_aes_gcm_mbps(1 if plan.rounds < 2 else 3)
        res.context["page_cache_read_mbps"] = me.page_cache_read_mbps(big)

        get = res.metric("get", "GET big file", "MB/s")
        put = res.metric("put", "PUT big file", "MB/s")
        tpc = res.metric("tpc", "TPC pull big file", "MB/s")
        head = res.metric("head_rps", "HEAD x64 conn", "req/s")
        head99 = res.metric("head_p99", "HEAD p99", "ms", higher_better=False)
        prop = res.metric("propfind_rps", "PROPFIND D0 x64 conn", "req/s")
        prop99 = res.metric("propfind_p99", "PROPFIND p99", "ms", higher_better=False)
        # the cores are shared with the load generator: where the CPU of a request went
        head_cpu = res.metric("head_cpu", "HEAD server CPU/req", "us", higher_better=False)
        prop_cpu = res.metric("propfind_cpu", "PROPFIND server CPU/req", "us", higher_better=False)
        head_cli = res.metric("head_client", "HEAD ab CPU/req", "us", higher_better=False)
        prop_cli = res.metric("propfind_client", "PROPFIND wrk CPU/req", "us", higher_better=False)
        for r in range(plan.rounds):
            pairs = [(seg, "segate"), (xrd, "xrootd")]
            if r % 2:
                pairs.reverse()
            for servers, kind in pairs:
                get.add(kind, me.get_mbps(bench, servers[0], "big.bin"))
            for servers, kind in pairs:
                put.add(kind, me.put_mbps(bench, servers[0], big, f"put-{r}.bin"))
            for servers, kind in pairs:
                tpc.add(kind, me.tpc_pull_mbps(bench, servers[1], servers[0], "big.bin", plan.size))
            for servers, kind in pairs:
                ld = me.ab_head(bench, servers[0], "small.bin", plan.load_secs, plan.conc)
                head.add(kind, ld.rps)
                head99.add(kind, ld.p99_ms)
                head_cpu.add(kind, ld.server_us)
                head_cli.add(kind, ld.client_us)
            for servers, kind in pairs:
                ld = me.wrk_propfind(bench, servers[0], "small.bin", plan.load_secs, plan.conc)
                prop.add(kind, ld.rps)
                prop99.add(kind, ld.p99_ms)
                prop_cpu.add(kind, ld.server_us)
                prop_cli.add(kind, ld.client_us)
            print(f"round {r + 1}/{plan.rounds} done", file=sys.stderr, flush=True)

        memc = res.metric(
            "rss_concurrent",
            f"RSS {plan.mem_n}x{plan.mem_size // MiB} MiB GETs",
            "MiB",
            higher_better=False,
        )
        growth = res.metric("rss_growth", "RSS growth 1 MiB->big", "MiB", higher_better=False)
        idle = res.metric("rss_idle", "RSS before that (all procs)", "MiB", higher_better=False)
        for srv, kind in ((seg[0], "segate"), (xrd[0], "xrootd")):
            idle.add(kind, me.rss_mib(srv.pids()))
            memc.add(kind, me.concurrent_rss(bench, srv, "mem.bin", plan.mem_n))
            small_peak = me.single_rss(bench, srv, "one.bin")
            big_peak = me.single_rss(bench, srv, "big.bin")
            growth.add(kind, max(0.0, big_peak - small_peak))
        cold, warm = me.token_cost_us(bench, 50 if plan.mode == "quick" else 300, 20000)
        res.metric("token_cold", "token check cold", "us", higher_better=False).add("segate", cold)
        res.metric("token_warm", "token check warm", "us", higher_better=False).add("segate", warm)
    finally:
        bench.close()
    res.write(out)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one round, smaller files (< 2 min)")
    ap.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="segate workers")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(plan.mode, args.rounds, plan.size, plan.load_secs, plan.conc, plan.mem_n,
                    plan.mem_size)  # fmt: skip
    res = run(plan, args.out, args.workers)
    print(res.summary())
    print(f"\nwritten: {args.out}/results.json, bench.png, summary.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
