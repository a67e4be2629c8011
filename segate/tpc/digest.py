"""adler32 for transfers: reading a peer's ``Digest`` header, joining per-block values. Pure.

* ``Digest`` (RFC 3230 §4.3.2): a comma list of ``algorithm=value``; names are
  case-insensitive. adler32 is hex; peers differ in case and zero padding (B20: davix pads to
  8 digits, some servers do not), so values are compared as 8 lowercase hex digits.
* Multi-stream pulls write blocks out of order. Each block's adler32 is computed on its own
  and the blocks are joined in file order with :func:`adler32_combine`, so the checksum of
  the whole file is known before it is committed (no second read). With A = 1 + sum of bytes
  and B = sum of the running A values (both mod 65521), for X followed by Y (length n):
  A(XY) = A(X) + A(Y) - 1 and B(XY) = B(X) + B(Y) + n * (A(X) - 1).
"""

from __future__ import annotations

from collections.abc import Iterable

MOD_ADLER = 65521


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """adler32 of X + Y from adler32(X), adler32(Y) and len(Y)."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % MOD_ADLER
    b = (b1 + b2 + (second_length % MOD_ADLER) * (a1 - 1)) % MOD_ADLER
    return (b << 16) | a


def adler32_hex(value: int) -> str:
    return f"{value & 0xFFFFFFFF:08x}"


def normalize_adler32(value: str) -> str | None:
    v = value.strip().lower()
    if not v or len(v) > 8 or any(c not in "0123456789abcdef" for c in v):
        return None
    return v.rjust(8, "0")


def adler32_from_digest(values: Iterable[str]) -> str | None:
    """The adler32 value in ``Digest`` header field values, normalised; None if absent."""
    for field in values:
        for item in field.split(","):
            name, sep, value = item.partition("=")
            if sep and name.strip().lower() == "adler32":
                return normalize_adler32(value)
    return None
