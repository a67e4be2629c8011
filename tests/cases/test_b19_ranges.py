"""B19 — Range requests: many ranges, large offsets, 200 vs 206.

Right value (``/d/big`` 6 GiB sparse with a known pattern, ``/d/small`` 1000 bytes):
``bytes=0-99``, ``bytes=5368709120-5368709129``, ``bytes=-10`` → 206 with the right
``Content-Range``/length/bytes; ``bytes=1000-`` on small → 416 with ``Content-Range: bytes */1000``;
two ranges → 206 ``multipart/byteranges``; 2000 ranges → one clean 400 (more than
``MAX_RANGES``), never two status lines on the connection; HEAD with Range has no body
(segate ignores Range on HEAD: 200 with the full length, as RFC 9110 §14.2 allows). A range
that is honoured is always 206.
"""

from __future__ import annotations

from tests.cases.conftest import statuses
from tests.conftest import Gateway

OFF = 5368709120


async def test_ranges(gw: Gateway) -> None:
    (gw.root / "d").mkdir()
    small = bytes(i % 251 for i in range(1000))
    (gw.root / "d" / "small").write_bytes(small)
    with (gw.root / "d" / "big").open("wb") as fh:
        fh.truncate(6 << 30)
        fh.seek(OFF)
        fh.write(b"0123456789")
        fh.seek(0)
        fh.write(b"B" * 100)
    h = gw.bearer("storage.read:/d")

    async def get(path: str, rng: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        r = await gw.client.request(method, path, headers={**h, "Range": rng})
        return r.status, dict(r.headers), await r.read()

    s, hd, b = await get("/d/big", "bytes=0-99")
    assert (s, hd["Content-Range"], b) == (206, f"bytes 0-99/{6 << 30}", b"B" * 100)
    s, hd, b = await get("/d/big", f"bytes={OFF}-{OFF + 9}")
    assert (s, hd["Content-Range"], b) == (206, f"bytes {OFF}-{OFF + 9}/{6 << 30}", b"0123456789")
    s, hd, b = await get("/d/small", "bytes=-10")
    assert (s, hd["Content-Range"], b) == (206, "bytes 990-999/1000", small[-10:])
    assert hd["Content-Length"] == "10"
    s, hd, b = await get("/d/small", "bytes=1000-")
    assert s == 416 and hd["Content-Range"] == "bytes */1000"
    s, hd, b = await get("/d/small", "bytes=0-9,20-29")
    assert s == 206 and hd["Content-Type"].startswith("multipart/byteranges")
    assert small[:10] in b and small[20:30] in b
    s, hd, b = await get("/d/small", "bytes=0-9", "HEAD")
    assert s == 200 and b == b"" and hd["Content-Length"] == "1000"  # HEAD ignores Range


async def test_two_thousand_ranges_is_one_clean_answer(gw: Gateway) -> None:
    (gw.root / "small").write_bytes(b"s" * 1000)
    tok = gw.token("storage.read:/")
    many = ",".join(["0-0"] * 2000)  # 8 KB: within the header limit, over MAX_RANGES
    auth = f"Host: x\r\nAuthorization: Bearer {tok}\r\n"
    wire = (
        f"GET /small HTTP/1.1\r\n{auth}Range: bytes={many}\r\n\r\n"
        f"GET /small HTTP/1.1\r\n{auth}Connection: close\r\n\r\n"
    )
    out = await gw.raw(wire.encode())
    assert statuses(out) == [400, 200]


async def test_range_header_over_the_header_limit_is_one_clean_400(gw: Gateway) -> None:
    (gw.root / "small").write_bytes(b"s" * 1000)
    many = ",".join(f"{i}-{i}" for i in range(0, 8000, 2))  # > [server] max_header_size
    out = await gw.raw(f"GET /small HTTP/1.1\r\nHost: x\r\nRange: bytes={many}\r\n\r\n".encode())
    assert statuses(out) in ([400], [431])
