"""Keep secrets out of logs, error bodies and Location headers (field report B09).

Bearer tokens and macaroons travel in ``Authorization``, ``TransferHeaderAuthorization`` and the
``authz=`` / ``access_token=`` query parameters. Logs get a short fingerprint instead, so two log
lines about the same credential can still be matched without revealing it.
"""

from __future__ import annotations

import hashlib
import re

SECRET_QUERY_KEYS = frozenset({"authz", "access_token", "token", "macaroon"})
_QUERY_SECRET = re.compile(r"(?i)(^|[?&;])(authz|access_token|token|macaroon)=[^&;#]*")
# JWTs (three base64url parts) and long base64url runs (macaroons) anywhere in free text
_JWT_LIKE = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_LONG_B64 = re.compile(r"[A-Za-z0-9_+/=-]{80,}")


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:12]


def redact_query(target: str) -> str:
    """``/p?authz=XYZ&x=1`` -> ``/p?authz=REDACTED&x=1``."""
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}=REDACTED", target)


def redact_text(text: str) -> str:
    """Best-effort scrub of free text (error messages from peers, exception strings)."""
    text = redact_query(text)
    text = _JWT_LIKE.sub("REDACTED-JWT", text)
    return _LONG_B64.sub("REDACTED", text)


def safe_for_log(value: str, limit: int = 200) -> str:
    """Bounded, escaped rendering of an untrusted value."""
    out = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return out if len(out) <= limit else out[:limit] + "..."
