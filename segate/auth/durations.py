"""ISO 8601 durations and instants as macaroon requests and caveats write them. Pure.

Rules (PROTOCOLS.md §3.2, §3.3, §8 item 20):

* Durations: ``P[nW][nD][T[nH][nM][n[.f]S]]``, case-insensitive (Java ``Duration.parse``, as
  dCache reads ``validity``; XRootD's ``PT<n>S|M|H`` and gfal2's ``PT<N>M`` are a subset). At
  least one component; only seconds may have a fraction. Years and months are refused (their
  length depends on the calendar), and so are negative, zero and absurdly long durations.
* Instants (``before:``): ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)``. Fractional seconds are
  accepted (dCache ``Instant.parse``); a zone is required. We always *write*
  ``YYYY-MM-DDTHH:MM:SSZ`` without fraction, the form XRootD requires.
"""

from __future__ import annotations

import calendar
import re
import time

#: longer than any sane credential (10 years): refused rather than overflowing a datetime
MAX_DURATION = 10 * 366 * 86400.0

_DURATION = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d{1,9})?)S)?)?",
    re.IGNORECASE | re.ASCII,
)
_CALENDAR = re.compile(r"P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T.*)?", re.IGNORECASE | re.ASCII)
_INSTANT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})",
    re.ASCII,
)


class DurationError(ValueError):
    """A duration or instant that cannot be accepted; the message says why."""


def parse_duration(text: str) -> float:
    """``PT30S``, ``PT10M``, ``PT2H``, ``P1D``, ``P1DT2H30M``, ``PT1.5S`` -> seconds (> 0)."""
    if len(text) > 64:
        raise DurationError("duration too long")
    m = _DURATION.fullmatch(text)
    if m is None or text.upper().rstrip("T") == "P" or text.upper().endswith("T"):
        cal = _CALENDAR.fullmatch(text)
        if cal is not None and (cal.group(1) or cal.group(2)):
            raise DurationError(f"{text!r}: years and months are not accepted; use days")
        raise DurationError(f"{text[:40]!r} is not an ISO 8601 duration like PT60M or P1D")
    w, d, h, mi = (int(m.group(k) or 0) for k in ("w", "d", "h", "m"))
    s = float(m.group("s") or 0)
    total = (((w * 7 + d) * 24 + h) * 60 + mi) * 60 + s
    if total <= 0:
        raise DurationError(f"{text!r} is not a positive duration")
    if total > MAX_DURATION:
        raise DurationError(f"{text!r} is too long")
    return total


def parse_instant(text: str) -> float:
    """An ISO 8601 date-time with zone -> epoch seconds (fraction kept)."""
    m = _INSTANT.fullmatch(text)
    if m is None:
        raise DurationError(f"{text[:40]!r} is not an ISO 8601 instant like 2030-01-02T03:04:05Z")
    year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and sec <= 60):
        raise DurationError(f"{text[:40]!r} is not a valid date and time")
    if day > calendar.monthrange(year, month)[1]:
        raise DurationError(f"{text[:40]!r} is not a valid date")
    frac = float(m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    offset = 0
    if zone != "Z":
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            raise DurationError(f"{text[:40]!r} has an invalid zone offset")
        offset = (zh * 60 + zm) * 60 * (1 if zone[0] == "+" else -1)
    return calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) + frac - offset


def format_instant(epoch: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (truncated to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
