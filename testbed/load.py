"""Load test on loopback (issue #8): ``python -m testbed.load --seconds N --connections C``.

Starts ``segate serve`` (``workers = 2``, dev PKI and dev issuer, storage in a temporary folder)
and a plain-HTTP TPC source in this process, then for ``--seconds``:

* ``--connections`` concurrent keep-alive HTTPS connections, each looping over authenticated
  GET (40 %), HEAD (20 %), PUT (20 %, 1-256 KiB of random bytes) and PROPFIND Depth 1 (20 %);
* ``--tpcs`` concurrent pull COPYs (1-4 MiB each) from the source, looping.

Afterwards it checks every uploaded and every copied file against the checksum it sent, that no
staging file is left, that no answer was a 5xx other than the configured limits (503 from
``[tpc] max_active``, 429 from ``[server] max_connections_per_client``), and compares the
server's RSS and open file descriptors (all workers) before, at peak and after an idle pause.
Prints a JSON summary; exit status 1 if a check failed. Bounded in time and count; loopback only;
the server is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from segate.devissuer import ensure_dev_issuer
from segate.devpki import ensure_dev_pki
from testbed.segate_proc import RunningSegate, start_segate_in, stop_pid

ISSUER = "https://issuer.load.invalid/"
AUDIENCE = "https://localhost:8443"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def server_pids(pid: int) -> list[int]:
    return [pid, *_children(pid)]


def rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def fds(pids: list[int]) -> int:
    n = 0
    for p in pids:
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{p}/fd"))
    return n


def fd_kinds(pids: list[int]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for p in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                    kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return dict(kinds)


@dataclass
class Stats:
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    uploads: dict[str, str] = field(default_factory=dict)  # path -> md5
    copies: dict[str, str] = field(default_factory=dict)
    tpc_results: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    latencies: list[float] = field(default_factory=list)

    def record(self, method: str, status: int, dt: float) -> None:
        self.statuses[f"{method} {status}"] += 1
        self.requests += 1
        if len(self.latencies) < 200_000:
            self.latencies.append(dt)


@dataclass
class Result:
    summary: dict[str, Any]
    failures: list[str]


class Source:
    """Plain-HTTP TPC source on loopback serving a few files of known content."""

    def __init__(self) -> None:
        rnd = random.Random(7)
        self.files = {f"/src/{i}": rnd.randbytes(rnd.randint(1 << 20, 4 << 20)) for i in range(8)}
        self.md5 = {k: hashlib.md5(v).hexdigest() for k, v in self.files.items()}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()

        async def handler(request: web.Request) -> web.StreamResponse:
            data = self.files.get(request.path)
            if data is None:
                return web.Response(status=404)
            if request.method == "HEAD":
                return web.Response(headers={"Content-Length": str(len(data))})
            return web.Response(body=data)

        app.router.add_route("*", "/{tail:.*}", handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _client(
    n: int,
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    stop_at: float,
    stats: Stats,
) -> None:
    rnd = random.Random(n)
    h = {"Authorization": f"Bearer {token}"}
    mine: list[str] = []
    seq = 0
    while time.monotonic() < stop_at:
        roll = rnd.random()
        t0 = time.monotonic()
        method = "GET"
        try:
            if roll < 0.2 or not mine:
                method = "PUT"
                seq += 1
                path = f"/load/c{n}/f{seq}"
                data = rnd.randbytes(rnd.randint(1024, 256 * 1024))
                async with session.put(base + path, data=data, headers=h) as r:
                    await r.read()
                    if r.status in (201, 204):
                        stats.uploads[path] = hashlib.md5(data).hexdigest()
                        mine.append(path)
            elif roll < 0.6:
                async with session.get(base + rnd.choice(mine), headers=h) as r:
                    await r.read()
            elif roll < 0.8:
                method = "HEAD"
                async with session.head(base + rnd.choice(mine), headers=h) as r:
                    await r.read()
            else:
                method = "PROPFIND"
                hd = {**h, "Depth": "1"}
                async with session.request("PROPFIND", f"{base}/load/c{n}/", headers=hd) as r:
                    await r.read()
            stats.record(method, r.status, time.monotonic() - t0)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            stats.errors[f"{method} {type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)


async def _tpc_loop(
    n: int,
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    source: Source,
    stop_at: float,
    stats: Stats,
) -> None:
    rnd = random.Random(1000 + n)
    seq = 0
    while time.monotonic() < stop_at:
        seq += 1
        src = rnd.choice(list(source.files))
        path = f"/tpc/t{n}/c{seq}"
        h = {
            "Authorization": f"Bearer {token}",
            "Source": f"http://127.0.0.1:{source.port}{src}",
            "Credential": "none",
        }
        t0 = time.monotonic()
        try:
            async with session.request("COPY", base + path, headers=h) as r:
                text = await r.text()
                stats.record("COPY", r.status, time.monotonic() - t0)
                if r.status == 202:
                    final = text.rstrip("\n").rsplit("\n", 1)[-1]
                    ok = final == "success: Created"
                    stats.tpc_results["success" if ok else final[:60]] += 1
                    if ok:
                        stats.copies[path] = source.md5[src]
                elif r.status == 503:
                    await asyncio.sleep(0.2)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            stats.errors[f"COPY {type(exc).__name__}"] += 1
            await asyncio.sleep(0.1)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def run(
    seconds: float,
    connections: int,
    tpcs: int,
    workdir: Path,
    *,
    glibc_fixed_threshold: bool = True,
) -> Result:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * connections + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    pki = ensure_dev_pki(workdir / "pki")
    dev = ensure_dev_issuer(workdir / "state", ISSUER)
    source = Source()
    await source.start()
    config = {
        "server": {"workers": 2, "max_connections_per_client": max(256, connections + 64)},
        "tokens": {
            "audiences": [AUDIENCE],
            "issuers": [{"issuer": ISSUER, "jwks_file": str(dev.jwks_file)}],
        },
        "tpc": {"allow_hosts": ["127.0.0.1"], "max_active": 64},
    }
    # glibc keeps freed TLS buffers (its mmap threshold grows after each freed large block), so
    # RSS stays at its peak after a burst; a fixed threshold gives the memory back (README)
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if glibc_fixed_threshold and saved is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"  # inherited by the server only
    try:
        se: RunningSegate = start_segate_in(workdir, pki, config, name="load")
    finally:
        threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    failures: list[str] = []
    try:
        base = se.url
        token = dev.mint(
            scope="storage.read:/ storage.create:/ storage.modify:/",
            audience=AUDIENCE,
            lifetime=int(seconds) + 600,
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        await asyncio.sleep(0.5)
        pids = server_pids(se.pid)
        # warm-up: one request per worker-ish, so the baseline includes imports and caches
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            for _ in range(20):
                async with s.request(
                    "PROPFIND",
                    base + "/",
                    headers={"Authorization": f"Bearer {token}", "Depth": "0"},
                ) as r:
                    await r.read()
        # warm-up: a short burst of the same load, so the baseline already holds what is
        # allocated once (executor threads, interpreter arenas, TLS contexts), then idle
        warm = Stats()
        warm_until = time.monotonic() + min(5.0, seconds / 4)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=connections),
            timeout=aiohttp.ClientTimeout(total=120),
        ) as ws:
            await asyncio.gather(
                *(_client(-1 - i, ws, base, token, warm_until, warm) for i in range(connections)),
                *(
                    _tpc_loop(-1 - i, ws, base, token, source, warm_until, warm)
                    for i in range(tpcs)
                ),
            )
        await asyncio.sleep(3.0)
        start_rss, start_fds = rss_mib(pids), fds(pids)
        start_kinds = fd_kinds(pids)
        stats = Stats()
        stop_at = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=120)
        conn = aiohttp.TCPConnector(ssl=ctx, limit=connections, limit_per_host=connections)
        tconn = aiohttp.TCPConnector(ssl=ctx, limit=tpcs)
        peak_rss = start_rss
        peak_fds = start_fds

        async def sample() -> None:
            nonlocal peak_rss, peak_fds
            while time.monotonic() < stop_at:
                peak_rss = max(peak_rss, rss_mib(pids))
                peak_fds = max(peak_fds, fds(pids))
                await asyncio.sleep(0.5)

        t0 = time.monotonic()
        async with (
            aiohttp.ClientSession(connector=conn, timeout=timeout) as s,
            aiohttp.ClientSession(connector=tconn, timeout=timeout) as ts,
        ):
            await asyncio.gather(
                sample(),
                *(_client(i, s, base, token, stop_at, stats) for i in range(connections)),
                *(_tpc_loop(i, ts, base, token, source, stop_at, stats) for i in range(tpcs)),
            )
        elapsed = time.monotonic() - t0
        # idle: the server closes its side of 1000 connections, frees buffers (bounded wait)
        rss_limit = max(start_rss * 1.5, start_rss + 96)
        idle_until = time.monotonic() + 20
        while True:
            await asyncio.sleep(1.0)
            end_rss, end_fds = rss_mib(pids), fds(pids)
            if (
                end_fds <= start_fds + 16 and end_rss <= rss_limit
            ) or time.monotonic() > idle_until:
                break
        idle_s = round(20 - (idle_until - time.monotonic()), 1)
        # checks
        bad_sums = [p for p, m in stats.uploads.items() if _md5(se.root / p.lstrip("/")) != m]
        bad_sums += [p for p, m in stats.copies.items() if _md5(se.root / p.lstrip("/")) != m]
        staging = se.root / ".segate" / "tmp"
        left = sorted(os.listdir(staging)) if staging.exists() else []
        fivexx = {k: v for k, v in stats.statuses.items() if int(k.split()[1]) >= 500}
        limited = {k: v for k, v in fivexx.items() if k in ("COPY 503",)}
        unexpected = {k: v for k, v in fivexx.items() if k not in limited}
        lat = sorted(stats.latencies) or [0.0]
        summary = {
            "seconds": round(elapsed, 1),
            "connections": connections,
            "concurrent_tpcs": tpcs,
            "requests": stats.requests,
            "requests_per_s": round(stats.requests / elapsed, 1),
            "latency_ms_p50": round(lat[len(lat) // 2] * 1000, 1),
            "latency_ms_p99": round(lat[int(len(lat) * 0.99)] * 1000, 1),
            "statuses": dict(sorted(stats.statuses.items())),
            "client_errors": dict(stats.errors),
            "uploads_checked": len(stats.uploads),
            "tpc_results": dict(stats.tpc_results),
            "copies_checked": len(stats.copies),
            "bad_checksums": len(bad_sums),
            "staging_left": len(left),
            "rss_mib": {"start": start_rss, "peak": peak_rss, "end": end_rss},
            "fds": {"start": start_fds, "peak": peak_fds, "end": end_fds},
            "idle_seconds_before_end_sample": idle_s,
            "fd_kinds": {"start": start_kinds, "end": fd_kinds(pids)},
            "server_processes": len(pids),
            "malloc_mmap_threshold": threshold,
        }
        if bad_sums:
            failures.append(f"{len(bad_sums)} files with a wrong checksum, e.g. {bad_sums[:3]}")
        if left:
            failures.append(f"staging files left: {left[:5]}")
        if unexpected:
            failures.append(f"unexpected 5xx: {unexpected}")
        if sum(stats.errors.values()) > stats.requests // 1000:
            failures.append(f"client-side errors: {dict(stats.errors)}")
        if not stats.uploads or not stats.copies:
            failures.append("no uploads or no copies completed")
        if stats.tpc_results.get("success", 0) != sum(stats.tpc_results.values()):
            failures.append(f"failed copies: {dict(stats.tpc_results)}")
        if end_fds > start_fds + 16:
            failures.append(f"file descriptors not released: {start_fds} -> {end_fds}")
        if end_rss > rss_limit:
            failures.append(f"memory not back near its start: {start_rss} -> {end_rss} MiB")
        return Result(summary, failures)
    finally:
        stop_pid(se.proc)
        await source.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--tpcs", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--glibc-default",
        action="store_true",
        help="run the server with glibc's dynamic mmap threshold (RSS then stays near its peak)",
    )
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 3600 or not 1 <= args.connections <= 5000:
        ap.error("bounded: 1-3600 seconds, 1-5000 connections")
    with tempfile.TemporaryDirectory(prefix="segate-load-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = asyncio.run(
            run(
                args.seconds,
                args.connections,
                args.tpcs,
                workdir,
                glibc_fixed_threshold=not args.glibc_default,
            )
        )
    print(json.dumps({**result.summary, "failures": result.failures}, indent=1))
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
