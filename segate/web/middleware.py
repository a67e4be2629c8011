"""Errors to responses (the only place), and one access-log line per request.

A SegateError becomes its status with a one-line text body; a StorageError is mapped to the
status a WebDAV client expects (RFC 4918 §9, PROTOCOLS.md §6.3); anything else is a 500 with a
generic body, the traceback going to the server log only. Secrets never reach the log: the
request target is logged with ``authz=``/``access_token=`` values replaced.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiohttp import web

from segate.auth.principal import Principal
from segate.errors import SegateError
from segate.logsink import direct_sink
from segate.storage import base as sb
from segate.web.redact import redact_query, redact_text

access_log = logging.getLogger("segate.access")
log = logging.getLogger("segate")

_STORAGE_STATUS: dict[type[sb.StorageError], int] = {
    sb.NotFoundError: 404,
    sb.ExistsError: 409,
    sb.ParentMissingError: 409,
    sb.NotADirectoryError_: 409,
    sb.IsADirectoryError_: 405,
    sb.NotEmptyError: 409,
    sb.NoSpaceError: 507,
    sb.EscapeError: 403,
    sb.InvalidTargetError: 409,
    sb.NotRegularError: 403,
    sb.UnavailableError: 503,
    sb.BackendError: 500,
}


def error_response(exc: BaseException) -> tuple[web.Response, str]:
    """The response for an exception, and the reason to log."""
    if isinstance(exc, SegateError):
        status, msg, headers = exc.status, exc.message, exc.headers
    elif isinstance(exc, sb.StorageError):
        status = next((s for t, s in _STORAGE_STATUS.items() if isinstance(exc, t)), 500)
        msg, headers = str(exc) or type(exc).__name__, {}
    else:
        status, msg, headers = 500, "internal server error", {}
    resp = web.Response(status=status, text=msg + "\n", headers=headers)
    if getattr(exc, "close_connection", False):
        resp.force_close()
    return resp, msg


#: ``json.dumps(fields, separators=(",", ":"), default=str)`` without building an encoder per call
_JSON = json.JSONEncoder(separators=(",", ":"), default=str)


class AccessLog:
    """One line per request: ``k=v`` pairs (a value with a space, ``"`` or ``=`` or an empty
    one as a JSON string) or one JSON object. The target's secret query values and anything
    secret-looking in the reason are redacted (redact.py)."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"

    def request(
        self,
        ids: Iterator[int],
        *,
        client: str,
        method: str,
        target: str,
        status: int,
        nbytes: int,
        started: float,
        principal: Principal | None,
        reason: str,
        decisions: Sequence[str] = (),
    ) -> None:
        """The line of one served request, the same from the fast lane and from aiohttp:
        ``started`` is its ``time.perf_counter()``; without an error ``reason`` the last
        authorisation decision is the reason. (The text line is :meth:`emit`'s, built without
        the field dict: tests/unit/test_hot_path_equivalence.py compares them.)"""
        ident = f"{next(ids) & 0xFFFFFFFF:08x}"
        if not access_log.isEnabledFor(logging.INFO):
            return  # nobody would see the line: build none
        dur_ms = round((time.perf_counter() - started) * 1000, 2)
        auth: str = principal.kind if principal else "-"  # (a StrEnum: its value as a str)
        subject = principal.label() if principal else "-"
        reason = reason or (decisions[-1] if decisions else "")
        if self.json:
            self.emit(
                id=ident,
                client=client,
                method=method,
                target=target,
                status=status,
                bytes=nbytes,
                dur_ms=dur_ms,
                auth=auth,
                subject=subject,
                reason=reason,
            )
            return
        if "=" in target:  # a query parameter (so a secret) needs an "="
            target = redact_query(target)
        if reason:
            reason = redact_text(reason)
        _log_line(
            f"id={ident} client={_value(client)} method={_value(method)} "
            f"target={_value(target)} status={status} bytes={nbytes} dur_ms={dur_ms} "
            f"auth={_value(auth)} subject={_value(subject)} reason={_value(reason)}"
        )

    def emit(self, **fields: Any) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return  # nobody would see the line: build none
        target = fields.get("target", "")
        # a query parameter (so a secret) needs an "=": without one redact_query matches nothing
        fields["target"] = redact_query(target) if "=" in target else target
        if fields.get("reason"):
            fields["reason"] = redact_text(str(fields["reason"]))
        if self.json:
            _log_line(_JSON.encode(fields))
            return
        parts = []
        for k, v in fields.items():
            t = type(v)
            # a number is never empty and never holds a space, quote or "="
            s = str(v) if t is int or t is float else _value(str(v))
            parts.append(f"{k}={s}")
        _log_line(" ".join(parts))


#: ``json.dumps`` of a str, without its Python-level argument handling (the same C function)
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _value(s: str) -> str:
    """A text field's value in a text line: as is, or a JSON string when empty or when it holds
    a space, ``"`` or ``=``."""
    return _json_str(s) if not s or " " in s or '"' in s or "=" in s else s


def _log_line(message: str) -> None:
    """Log one access-log line at INFO: straight to the serve process's handler when only it
    would see the record (logsink.py), else through ``logging``."""
    sink = direct_sink(access_log)
    if sink is None or not sink.direct(_INFO, "segate.access", message):
        access_log.info(message)


_INFO = logging.getLevelName(logging.INFO)


def now() -> float:
    return time.perf_counter()
