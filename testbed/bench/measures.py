"""One measurement each, by the same external client for both servers (curl, ab, wrk).

Every load run is bounded: a fixed byte count (curl) or a fixed duration (ab ``-t``, wrk
``-d``) plus a subprocess timeout. Figures are decimal MB/s (10^6 bytes), requests/s and
milliseconds. A failed transfer raises, so no bad figure is ever reported as a good one.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testbed.bench.servers import ISSUER, SCOPE, Bench, Server
from testbed.issuer import mint

CURL_TIMEOUT = 600.0


def _run(cmd: list[str], timeout: float) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr[-500:]}")
    return res.stdout


def _curl(bench: Bench, *args: str) -> list[str]:
    return [
        "curl",
        "-sS",
        "--fail",
        "--http1.1",
        "--capath",
        str(bench.pki.ca_dir),
        "-H",
        f"Authorization: Bearer {bench.token}",
        *args,
    ]


def get_mbps(bench: Bench, srv: Server, name: str) -> float:
    """curl GET to /dev/null; MB/s from curl's own byte count and total time."""
    out = _run(
        _curl(bench, "-o", "/dev/null", "-w", "%{size_download} %{time_total}", srv.file_url(name)),
        CURL_TIMEOUT,
    )
    size, secs = out.split()
    return int(size) / float(secs) / 1e6


def put_mbps(bench: Bench, srv: Server, src: Path, name: str) -> float:
    """curl -T (a new file each time; removed afterwards so every PUT is a create)."""
    out = _run(
        _curl(bench, "-T", str(src), "-o", "/dev/null", "-w", "%{size_upload} %{time_total}",
              srv.file_url(name)),
        CURL_TIMEOUT,
    )  # fmt: skip
    size, secs = out.split()
    if int(size) != src.stat().st_size:
        raise RuntimeError(f"PUT to {srv.kind} sent {size} bytes")
    delete(bench, srv, name)
    return int(size) / float(secs) / 1e6


def delete(bench: Bench, srv: Server, name: str) -> None:
    _run(_curl(bench, "-X", "DELETE", "-o", "/dev/null", srv.file_url(name)), 60)


def tpc_pull_mbps(bench: Bench, dst: Server, src: Server, name: str, size: int) -> float:
    """COPY with ``Source:`` to ``dst``; timed from request to the final ``success`` line."""
    target = f"tpc-{os.getpid()}-{time.monotonic_ns()}.bin"
    t0 = time.perf_counter()
    out = _run(
        _curl(bench, "-X", "COPY", "-H", f"Source: {src.file_url(name)}",
              "-H", f"TransferHeaderAuthorization: Bearer {bench.token}",
              dst.file_url(target)),
        CURL_TIMEOUT,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    if "success" not in out:
        raise RuntimeError(f"TPC pull into {dst.kind} failed: {out[-300:]}")
    got = (dst.data / target).stat().st_size
    delete(bench, dst, target)
    if got != size:
        raise RuntimeError(f"TPC pull into {dst.kind} stored {got} of {size} bytes")
    return size / secs / 1e6


@dataclass
class Load:
    """One small-request load run: requests/s, p99 latency, and where the machine's CPU went.

    Client and servers share this machine's cores, so requests/s is what is left after the
    load generator's share; ``server_us`` (the server processes' user + system CPU per
    request, all threads and workers, kernel work done on their behalf included) and
    ``client_us`` (ab's or wrk's) show that split."""

    rps: float
    p99_ms: float
    server_us: float
    client_us: float


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (each with all its threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14 and 15)
    return total / tick


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _loaded(srv: Server, run: Callable[[], tuple[float, float]], secs: float) -> Load:
    pids = srv.pids()
    s0, c0 = cpu_seconds(pids), _children_cpu()
    rps, p99 = run()
    s1, c1 = cpu_seconds(pids), _children_cpu()
    n = max(rps * secs, 1.0)
    return Load(rps, p99, (s1 - s0) / n * 1e6, (c1 - c0) / n * 1e6)


def ab_head(bench: Bench, srv: Server, name: str, secs: float, conc: int) -> Load:
    """HEAD with keep-alive by ab (wrk cannot do HEAD)."""
    return _loaded(srv, lambda: _ab_head(bench, srv, name, secs, conc), secs)


def _ab_head(bench: Bench, srv: Server, name: str, secs: float, conc: int) -> tuple[float, float]:
    out = _run(
        ["ab", "-q", "-k", "-i", "-t", str(int(secs)), "-n", "10000000", "-c", str(conc),
         "-H", f"Authorization: Bearer {bench.token}", _ip(srv.file_url(name))],
        secs + 120,
    )  # fmt: skip
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if (failed and int(failed.group(1))) or non2xx:
        raise RuntimeError(f"ab HEAD against {srv.kind} had failures:\n{out[-800:]}")
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    p99 = re.search(r"^\s*99%\s+(\d+)", out, re.M)
    if rps is None or p99 is None:
        raise RuntimeError(f"cannot parse ab output:\n{out[-800:]}")
    return float(rps.group(1)), float(p99.group(1))


def _ip(url: str) -> str:
    """ab and wrk take the first address of ``localhost`` (maybe ::1); segate binds 127.0.0.1."""
    return url.replace("//localhost:", "//127.0.0.1:")


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_propfind(bench: Bench, srv: Server, name: str, secs: float, conc: int) -> Load:
    """PROPFIND Depth 0 by wrk (2 threads, ``conc`` connections)."""
    return _loaded(srv, lambda: _wrk_propfind(bench, srv, name, secs, conc), secs)


def _wrk_propfind(
    bench: Bench, srv: Server, name: str, secs: float, conc: int
) -> tuple[float, float]:
    script = bench.tmp / "propfind.lua"
    script.write_text(
        'wrk.method = "PROPFIND"\nwrk.headers["Depth"] = "0"\n'
        f'wrk.headers["Authorization"] = "Bearer {bench.token}"\n'
    )
    out = _run(
        ["wrk", "-t2", f"-c{conc}", f"-d{int(secs)}s", "--latency", "-s", str(script),
         _ip(srv.file_url(name))],
        secs + 60,
    )  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk PROPFIND against {srv.kind} had errors:\n{out[-800:]}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)", out, re.M)
    if rps is None or p99 is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out[-800:]}")
    return float(rps.group(1)), float(p99.group(1)) * _WRK_UNITS[p99.group(2)]


# -- memory -----------------------------------------------------------------------------------
def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class RssSampler:
    """Peak RSS of a server's processes, sampled every 50 ms in a thread while a load runs."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.srv.pids()))
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)


def concurrent_rss(bench: Bench, srv: Server, name: str, n: int) -> float:
    """Peak server RSS (MiB) while ``n`` curl downloads of ``name`` run at once."""
    cmd = _curl(bench, "-o", "/dev/null", srv.file_url(name))
    with RssSampler(srv) as s:
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(n)]
        for p in procs:
            p.wait(CURL_TIMEOUT)
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a concurrent download from {srv.kind} failed")
    return s.peak


def single_rss(bench: Bench, srv: Server, name: str) -> float:
    with RssSampler(srv) as s:
        get_mbps(bench, srv, name)
    return s.peak


# -- token verification (segate in-process; XRootD has no comparable hook) ------------------
def token_cost_us(bench: Bench, cold_n: int, warm_n: int) -> tuple[float, float]:
    """Microseconds per ``JwtAuthenticator.authenticate``: distinct tokens (signature checked)
    and one token again and again (verified-token cache hit)."""
    from segate.auth.chain import Credentials
    from segate.auth.jwks import KeyStore
    from segate.auth.jwt import JwtAuthenticator
    from segate.config import IssuerConfig, TokensConfig

    async def run() -> tuple[float, float]:
        iss = (IssuerConfig(ISSUER, jwks_file=bench.keys_jwks),)
        tokens = TokensConfig(issuers=iss, audiences=("segate-bench",))
        store = KeyStore(iss, ssl_context=None, refresh=3600, min_refetch=60, timeout=5)
        auth = JwtAuthenticator(tokens, store, server_audiences=())
        creds = Credentials()
        distinct = [
            mint(bench.keys, iss=ISSUER, scope=SCOPE, aud="segate-bench") for _ in range(cold_n)
        ]
        await auth.authenticate(bench.token, creds)  # load keys outside the timing
        t0 = time.perf_counter()
        for t in distinct:
            await auth.authenticate(t, creds)
        cold = (time.perf_counter() - t0) / cold_n * 1e6
        t0 = time.perf_counter()
        for _ in range(warm_n):
            await auth.authenticate(bench.token, creds)
        warm = (time.perf_counter() - t0) / warm_n * 1e6
        await store.close()
        return cold, warm

    return asyncio.run(run())


# -- the machine's limits ---------------------------------------------------------------------
def openssl_aes_gcm_mbps(secs: int) -> float:
    """Single-core AES-256-GCM on 16 KiB blocks (a TLS record), MB/s."""
    out = _run(
        ["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", str(secs), "-bytes", "16384"],
        secs * 4 + 60,
    )
    line = [x for x in out.splitlines() if x.lower().startswith("aes-256-gcm")][-1]
    return float(line.split()[-1].rstrip("k")) * 1000 / 1e6


def page_cache_read_mbps(path: Path, chunk: int = 4 << 20) -> float:
    """Read the (already cached) file into one reused buffer: the ceiling for any server."""
    buf = bytearray(chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.readv(fd, [buf]):  # warm the cache
            pass
        os.lseek(fd, 0, os.SEEK_SET)
        total = 0
        t0 = time.perf_counter()
        while n := os.readv(fd, [buf]):
            total += n
        return total / (time.perf_counter() - t0) / 1e6
    finally:
        os.close(fd)
