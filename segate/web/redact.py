"""Keep secrets out of logs, error bodies and Location headers (field report B09).

Bearer tokens and macaroons travel in ``Authorization``, ``TransferHeaderAuthorization`` and the
``authz=`` / ``access_token=`` query parameters. Logs get a short fingerprint instead, so two log
lines about the same credential can still be matched without revealing it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from urllib.parse import unquote

from aiohttp.http_exceptions import HttpProcessingError

SECRET_QUERY_KEYS = frozenset({"authz", "access_token", "token", "macaroon"})
# any ``name=value`` query parameter; the name is percent-decoded before it is compared, because
# credential parsing decodes names too (``access%5Ftoken=`` authenticates like ``access_token=``)
_QUERY_PARAM = re.compile(r"(^|[?&;])([^=&;#?\s]+)=([^&;#]*)")
# ``Bearer <anything up to whitespace>`` (raw header bytes in parser errors), except the words
# of segate's own messages ("empty bearer credential"), and truncated JWTs: a JWT header always
# starts ``eyJ`` (base64url of ``{"``), cut anywhere by a length limit
_BEARER = re.compile(r"(?i)\b(bearer)\s+(?!(?:credential|token)s?(?:\s|$))[^\s\\'\"]+")
_JWT_PREFIX = re.compile(r"eyJ[A-Za-z0-9_.+/=-]{17,}")
# JWTs (three base64url parts) and long base64url runs (macaroons) anywhere in free text
_JWT_LIKE = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_LONG_B64 = re.compile(r"[A-Za-z0-9_+/=-]{80,}")


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:12]


def _redact_param(m: re.Match[str]) -> str:
    if unquote(m.group(2)).strip().lower() in SECRET_QUERY_KEYS:
        return f"{m.group(1)}{m.group(2)}=REDACTED"
    return m.group(0)


def redact_query(target: str) -> str:
    """``/p?authz=XYZ&x=1`` -> ``/p?authz=REDACTED&x=1``; also ``?%61uthz=`` and ``?AUTHZ=``.

    Names are split on ``&``/``;`` and percent-decoded before the case-insensitive comparison,
    so every spelling that authenticates is also redacted (the raw name is kept in the log).
    """
    return _QUERY_PARAM.sub(_redact_param, target)


def redact_text(text: str) -> str:
    """Best-effort scrub of free text (error messages from peers, exception strings, raw bytes)."""
    if (
        "=" not in text  # _QUERY_PARAM
        and "eyJ" not in text  # _JWT_PREFIX
        and text.count(".") < 2  # _JWT_LIKE
        and len(text) < 80  # _LONG_B64
        # _BEARER needs "bearer" in any case; str.lower() maps exactly the characters that
        # (?i) matches to b, e, a, r (every code point checked), so this test is a superset
        and "bearer" not in text.lower()
    ):
        return text  # no pattern below can match (e.g. every "scope storage.read:/..." reason)
    text = redact_query(text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} REDACTED", text)
    text = _JWT_LIKE.sub("REDACTED-JWT", text)
    text = _JWT_PREFIX.sub("REDACTED-JWT", text)
    return _LONG_B64.sub("REDACTED", text)


#: exceptions a client causes (malformed HTTP, a reset): a one-line warning, never a traceback
CLIENT_ERRORS: tuple[type[BaseException], ...] = (HttpProcessingError, ConnectionResetError)
#: aiohttp's loggers (a logger's filters see only records logged on that very logger)
AIOHTTP_LOGGERS = (
    "aiohttp",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)


class AiohttpLogFilter(logging.Filter):
    """Scrub aiohttp's log records (field report B09).

    aiohttp logs requests its parser rejects at ERROR with a traceback whose exception message
    holds the raw request bytes, ``Authorization`` header included. A client-caused error
    becomes one WARNING line (no traceback) and every message is passed through
    :func:`redact_text`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        msg = record.getMessage()
        if isinstance(exc, CLIENT_ERRORS):
            detail = getattr(exc, "message", "") or str(exc)
            first = str(detail).splitlines()[0] if str(detail).strip() else ""
            msg = f"{msg}: {type(exc).__name__}: {safe_for_log(redact_text(first))}"
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif record.exc_info:  # a real server-side error keeps its traceback, scrubbed
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        record.msg, record.args = redact_text(msg), None
        return True


_FILTER = AiohttpLogFilter()


def install_log_filter() -> None:
    """Attach :class:`AiohttpLogFilter` to aiohttp's loggers (idempotent)."""
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def safe_for_log(value: str, limit: int = 200) -> str:
    """Bounded, escaped rendering of an untrusted value."""
    out = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return out if len(out) <= limit else out[:limit] + "..."
