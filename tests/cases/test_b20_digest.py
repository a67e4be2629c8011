"""B20 — Want-Digest parsing and value formats.

Right value: ``/d/zero4`` (4 zero bytes) → ``Digest: adler32=00040001`` (8 lowercase hex digits,
zero-padded), names case-insensitive; ``MD5, ADLER32`` → one supported ``name=value`` (segate
answers the first supported in preference order); q-value lists → a supported algorithm, never
500; ``crc32c`` → 8 hex digits; unknown algorithm → 200 and no Digest; Digest on a range request
is the digest of the whole file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zlib

from tests.conftest import Gateway

PAIR = re.compile(r"^(adler32=[0-9a-f]{8}|md5=[A-Za-z0-9+/]{22}==|crc32c=[0-9a-f]{8})$")


async def test_want_digest(gw: Gateway) -> None:
    (gw.root / "d").mkdir()
    (gw.root / "d" / "zero4").write_bytes(b"\0" * 4)
    data = os.urandom(1 << 20)
    (gw.root / "d" / "f").write_bytes(data)
    h = gw.bearer("storage.read:/d")

    async def digest(path: str, want: str, method: str = "HEAD", **extra: str) -> str | None:
        r = await gw.client.request(method, path, headers={**h, "Want-Digest": want, **extra})
        await r.read()
        assert r.status in (200, 206), (want, r.status)
        return r.headers.get("Digest")

    assert await digest("/d/zero4", "adler32") == "adler32=00040001"
    assert await digest("/d/zero4", "ADLER32") == "adler32=00040001"
    d = await digest("/d/f", "MD5, ADLER32")
    assert d is not None and PAIR.match(d)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert d in (f"md5={md5}", f"adler32={zlib.adler32(data):08x}")
    q = "sha-512,sha-256;q=0.8,sha;q=0.6,md5;q=0.4,adler32;q=0.2"
    d = await digest("/d/f", q)
    assert d in (f"md5={md5}", f"adler32={zlib.adler32(data):08x}")
    d = await digest("/d/f", "crc32c")
    assert d is not None and re.fullmatch(r"crc32c=[0-9a-f]{8}", d)
    assert await digest("/d/f", "foo") is None
    for junk in (";;;", "adler32;q=x", "md5;q=2", "=,=", "a" * 5000, "adler32;q=0"):
        d = await digest("/d/f", junk)
        assert d is None or PAIR.match(d)
    d = await digest("/d/f", "adler32", "GET", Range="bytes=0-9")
    assert d == f"adler32={zlib.adler32(data):08x}"
