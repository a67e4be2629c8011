"""The copy matrix: source SE x destination SE x mode x credential x file size.

Each cell is one ``gfal-copy --copy-mode pull|push|streamed`` with gfal2's fallback to other
modes switched off (``ENABLE_FALLBACK_TPC_COPY=false``), so a failing mode is never masked.

Credentials:

* ``wlcg`` / ``scitokens``: one token for both ends (``BEARER_TOKEN``), audience accepted by all;
* ``x509``: the VOMS proxy (``X509_USER_PROXY``); gfal2 then asks each SE for a macaroon itself
  (only between peers that take X.509: the gateways and XRootD);
* ``macaroon``: a macaroon minted by the *passive* SE (the source of a pull, the destination of a
  push, both ends of a streamed copy) for itself, a WLCG token for the other end; two different
  credentials need the gfal2 Python API (``ctx.cred_set`` per URL prefix, PEERS.md §4) under
  ``/usr/bin/python3``. XRootD mints macaroons for an X.509 identity only (it ignores bearer
  tokens there), so it is asked with the proxy; a gateway is asked with a token.

A cell passes when the client exits 0 and the destination file (read locally) has the source's
size and adler32. Every client call has a timeout; a cell whose peer is not running fails at
once with that reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from testbed.grid import Grid, Peer

MODES = ("pull", "push", "streamed")
CREDENTIALS = ("wlcg", "scitokens", "macaroon", "x509")
SIZES = {"1KiB": 1024, "64MiB": 64 << 20}
PEERS = ("segate-a", "segate-b", "xrootd", "wsgidav")
SRC_DIR = "matrix/src"
DST_DIR = "matrix/out"
GFAL_PYTHON = "/usr/bin/python3"
SCOPES = {
    "wlcg": "storage.read:/data storage.create:/data storage.modify:/data",
    "scitokens": "read:/data write:/data",
}


@dataclass(frozen=True, slots=True)
class Cell:
    src: str
    dst: str
    mode: str
    cred: str
    size: str
    client: str = "gfal"  # "gfal" (gfal-copy / gfal2 Python), "davix" (davix-cp), "curl"

    @property
    def id(self) -> str:
        base = f"{self.src}__{self.dst}__{self.mode}__{self.cred}__{self.size}"
        return base if self.client == "gfal" else f"{base}__{self.client}"

    @property
    def column(self) -> str:
        """The report column: credential, and the client when it is not gfal."""
        return self.cred if self.client == "gfal" else f"{self.cred} ({self.client})"


@dataclass
class CellResult:
    cell: Cell
    ok: bool
    duration: float
    throughput: float | None  # MB/s (10^6 bytes per second)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self.cell)
        d.update(id=self.cell.id, ok=self.ok, duration=round(self.duration, 3))
        d.update(throughput=None if self.throughput is None else round(self.throughput, 4))
        d["error"] = self.error
        return d


def applicable(grid_peers: dict[str, Peer], c: Cell) -> bool:
    """Cells that make sense: X.509 only between peers that take it, macaroons only from one."""
    src, dst = grid_peers[c.src], grid_peers[c.dst]
    if c.cred == "x509":
        return src.takes_x509 and dst.takes_x509
    if c.cred == "macaroon":
        return any(p.mints_macaroons for p in passive(c, src, dst))
    return True


def passive(c: Cell, src: Peer, dst: Peer) -> list[Peer]:
    return {"pull": [src], "push": [dst], "streamed": [src, dst]}[c.mode]


def full_cells() -> list[Cell]:
    """Every pair x mode x credential x size with gfal; davix-cp and curl COPY for the
    third-party modes with a WLCG token at 1 KiB (they take one token, given as headers)."""
    cells = []
    for src in PEERS:
        for dst in PEERS:
            if src == dst:
                continue
            for mode in MODES:
                for size in SIZES:
                    cells += [Cell(src, dst, mode, cred, size) for cred in CREDENTIALS]
                if mode != "streamed":
                    cells += [Cell(src, dst, mode, "wlcg", "1KiB", c) for c in ("davix", "curl")]
    return cells


def quick_cells() -> list[Cell]:
    cells = [
        Cell(s, d, m, "wlcg", "1KiB")
        for s, d in (
            ("segate-a", "segate-b"),
            ("segate-a", "xrootd"),
            ("xrootd", "segate-b"),
            ("wsgidav", "segate-a"),
            ("segate-b", "wsgidav"),
        )
        for m in MODES
    ]
    cells += [
        Cell("segate-b", "xrootd", "pull", "scitokens", "1KiB"),
        Cell("xrootd", "segate-a", "push", "scitokens", "1KiB"),
        Cell("xrootd", "segate-a", "pull", "macaroon", "1KiB"),
        Cell("segate-a", "xrootd", "push", "macaroon", "1KiB"),
        Cell("segate-b", "segate-a", "pull", "macaroon", "1KiB"),
        Cell("segate-a", "xrootd", "pull", "x509", "1KiB"),
        Cell("segate-b", "segate-a", "push", "x509", "1KiB"),
        Cell("segate-a", "xrootd", "pull", "wlcg", "1KiB", "davix"),
        Cell("xrootd", "segate-b", "push", "wlcg", "1KiB", "davix"),
        Cell("xrootd", "segate-a", "pull", "wlcg", "1KiB", "curl"),
        Cell("segate-b", "xrootd", "push", "wlcg", "1KiB", "curl"),
    ]
    return cells


# -- running one cell -------------------------------------------------------------------------
GFAL2_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import gfal2
    cfg = json.load(sys.stdin)
    ctx = gfal2.creat_context()
    for prefix, token in cfg["creds"].items():
        ctx.cred_set(prefix, ctx.cred_new("BEARER", token))
    ctx.set_opt_string("HTTP PLUGIN", "DEFAULT_COPY_MODE", cfg["mode"])
    ctx.set_opt_boolean("HTTP PLUGIN", "ENABLE_FALLBACK_TPC_COPY", False)
    params = ctx.transfer_parameters()
    params.overwrite = True
    params.create_parent = True
    params.timeout = cfg["timeout"]
    try:
        ctx.filecopy(params, cfg["src"], cfg["dst"])
    except gfal2.GError as exc:
        print("gfal2 error: %s" % exc, file=sys.stderr)
        sys.exit(1)
    """
)
GFAL2_MODE = {"pull": "3rd pull", "push": "3rd push", "streamed": "streamed"}


def _adler(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.search(r"failure:.*", ln)
        if m:
            return m.group(0)[:400]
    for ln in reversed(lines):
        if "error" in ln.lower() or "failed" in ln.lower():
            return ln[:400]
    return lines[-1][:400] if lines else "no output"


class MatrixRunner:
    def __init__(self, grid: Grid, *, log: Callable[[str], None] = print) -> None:
        self.grid = grid
        self.log = log
        self.sources: dict[str, tuple[bytes, str]] = {}

    def prepare(self, cells: list[Cell]) -> None:
        """Same random source file per size on every peer; empty output folders."""
        for size in sorted({c.size for c in cells}):
            data = os.urandom(SIZES[size])
            self.sources[size] = (data, _adler(data))
            for peer in self.grid.peers.values():
                peer.put(f"{SRC_DIR}/{size}.bin", data)
        for peer in self.grid.peers.values():
            peer.mkdirs(DST_DIR)

    def macaroon(self, peer: Peer, timeout: float) -> str:
        assert self.grid.pki is not None
        body = '{"caveats": ["activity:DOWNLOAD,UPLOAD,LIST,DELETE,MANAGE"], "validity": "PT30M"}'
        cmd = [
            "curl",
            "-sS",
            "--max-time",
            str(int(timeout)),
            "--capath",
            str(self.grid.pki.ca_dir),
        ]
        cmd += ["-X", "POST", "-H", "Content-Type: application/macaroon-request", "--data", body]
        cmd += ["-w", "\n%{http_code}"]
        if peer.kind == "xrootd":  # XRootD derives macaroon rights from the X.509 identity
            proxy = str(self.grid.pki.proxy_voms)
            cmd += ["--cert", proxy, "--key", proxy]
        else:
            cmd += ["-H", f"Authorization: Bearer {self.grid.token()}"]
        r = subprocess.run(
            [*cmd, f"{peer.url}/data/matrix/"],
            env=self.grid.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout + 5,
        )
        text, _, code = r.stdout.rpartition("\n")
        if r.returncode != 0 or code.strip() != "200":
            raise RuntimeError(f"macaroon request to {peer.name}: {code} {r.stderr or text}"[:300])
        return str(json.loads(text)["macaroon"])

    def run(self, cell: Cell) -> CellResult:
        peers = self.grid.peers
        src, dst = peers[cell.src], peers[cell.dst]
        for p in (src, dst):
            if not p.alive():
                return CellResult(cell, False, 0.0, None, f"{p.name} is not running")
        timeout = 60.0 if cell.size == "1KiB" else 240.0
        rel = f"{DST_DIR}/{cell.id}.bin"
        dst.local(f"/data/{rel}").unlink(missing_ok=True)
        src_url = f"{src.url}/data/{SRC_DIR}/{cell.size}.bin"
        dst_url = f"{dst.url}/data/{rel}"
        t0 = time.monotonic()
        try:
            r = self._client(cell, src, dst, src_url, dst_url, timeout)
        except subprocess.TimeoutExpired:
            return CellResult(cell, False, time.monotonic() - t0, None, f"timeout ({timeout:g} s)")
        except RuntimeError as exc:
            return CellResult(cell, False, time.monotonic() - t0, None, str(exc))
        elapsed = time.monotonic() - t0
        rc, output = r
        if rc != 0:
            return CellResult(cell, False, elapsed, None, _last_error(output))
        data, adler = self.sources[cell.size]
        out = dst.local(f"/data/{rel}")
        try:
            got = out.read_bytes()
        except OSError as exc:
            return CellResult(cell, False, elapsed, None, f"client said OK, but {exc}")
        finally:
            out.unlink(missing_ok=True)
        if len(got) != len(data) or _adler(got) != adler:
            why = f"content differs: {len(got)} bytes, adler32 {_adler(got)} (want {adler})"
            return CellResult(cell, False, elapsed, None, why)
        return CellResult(cell, True, elapsed, len(data) / elapsed / 1e6)

    def _client(
        self, cell: Cell, src: Peer, dst: Peer, src_url: str, dst_url: str, timeout: float
    ) -> tuple[int, str]:
        """Run the client; (exit status, its output)."""
        g = self.grid
        if cell.cred == "macaroon":
            creds = {}
            for p in (src, dst):
                creds[f"{p.url}/"] = (
                    self.macaroon(p, timeout)
                    if p in passive(cell, src, dst) and p.mints_macaroons
                    else g.token()
                )
            cfg: dict[str, Any] = {"mode": GFAL2_MODE[cell.mode], "src": src_url, "dst": dst_url}
            cfg.update(creds=creds, timeout=int(timeout))
            r = subprocess.run(
                [GFAL_PYTHON, "-c", GFAL2_SCRIPT],
                input=json.dumps(cfg),
                env=g.client_env(),
                capture_output=True,
                text=True,
                timeout=timeout + 10,
            )
            return r.returncode, r.stderr + "\n" + r.stdout
        if cell.cred == "x509":
            token = None
            env = g.client_env(proxy=True)
        else:
            profile = "scitokens" if cell.cred == "scitokens" else "wlcg"
            token = g.token(SCOPES[cell.cred], profile=profile)
            env = g.client_env(token=token)
        if cell.client == "curl":
            assert token is not None
            return self._curl_copy(cell, src_url, dst_url, token, timeout)
        if cell.client == "davix":
            assert token is not None and g.pki is not None
            cmd = ["davix-cp", "--capath", str(g.pki.ca_dir), "--copy-mode", cell.mode]
            cmd += ["--timeout", str(int(timeout)), "--retry", "1"]
            cmd += ["-H", f"Authorization: Bearer {token}"]
            cmd += ["-H", f"TransferHeaderAuthorization: Bearer {token}", src_url, dst_url]
            env.pop("BEARER_TOKEN", None)
        else:
            cmd = ["gfal-copy", "-f", "-t", str(int(timeout)), "--copy-mode", cell.mode]
            cmd += ["-D", "HTTP PLUGIN:ENABLE_FALLBACK_TPC_COPY=false", src_url, dst_url]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 10)
        return r.returncode, r.stderr + "\n" + r.stdout

    def _curl_copy(
        self, cell: Cell, src_url: str, dst_url: str, token: str, timeout: float
    ) -> tuple[int, str]:
        """COPY to the active party by hand; the body's last line is ``success:``/``failure:``."""
        assert self.grid.pki is not None
        active, header = (dst_url, f"Source: {src_url}")
        if cell.mode == "push":
            active, header = (src_url, f"Destination: {dst_url}")
        cmd = [
            "curl",
            "-sS",
            "--max-time",
            str(int(timeout)),
            "--capath",
            str(self.grid.pki.ca_dir),
        ]
        cmd += ["-X", "COPY", "-H", header, "-H", f"Authorization: Bearer {token}"]
        cmd += ["-H", f"TransferHeaderAuthorization: Bearer {token}", "-H", "Credential: none"]
        cmd += ["-w", "\n%{http_code}", active]
        r = subprocess.run(
            cmd, env=self.grid.client_env(), capture_output=True, text=True, timeout=timeout + 10
        )
        body, _, code = r.stdout.rpartition("\n")
        lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
        final = lines[-1] if lines else ""
        if r.returncode == 0 and code in ("201", "202") and final.startswith("success"):
            return 0, final
        return 1, f"curl exit {r.returncode}, HTTP {code}: {final or r.stderr.strip()}"
