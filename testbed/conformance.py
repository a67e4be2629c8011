"""Token and path-scope conformance, the same cases against every SE of the testbed.

The cases are the ones the project's own tests pin down for the gateway (tests/unit/test_jwt.py,
tests/integration, README "How requests are judged"): each says whether the request must be
*allowed* (2xx) or *denied* (401/403) under the WLCG profile as segate reads it. Each peer's
answer is recorded as it is, side by side; where a peer is known to differ the difference is
listed with its reason in ``testbed/expected.toml``.

Requests are made with curl, one process (so one fresh TLS connection) each: XRootD 5.5.3 mixes
up Digest headers on kept-alive connections (PEERS.md §4). Header names are spelled canonically
(XRootD compares them case-sensitively) and every call has a timeout.
"""

from __future__ import annotations

import subprocess
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testbed.grid import GROUP, Grid, Peer
from testbed.issuer import alg_none

BASE = "/data/conf"
TIMEOUT = 15.0
RO = f"storage.read:{BASE}"
#: what a group-based (identity) token carries: no storage scope (scitokens-cpp needs a scope)
GROUPS_ONLY = "openid wlcg.groups"


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    title: str
    method: str
    path: str
    want: str  # "allow" | "deny"
    #: (grid, peer) -> Authorization header value (None: no header), or a query token
    credential: Callable[[Grid, Peer], str | None]
    query_token: bool = False
    quick: bool = False
    last: bool = False  # changes the issuer (key rotation): run after everything else


def bearer(**kw: Any) -> Callable[[Grid, Peer], str | None]:
    return lambda g, _p: f"Bearer {g.token(**kw)}"


def _rotated(g: Grid, _p: Peer) -> str:
    assert g.issuer is not None
    kid = g.issuer.rotate("RS256")
    return f"Bearer {g.token(RO, kid=kid)}"


def _lower_scheme(g: Grid, _p: Peer) -> str:
    return f"bearer {g.token(RO)}"


CASES: tuple[Case, ...] = (
    Case("read", "read scope, GET inside it", "GET", f"{BASE}/foo/f.txt", "allow",
         bearer(scope=RO), quick=True),
    Case("es256", "ES256-signed token", "GET", f"{BASE}/foo/f.txt", "allow",
         bearer(scope=RO, alg="ES256")),
    Case("scitokens", "SciTokens 2.0 profile, read:", "GET", f"{BASE}/foo/f.txt", "allow",
         bearer(scope=f"read:{BASE}", profile="scitokens"), quick=True),
    Case("no-token", "no credential at all", "GET", f"{BASE}/foo/f.txt", "deny",
         lambda g, p: None),
    Case("expired", "expired 10 min ago", "GET", f"{BASE}/foo/f.txt", "deny",
         bearer(scope=RO, lifetime=-600), quick=True),
    Case("wrong-aud", "audience of another SE", "GET", f"{BASE}/foo/f.txt", "deny",
         bearer(scope=RO, aud="https://other-se.example.org:8443"), quick=True),
    Case("wrong-issuer", "issuer nobody trusts", "GET", f"{BASE}/foo/f.txt", "deny",
         lambda g, p: f"Bearer {g.foreign_token(iss='https://127.0.0.1:9/rogue')}"),
    Case("forged-key", "trusted iss, unknown signing key", "GET", f"{BASE}/foo/f.txt", "deny",
         lambda g, p: f"Bearer {g.foreign_token(iss=g.issuer.url if g.issuer else '')}"),
    Case("alg-none", "alg none, no signature", "GET", f"{BASE}/foo/f.txt", "deny",
         lambda g, p: f"Bearer {alg_none(g.token(RO))}", quick=True),
    Case("read-only-put", "read scope, PUT", "PUT", f"{BASE}/ro.txt", "deny",
         bearer(scope=RO), quick=True),
    Case("create-new", "create scope, PUT a new file", "PUT", f"{BASE}/create/new.txt", "allow",
         bearer(scope=f"storage.create:{BASE}/create")),
    Case("create-overwrite", "create scope, PUT over an existing file", "PUT",
         f"{BASE}/create/existing.txt", "deny", bearer(scope=f"storage.create:{BASE}/create"),
         quick=True),
    Case("prefix-control", "scope /foo, GET /foo/f.txt", "GET", f"{BASE}/foo/f.txt", "allow",
         bearer(scope=f"storage.read:{BASE}/foo")),
    Case("prefix-sibling", "scope /foo, GET /foobar/f.txt", "GET", f"{BASE}/foobar/f.txt",
         "deny", bearer(scope=f"storage.read:{BASE}/foo"), quick=True),
    Case("dotdot-scope", "scope /foo/.. (rejects the token)", "GET", f"{BASE}/foobar/f.txt",
         "deny", bearer(scope=f"storage.read:{BASE}/foo/.."), quick=True),
    Case("stage-read", "storage.stage only, GET (stage_implies_read)", "GET",
         f"{BASE}/foo/f.txt", "allow", bearer(scope=f"storage.stage:{BASE}")),
    Case("stage-put", "storage.stage only, PUT", "PUT", f"{BASE}/stage.txt", "deny",
         bearer(scope=f"storage.stage:{BASE}")),
    Case("groups-only", f"no scope, wlcg.groups {GROUP}, GET the group area", "GET",
         "/data/groups/f.txt", "allow", bearer(scope=GROUPS_ONLY, groups=[GROUP]), quick=True),
    Case("groups-elsewhere", "no scope, groups only, GET outside the group area", "GET",
         f"{BASE}/foo/f.txt", "deny", bearer(scope=GROUPS_ONLY, groups=[GROUP])),
    Case("query-token", "token in ?authz=Bearer%20...", "GET", f"{BASE}/foo/f.txt", "allow",
         bearer(scope=RO), query_token=True, quick=True),
    Case("lowercase-scheme", "Authorization: bearer <t> (RFC 6750 scheme is case-insensitive)",
         "GET", f"{BASE}/foo/f.txt", "allow", _lower_scheme),
    Case("rotated-key", "issuer rotated its key; token with the new kid", "GET",
         f"{BASE}/foo/f.txt", "allow", _rotated, quick=True, last=True),
)  # fmt: skip


@dataclass
class CaseResult:
    case: Case
    peer: str
    status: int | None
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        c = self.case
        return {
            "case": c.id,
            "title": c.title,
            "peer": self.peer,
            "method": c.method,
            "path": c.path,
            "want": c.want,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
        }


def prepare(grid: Grid) -> None:
    for peer in grid.peers.values():
        for rel in ("conf/foo/f.txt", "conf/foobar/f.txt", "conf/create/existing.txt"):
            peer.put(rel, b"conformance\n")
        peer.put("groups/f.txt", b"group area\n")
        peer.mkdirs("conf")


def request(
    grid: Grid, peer: Peer, method: str, path: str, auth: str | None, query_token: bool
) -> tuple[int, str]:
    """One curl call (a fresh connection); returns the status and the body's first line."""
    assert grid.pki is not None
    url = peer.url + urllib.parse.quote(path)
    if query_token and auth is not None:
        url += "?authz=" + urllib.parse.quote(auth, safe="")
        auth = None
    cmd = ["curl", "-sS", "--max-time", str(int(TIMEOUT)), "--capath", str(grid.pki.ca_dir)]
    cmd += ["-X", method, "-o", "-", "-w", "\n%{http_code}"]
    if auth is not None:
        cmd += ["-H", f"Authorization: {auth}"]
    if method == "PUT":
        cmd += ["-H", "Content-Type: application/octet-stream", "--data-binary", "conformance"]
    r = subprocess.run(
        [*cmd, url],
        env=grid.client_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
    )
    if r.returncode != 0:
        raise OSError(f"curl exit {r.returncode}: {r.stderr.strip()[:200]}")
    body, _, code = r.stdout.rpartition("\n")
    lines = body.strip().splitlines()
    return int(code), (lines[0] if lines else "")[:200]


def run_case(grid: Grid, peer: Peer, case: Case) -> CaseResult:
    if not peer.alive():
        return CaseResult(case, peer.name, None, False, f"{peer.name} is not running")
    if case.id == "create-new":  # fresh target on every run
        peer.local(case.path).unlink(missing_ok=True)
    try:
        auth = case.credential(grid, peer)
        status, detail = request(grid, peer, case.method, case.path, auth, case.query_token)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CaseResult(case, peer.name, None, False, f"{type(exc).__name__}: {exc}")
    ok = 200 <= status < 300 if case.want == "allow" else status in (401, 403)
    return CaseResult(case, peer.name, status, ok, detail)


def run_all(grid: Grid, *, quick: bool, peers: list[str]) -> list[CaseResult]:
    prepare(grid)
    cases = [c for c in CASES if c.quick or not quick]
    ordered = [c for c in cases if not c.last] + [c for c in cases if c.last]
    out = []
    for case in ordered:
        if case.last:  # one rotation, then the same new-kid token shape on every peer
            rotated = case.credential
            holder: dict[str, str | None] = {}

            def once(g: Grid, p: Peer, rotated: Any = rotated, holder: Any = holder) -> Any:
                if "v" not in holder:
                    holder["v"] = rotated(g, p)
                return holder["v"]

            case = Case(**{**_fields(case), "credential": once})
        for name in peers:
            out.append(run_case(grid, grid.peers[name], case))
    return out


def _fields(c: Case) -> dict[str, Any]:
    return {f: getattr(c, f) for f in Case.__slots__}
