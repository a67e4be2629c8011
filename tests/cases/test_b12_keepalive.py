"""B12 — a credential from request N never authorises request N+1 on the same connection.

Right value on one persistent connection: macaroon A ``/data/a`` → 200, B ``/data/b`` → 200,
``/data/a`` with B → 403, no credential → 401; the same with JWTs of different ``sub`` and the
access log naming each request's own subject. Macaroons: also
tests/integration/test_macaroon_endpoint.py::test_b12_keep_alive_each_request_its_own_macaroon;
X509 connection + token, then certificate only:
tests/integration/test_x509_inprocess.py::test_keepalive_connection_identity_per_request.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.cases.conftest import statuses
from tests.conftest import Gateway


def req(path: str, tok: str | None, last: bool = False) -> str:
    auth = f"Authorization: Bearer {tok}\r\n" if tok else ""
    conn = "close" if last else "keep-alive"
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: {conn}\r\n\r\n"


async def test_jwts_of_different_subjects(
    gw: Gateway, access_lines: Callable[[], list[str]]
) -> None:
    (gw.root / "data").mkdir()
    (gw.root / "data" / "a").write_bytes(b"A")
    (gw.root / "data" / "b").write_bytes(b"B")
    ta = gw.token("storage.read:/data/a", subject="alice")
    tb = gw.token("storage.read:/data/b", subject="bob")
    wire = req("/data/a", ta) + req("/data/b", tb) + req("/data/a", tb) + req("/data/a", None, True)
    out = await gw.raw(wire.encode())
    assert statuses(out) == [200, 200, 403, 401]
    lines = [ln for ln in access_lines() if "method=GET" in ln][-4:]
    subjects = [ln.split("subject=", 1)[1].split(" ", 1)[0] for ln in lines]
    assert subjects[0].endswith("#alice") and subjects[1].endswith("#bob")
    assert subjects[2].endswith("#bob") and subjects[3] in ("-", "anonymous", '"anonymous"')
