"""The body of a 202 third-party COPY answer: perf markers, then one final line. Pure.

Format (PROTOCOLS.md §4.3, field report B22), as XRootD writes it and davix parses it: LF line
ends, no indentation, exactly ``Key: value`` (davix reads ``Stripe Bytes Transferred`` from
offset 26, so one space after the colon matters):

    Perf Marker
    Timestamp: <unix seconds>
    Stripe Index: 0
    Stripe Bytes Transferred: <bytes written so far>
    Total Stripe Count: 1
    RemoteConnections: tcp:<ip>:<port>[,tcp:[<ipv6>]:<port>...]
    End

The last line of the body is ``success: Created`` or ``failure: <reason>`` (xrootd PR #2260:
every error starts with ``failure:``). The reason is one line (CR/LF and other control
characters become spaces), redacted (tokens, macaroons, ``authz=`` query values, and the
forwarded credentials themselves; B09) and bounded in length (davix reads lines of at most
1023 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable

from segate.web.redact import redact_text

SUCCESS = "success: Created"
MAX_LINE = 1000


def format_endpoint(ip: str, port: int) -> str:
    """``tcp:1.2.3.4:443`` or ``tcp:[2001:db8::1]:443``."""
    host = f"[{ip}]" if ":" in ip else ip
    return f"tcp:{host}:{port}"


def perf_marker(timestamp: float, bytes_done: int, remote_connections: Iterable[str] = ()) -> str:
    """One marker; ``remote_connections`` are ``tcp:ip:port`` strings (omitted when empty)."""
    lines = [
        "Perf Marker",
        f"Timestamp: {int(timestamp)}",
        "Stripe Index: 0",
        f"Stripe Bytes Transferred: {int(bytes_done)}",
        "Total Stripe Count: 1",
    ]
    conns = ",".join(remote_connections)
    if conns:
        lines.append(f"RemoteConnections: {conns}")
    lines.append("End")
    return "\n".join(lines) + "\n"


def success_line() -> str:
    return SUCCESS + "\n"


def one_line(text: str) -> str:
    cleaned = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    return " ".join(cleaned.split())


def failure_line(reason: str, hide: Iterable[str] = ()) -> str:
    """``failure: <reason>``; ``hide`` are the forwarded credentials (``TransferHeader*``
    values) a remote may echo in its error body, removed wherever they appear, whatever their
    scheme (``Basic user:password`` has no pattern a generic scrubber could know)."""
    for secret in sorted(hide, key=len, reverse=True):
        if len(secret) >= 4:
            reason = reason.replace(secret, "REDACTED")
    text = one_line(redact_text(reason)) or "transfer failed"
    if len(text) > MAX_LINE:
        text = text[: MAX_LINE - 3] + "..."
    return f"failure: {text}\n"
