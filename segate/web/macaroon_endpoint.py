"""``POST <path>`` with ``Content-Type: application/macaroon-request``: mint a macaroon.

Rules (PROTOCOLS.md §3.2 request/response, §3.5 bounding, §3.6 lifetimes, §8 items 19-20):

* Only a POST whose media type is ``application/macaroon-request`` (case-insensitive, parameters
  allowed) is a macaroon request; any other POST is 405 and never serves the file.
  ``Expect: 100-continue`` is answered only once the requester may ask.
* The requester must be authenticated (401) and not a limited X.509 proxy (403). A macaroon may
  mint a narrower macaroon: its identity and every restriction it carries are kept.
* Body (<= 64 KiB, else 413): empty (the most powerful macaroon the requester may have, as in
  dCache), or a JSON object ``{"caveats": [...], "validity": "PT60M"}``. Caveats: ``activity:``
  (several intersect), ``path:`` (absolute, at or below the request path; several must nest: the
  deepest wins), ``before:`` (ISO 8601 instant), ``ip:`` (address or CIDR list). Anything else,
  bad JSON or a bad duration is a 400 with the reason. Other JSON keys are ignored.
* Bounding: the target path is the request path or the requested one (it need not exist: gfal2
  asks for ``<dir>/gfal2_mkdir.reserved``). The activities the requester's rights allow there
  (``authz.allowed_ops``) are DOWNLOAD iff read, UPLOAD iff create, DELETE iff delete, MANAGE iff
  mkdir and move, LIST iff list, STAGE iff stage, READ_METADATA iff stat; UPDATE_METADATA never
  (nothing serves it). Minted = requested ∩ allowed (no ``activity:`` requested: all allowed).
  Nothing left, or only READ_METADATA when more was asked for: 403.
* Expiry = min(now + validity (default: one day), requested ``before:``, now + ``[macaroons]
  max_validity``, the requester's own expiry), whole seconds. A ``before:`` in the past is 400.
* Answer 200 ``application/json``: ``macaroon``, ``expires_in`` (XRootD) and ``uri`` with
  ``targetWithMacaroon``, ``baseWithMacaroon``, ``target``, ``base`` (dCache). The base URL is
  ``[server] public_url``, else ``https://<Host of the request>``. ``Cache-Control: no-store``.
  The macaroon is never logged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from segate.auth.durations import DurationError, parse_duration, parse_instant
from segate.auth.macaroon_caveats import (
    CaveatError,
    MintedFor,
    parse_activities,
    parse_caveat_path,
    parse_networks,
)
from segate.auth.macaroons import MacaroonKeyring, mint
from segate.auth.principal import Activity, Op, Principal
from segate.authz.decide import Policy, allowed_ops
from segate.config import Settings
from segate.errors import BadRequest, Forbidden, MethodNotAllowed, Unauthenticated
from segate.paths import LogicalPath
from segate.web.body import read_limited, send_continue
from segate.web.context import RequestContext

MEDIA_TYPE = "application/macaroon-request"
#: a macaroon request is a few hundred bytes; also bounded by ``[server] max_body_xml``
MAX_BODY = 64 * 1024
DEFAULT_VALIDITY = 86400.0
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


@dataclass(frozen=True, slots=True)
class MacaroonRequest:
    #: None: no ``activity:`` caveat requested (everything the requester may do)
    activities: frozenset[Activity] | None = None
    paths: tuple[LogicalPath, ...] = ()
    before: float | None = None
    validity: float | None = None
    networks: tuple[str, ...] = ()


def is_macaroon_request(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == MEDIA_TYPE


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def parse_request(body: bytes) -> MacaroonRequest:
    """The JSON body of a macaroon request. Raises BadRequest with a one-line reason."""
    if not body.strip():
        return MacaroonRequest()
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise BadRequest("macaroon request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("macaroon request body must be a JSON object")
    caveats = doc.get("caveats") or []
    if not isinstance(caveats, list) or not all(isinstance(c, str) for c in caveats):
        raise BadRequest("'caveats' must be a list of strings")
    activities: frozenset[Activity] | None = None
    paths: list[LogicalPath] = []
    befores: list[float] = []
    networks: list[str] = []
    for caveat in caveats:
        name, sep, value = caveat.partition(":")
        try:
            if not sep:
                raise CaveatError(f"malformed caveat {caveat[:40]!r}")
            if name == "activity":
                acts = parse_activities(value)
                activities = acts if activities is None else activities & acts
            elif name == "path":
                paths.append(parse_caveat_path(value))
            elif name == "before":
                befores.append(parse_instant(value.strip()))
            elif name == "ip":
                networks.extend(str(n) for n in parse_networks(value))
            else:
                raise CaveatError(f"unsupported caveat {name[:30]!r}")
        except (CaveatError, DurationError) as exc:
            raise BadRequest(f"bad requested caveat: {exc}") from None
    validity = doc.get("validity")
    seconds: float | None = None
    if validity is not None:
        if not isinstance(validity, str):
            raise BadRequest("'validity' must be an ISO 8601 duration string like PT60M")
        try:
            seconds = parse_duration(validity.strip())
        except DurationError as exc:
            raise BadRequest(f"bad validity: {exc}") from None
    return MacaroonRequest(
        activities=activities,
        paths=tuple(paths),
        before=min(befores) if befores else None,
        validity=seconds,
        networks=tuple(dict.fromkeys(networks)),
    )


def activities_for(ops: frozenset[Op]) -> frozenset[Activity]:
    """The activities a set of allowed operations supports (PROTOCOLS.md §3.3, §3.5)."""
    out: set[Activity] = set()
    pairs = (
        (Op.STAT, Activity.READ_METADATA),
        (Op.READ, Activity.DOWNLOAD),
        (Op.CREATE, Activity.UPLOAD),
        (Op.DELETE, Activity.DELETE),
        (Op.LIST, Activity.LIST),
        (Op.STAGE, Activity.STAGE),
    )
    for op, act in pairs:
        if op in ops:
            out.add(act)
    if Op.MKDIR in ops and Op.MOVE_OUT in ops:
        out.add(Activity.MANAGE)
    return frozenset(out)


def target_path(request_path: LogicalPath, requested: tuple[LogicalPath, ...]) -> LogicalPath:
    """The macaroon's path: the request path, or the deepest requested one (all nested in it)."""
    if not requested:
        return request_path
    deepest = max(requested, key=lambda p: len(p.segments))
    for p in requested:
        if not p.is_within(request_path):
            raise BadRequest(f"requested path {p} is not at or below the request path")
        if not deepest.is_within(p):
            raise BadRequest("requested paths do not nest; ask for one path")
    return deepest


@dataclass(frozen=True, slots=True)
class Bounded:
    path: LogicalPath
    activities: frozenset[Activity]
    expires_at: float


def bound(
    principal: Principal,
    req: MacaroonRequest,
    request_path: LogicalPath,
    *,
    policy: Policy,
    now: float,
    max_validity: float,
) -> Bounded:
    """What may be minted for this principal and request, or Forbidden/BadRequest. Pure."""
    path = target_path(request_path, req.paths)
    allowed = activities_for(allowed_ops(principal, path, policy))
    acts = allowed if req.activities is None else req.activities & allowed
    asked_more = req.activities is None or bool(req.activities - {Activity.READ_METADATA})
    if not acts or (asked_more and not acts - {Activity.READ_METADATA}):
        raise Forbidden(f"the credential allows none of the requested activities at {path}")
    if req.before is not None and req.before <= now:
        raise BadRequest("bad requested caveat: before: is in the past")
    validity = req.validity if req.validity is not None else DEFAULT_VALIDITY
    limits = [now + validity, now + max_validity]
    if req.before is not None:
        limits.append(req.before)
    if principal.expires_at is not None:
        limits.append(principal.expires_at)
    expires_at = float(math.floor(min(limits)))
    if expires_at <= now:
        raise Forbidden("the credential expires too soon to mint a macaroon")
    return Bounded(path, acts, expires_at)


class MacaroonEndpoint:
    """``services.extensions["POST"]``: the macaroon request handler."""

    def __init__(
        self, keyring: MacaroonKeyring, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self.keyring = keyring
        self.settings = settings
        self.clock = clock

    def base_url(self, request: web.Request) -> str:
        if self.settings.server.public_url:
            return self.settings.server.public_url.rstrip("/")
        host = request.headers.get("Host", "")
        if not _HOST.fullmatch(host):
            return self.settings.server.base_url
        return f"https://{host}"

    async def handle(self, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        if not is_macaroon_request(request.headers.get("Content-Type", "")):
            raise MethodNotAllowed(
                f"POST is only for macaroon requests (Content-Type: {MEDIA_TYPE})",
                headers={"Allow": "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, MOVE, COPY, PROPFIND"},
            )
        principal = ctx.principal
        if principal.is_anonymous:
            raise Unauthenticated(
                "authentication required to request a macaroon", bearer_error=None
            )
        if principal.limited_proxy:
            raise Forbidden("a limited proxy may not request macaroons")
        await send_continue(request)  # only now, after authentication
        limit = min(MAX_BODY, self.settings.server.max_body_xml)
        req = parse_request(await read_limited(request, limit, invite=False))
        now = self.clock()
        b = bound(
            principal,
            req,
            ctx.path,
            policy=ctx.services.policy,
            now=now,
            max_validity=self.settings.macaroons.max_validity,
        )
        macaroon = mint(
            self.keyring,
            location=self.settings.macaroons.location,
            minted_for=MintedFor.of(principal),
            path=b.path,
            activities=b.activities,
            expires_at=b.expires_at,
            networks=req.networks,
        )
        ctx.reasons.append(
            f"macaroon minted for {b.path}: {','.join(sorted(b.activities))}"
            f" for {int(b.expires_at - now)} s"
        )
        base = self.base_url(request)
        collection = ctx.target.trailing_slash and b.path == ctx.path
        target = base + b.path.url_path(collection=collection)
        answer = {
            "macaroon": macaroon,
            "expires_in": int(b.expires_at - now),
            "uri": {
                "targetWithMacaroon": f"{target}?authz={macaroon}",
                "baseWithMacaroon": f"{base}/?authz={macaroon}",
                "target": target,
                "base": f"{base}/",
            },
        }
        return web.json_response(answer, headers={"Cache-Control": "no-store"})
