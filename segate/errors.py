"""One error tree for everything a client can be told.

Each class carries the HTTP status it maps to; ``web/middleware.py`` is the only place that turns
them into responses. Messages are one line, safe to show to the client, and never contain a
credential.

    SegateError (500)
    ├── BadRequest (400)
    │   └── RequestTooLarge (413)  LengthRequired (411)  UriTooLong (414)
    ├── Unauthenticated (401)      credential present but unacceptable, or required and absent
    ├── Forbidden (403)            credential fine, right missing
    ├── NotFound (404)
    ├── MethodNotAllowed (405)
    ├── Conflict (409)
    ├── PreconditionFailed (412)
    ├── RangeNotSatisfiable (416)
    ├── Locked (423)
    ├── InsufficientStorage (507)
    ├── UnsupportedMediaType (415)
    ├── NotImplementedByServer (501)
    ├── BadGateway (502)
    └── ServiceUnavailable (503)
"""

from __future__ import annotations


class SegateError(Exception):
    status = 500
    #: close the connection after answering (the request body may still be in flight)
    close_connection = False
    #: extra response headers (e.g. WWW-Authenticate, Retry-After, Content-Range)
    headers: dict[str, str]

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message.replace("\r", " ").replace("\n", " ")
        self.headers = dict(headers or {})


class BadRequest(SegateError):
    status = 400


class LengthRequired(BadRequest):
    status = 411
    close_connection = True


class RequestTooLarge(BadRequest):
    status = 413
    close_connection = True


class UriTooLong(BadRequest):
    status = 414


class Unauthenticated(SegateError):
    """401. ``bearer_error`` fills ``WWW-Authenticate: Bearer error=...`` (RFC 6750 §3)."""

    status = 401

    def __init__(
        self,
        message: str,
        *,
        bearer_error: str | None = "invalid_token",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        if bearer_error is None:
            self.headers.setdefault("WWW-Authenticate", 'Bearer realm="segate"')
        else:
            desc = self.message.replace("\\", "\\\\").replace('"', "'")
            self.headers.setdefault(
                "WWW-Authenticate",
                f'Bearer realm="segate", error="{bearer_error}", error_description="{desc}"',
            )


class Forbidden(SegateError):
    status = 403


class NotFound(SegateError):
    status = 404


class MethodNotAllowed(SegateError):
    status = 405


class Conflict(SegateError):
    status = 409


class PreconditionFailed(SegateError):
    status = 412


class RangeNotSatisfiable(SegateError):
    status = 416


class Locked(SegateError):
    status = 423


class InsufficientStorage(SegateError):
    status = 507


class UnsupportedMediaType(SegateError):
    status = 415


class NotImplementedByServer(SegateError):
    status = 501


class BadGateway(SegateError):
    status = 502


class ServiceUnavailable(SegateError):
    status = 503


class TooManyConnections(SegateError):
    """More connections from one client address than ``[server] max_connections_per_client``."""

    status = 429
    close_connection = True
